"""bfloat16 on the GPU: bf16 inputs through each fused op's compiled Triton kernels against the
reference in float64 on the same (bf16-rounded) values, at the suite's bf16 tolerances
(forward <= 1e-2, gradients <= 2e-2, relative error of norms; kernels.testing); and the stage-1
renderer's forward under bf16 autocast, as stage-1 training runs it on CUDA (``train.amp``),
finite and close to its float32 forward."""
import pytest
import torch

from kernels.testing import FORWARD_TOLERANCE, GRADIENT_TOLERANCE, assert_close
from mim.config import get_config
from mim.models.renderer import Renderer

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("name", ["grid_sample_3d", "region_softmax_warp", "deviation_adanorm",
                                  "selective_scan"])
def test_bf16_triton_matches_the_float64_reference(name, op_case):
    # the scan's float64 reference is an L-step loop, forward and backward: a shorter sequence
    case = op_case(name, dtype=torch.bfloat16, requires_grad=True, scan_length=512)
    out = case.run("triton")
    assert out.dtype == torch.bfloat16
    exact = tuple(t.detach().double().requires_grad_() for t in case.inputs)
    ref = case.run("reference", exact)
    assert_close(f"{name} out", out, ref, FORWARD_TOLERANCE[torch.bfloat16])
    grad_out = torch.randn_like(out)
    out.backward(grad_out)
    ref.backward(grad_out.double())
    for index, (low, high) in enumerate(zip(case.inputs, exact)):
        assert low.grad is not None, f"{name}: input {index} got no gradient"
        assert_close(f"{name} grad of input {index}", low.grad, high.grad,
                     GRADIENT_TOLERANCE[torch.bfloat16])


# Relative error of norms between the autocast and the float32 forward. On the CPU (bf16 autocast,
# the fast path, tiny config) they measure 0.4% (frames) and 1.2% (warped volume): the bounds
# leave 4-5x for the base config's deeper stacks. A bf16 path that garbles a tensor errs by O(1).
FRAMES_TOLERANCE = 2e-2
WARPED_TOLERANCE = 5e-2


@pytest.mark.parametrize("config_name", ["tiny", "base"])
def test_bf16_autocast_renderer_forward_is_finite_and_close_to_float32(config_name):
    config = get_config(config_name)
    renderer = Renderer.from_config(config).to("cuda").eval()   # backend auto: triton on CUDA
    size = config.renderer.image_size
    generator = torch.Generator().manual_seed(0)
    source = torch.rand(1, 3, size, size, generator=generator).cuda()
    driving = torch.rand(1, 2, 3, size, size, generator=generator).cuda()
    with torch.no_grad():
        full = renderer(source, driving)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            low = renderer(source, driving)
    for key, value in low.items():
        assert torch.isfinite(value).all(), f"{config_name}: autocast {key} is not finite"
    # autocast reached the Triton warp: it ran in bf16, not silently in float32
    assert low["warped"].dtype == torch.bfloat16
    assert_close(f"{config_name} frames", low["frames"], full["frames"], FRAMES_TOLERANCE)
    assert_close(f"{config_name} warped", low["warped"], full["warped"], WARPED_TOLERANCE)
