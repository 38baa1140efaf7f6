"""Suite-wide set-up: the device the kernels run on (decided before anything imports triton),
seeded generators, NaN-poisoned allocation so an element a kernel forgets to write fails the
comparison, and the ``gpu`` marker's skip where there is no CUDA device.

Without a CUDA device (or with ``MIM_TEST_INTERPRET=1``) Triton's interpreter runs the kernels on
CPU tensors (``TRITON_INTERPRET=1``); on CUDA the same tests run the compiled kernels on CUDA
tensors (tests/kernels/conftest.py makes CUDA torch's default device there)."""
import importlib.util
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch  # imports no triton: the decision below still comes first


def _device_policy():
    """kernels/testing.py read by its path: importing ``kernels.testing`` would import the
    package, whose import defines the Triton kernels (interpreted or compiled, fixed then)."""
    path = Path(__file__).resolve().parents[1] / "kernels" / "testing.py"
    spec = importlib.util.spec_from_file_location("_mim_test_device_policy", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_POLICY = _device_policy()
INTERPRETER = _POLICY.use_interpreter(os.environ, torch.cuda.is_available())
"""True: Triton's interpreter on CPU tensors; False: compiled kernels on CUDA tensors."""
DEVICE = _POLICY.device_under_test(os.environ, torch.cuda.is_available())

if INTERPRETER:
    os.environ["TRITON_INTERPRET"] = "1"
else:
    os.environ.pop("TRITON_INTERPRET", None)
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
os.environ.pop("MIM_KERNEL_BACKEND", None)

NO_CUDA_REASON = ("no CUDA device (MIM_TEST_INTERPRET=1 runs the suite in Triton's interpreter)"
                  if torch.cuda.is_available() else "no CUDA device")


def pytest_collection_modifyitems(config, items):
    """Without a CUDA device (or with the interpreter forced) every ``gpu`` test is skipped with
    the reason "no CUDA device": asked for with ``-m gpu``, it is reported, never passed."""
    if not INTERPRETER:
        return
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(pytest.mark.skip(reason=NO_CUDA_REASON))


@pytest.fixture
def device_under_test():
    """The torch.device for tests that run Triton kernels: CUDA where the suite runs the compiled
    kernels (with TF32 off while the test runs: float32 references stay float32, as TF32
    convolutions, cuDNN's default, would miss the 1e-5 tolerance), else the CPU (interpreter)."""
    if DEVICE == "cpu":
        yield torch.device("cpu")
        return
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield torch.device(DEVICE)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.fixture(autouse=True)
def _seed_everything():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


def _nan_filled(allocate):
    def wrapped(*args, **kwargs):
        t = allocate(*args, **kwargs)
        if t.is_floating_point():
            t.fill_(float("nan"))
        elif t.dtype in (torch.int32, torch.int64):
            t.fill_(-(2 ** 30))
        return t
    return wrapped


@pytest.fixture
def poisoned_empty(monkeypatch):
    """torch.empty / torch.empty_like return NaN-filled (integers: -2^30) tensors while active."""
    monkeypatch.setattr(torch, "empty", _nan_filled(torch.empty))
    monkeypatch.setattr(torch, "empty_like", _nan_filled(torch.empty_like))
