"""The thin nn.Module wrappers call their ops with their settings."""
import torch

from kernels import GridSample3d, RegionSoftmaxWarp, grid_sample_3d, region_softmax_warp
from kernels.testing import assert_close


def test_grid_sample_module_matches_function():
    module = GridSample3d(padding_mode="border", align_corners=True, backend="triton")
    volume, grid = torch.randn(1, 3, 4, 5, 6), torch.rand(1, 2, 3, 4, 3) * 2.4 - 1.2
    assert_close("module", module(volume, grid),
                 grid_sample_3d(volume, grid, "border", True, backend="reference"), 1e-5)
    assert "padding_mode='border'" in repr(module)


def test_region_softmax_warp_module_learns_beta():
    module = RegionSoftmaxWarp(beta=0.3, learn_beta=True, backend="torch")
    feature, logits = torch.randn(1, 3, 2, 5, 6), torch.randn(2, 4, 2, 5, 6)
    displacement, mask = torch.randn(2, 4, 3, 2, 5, 6) * 0.1, torch.rand(2, 1, 2, 5, 6)
    out = module(feature, logits, displacement, mask)
    ref = region_softmax_warp(feature, logits, displacement, mask, 0.3, backend="reference")
    assert_close("module", out, ref, 1e-5)
    (grad_beta,) = torch.autograd.grad(out.sum(), module.beta)
    assert torch.isfinite(grad_beta) and grad_beta != 0
    assert [name for name, _ in module.named_parameters()] == ["beta"]
