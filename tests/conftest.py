"""Suite-wide set-up: Triton's interpreter on (before anything imports triton), seeded generators,
and NaN-poisoned allocation so an element a kernel forgets to write fails the comparison."""
import os

os.environ["TRITON_INTERPRET"] = "1"
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
os.environ.pop("MIM_KERNEL_BACKEND", None)

import random  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402


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
