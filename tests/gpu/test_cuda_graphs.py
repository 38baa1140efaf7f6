"""CUDA-graph capture of the Triton forward of each fused op at the base model's shape: captured
after a warm-up on a side stream (the compilation happens there, never during capture), the graph
replayed with new inputs copied into its static buffers gives exactly what an eager call on those
inputs gives (the forward kernels use no atomics: same kernel, same data, same bits).

region_softmax_warp is captured through its public function with β a 0-dim CUDA tensor (its
finiteness check is skipped while a capture runs; a float β would be copied to the device on each
call, which a capture does not allow).
"""
import gc

import pytest
import torch

from kernels.region_softmax_warp import region_softmax_warp

pytestmark = pytest.mark.gpu


def _triton_forward(case):
    """(static inputs, forward(*inputs)) of ``case`` on the Triton path."""
    if case.name == "region_softmax_warp":
        beta = torch.tensor(0.2, device="cuda")

        def warp(feature, logits, displacement, mask):
            return region_softmax_warp(feature, logits, displacement, mask, beta,
                                       backend="triton")
        return case.inputs, warp
    return case.inputs, lambda *inputs: case.run("triton", inputs)


@pytest.mark.parametrize("name", ["grid_sample_3d", "region_softmax_warp", "deviation_adanorm",
                                  "selective_scan"])
def test_triton_forward_replays_in_a_cuda_graph(name, op_case):
    static, forward = _triton_forward(op_case(name, seed=0))
    fresh = op_case(name, seed=1).inputs
    with torch.no_grad():
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                forward(*static)
        torch.cuda.current_stream().wait_stream(side)

        graph = torch.cuda.CUDAGraph()
        # A Triton kernel object collected during capture unloads its module, which invalidates
        # the capture: keep the collector off for its length.
        collecting = gc.isenabled()
        gc.disable()
        try:
            with torch.cuda.graph(graph):
                static_out = forward(*static)
        finally:
            if collecting:
                gc.enable()

        graph.replay()
        torch.cuda.synchronize()
        first = static_out.clone()
        assert torch.isfinite(first).all()
        assert torch.equal(first, forward(*static)), f"{name}: replay differs from eager"

        for buffer, new in zip(static, fresh):
            buffer.copy_(new)
        graph.replay()
        torch.cuda.synchronize()
        assert not torch.equal(static_out, first), f"{name}: the replay did not read the new inputs"
        assert torch.equal(static_out, forward(*fresh)), \
            f"{name}: replay with new inputs differs from eager"
