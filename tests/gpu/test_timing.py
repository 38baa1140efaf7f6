"""Compiled-kernel timing sanity: at the base model's shape, each fused op's Triton path is not
slower than its reference path (the literal PyTorch composition), both timed on this GPU by
``triton.testing.do_bench`` (median; the L2 cache flushed before each call) in the same process.

The bound, triton time <= reference time, is lenient on purpose: bench/results/traffic.md models
the Triton kernels 4.7x (deviation_adanorm forward, the closest) to over 1000x (selective_scan)
faster than the reference, from counted bytes and launches. A compiled kernel that still loses to
the unfused composition is broken, not just untuned: it spills, serializes its grid, or runs in
Triton's interpreter. What the kernels achieve against the device's bandwidth is measured by
``python -m bench.ops`` (``make gpu-check``), not asserted here.
"""
import pytest
import torch
from triton.testing import do_bench

pytestmark = pytest.mark.gpu

CASES = [(op, "fwd") for op in ("grid_sample_3d", "region_softmax_warp", "deviation_adanorm",
                                "selective_scan")]
# forward + backward where the reference's backward takes milliseconds, not seconds: the
# selective_scan reference's backward is autograd through an L-step Python loop
CASES += [(op, "fwd+bwd") for op in ("grid_sample_3d", "region_softmax_warp", "deviation_adanorm")]


def _timed(case, backend: str, mode: str) -> float:
    """Median ms of one call of the op (fwd) or of the op and its backward (fwd+bwd)."""
    if mode == "fwd":
        def call():
            with torch.no_grad():
                case.run(backend)
        return do_bench(call, return_mode="median")
    leaves = [t for t in case.inputs if t.requires_grad]
    grad_out = torch.randn_like(case.run(backend))

    def step():
        case.run(backend).backward(grad_out)
    return do_bench(step, grad_to_none=leaves, return_mode="median")


@pytest.mark.parametrize("name,mode", CASES)
def test_triton_path_is_not_slower_than_the_reference(name, mode, op_case):
    case = op_case(name, requires_grad=(mode == "fwd+bwd"))
    triton_ms = _timed(case, "triton", mode)
    reference_ms = _timed(case, "reference", mode)
    assert triton_ms > 0 and reference_ms > 0
    assert triton_ms <= reference_ms, (
        f"{name} {mode} at {case.shape}: triton {triton_ms:.4f} ms is slower than the reference "
        f"{reference_ms:.4f} ms on {torch.cuda.get_device_name()}")
