"""The kernel tests build their tensors on the device under test: on CUDA, torch's default device
is CUDA for the length of each test, so the same tests run the compiled kernels on CUDA tensors
(inputs drawn from seeded CPU generators are drawn on the CPU, then moved, so such a case sees
the same numbers on either device). Without CUDA nothing changes: CPU tensors, Triton's
interpreter. A test module about the CPU itself (its numba path, its aten traffic counts) sets
``TENSORS_ON_CPU = True`` and keeps the CPU as the default device."""
import pytest
import torch


@pytest.fixture(autouse=True)
def _tensors_on_the_device_under_test(request):
    if getattr(request.module, "TENSORS_ON_CPU", False):
        yield
        return
    device = request.getfixturevalue("device_under_test")
    if device.type == "cpu":
        yield
        return
    previous = torch.get_default_device()
    torch.set_default_device(device)
    try:
        yield
    finally:
        torch.set_default_device(previous)
