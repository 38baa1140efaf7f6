"""Backend selection: per-call argument, environment override, auto, and clear errors."""
import importlib

import pytest
import torch

from kernels import BackendUnavailableError, deviation_adanorm, resolve_backend
from kernels import _dispatch

CPU = torch.device("cpu")
CUDA = torch.device("cuda")


def test_auto_picks_torch_on_cpu_and_triton_on_cuda():
    assert resolve_backend(None, CPU, "op") == "torch"
    assert resolve_backend("auto", CPU, "op") == "torch"
    assert resolve_backend("auto", CUDA, "op") == "triton"


def test_explicit_backend_is_kept():
    for name in ("reference", "torch", "triton"):
        assert resolve_backend(name, CPU, "op") == name
    assert resolve_backend(" Torch ", CPU, "op") == "torch"


def test_environment_overrides_auto_but_not_an_explicit_choice(monkeypatch):
    monkeypatch.setenv(_dispatch.ENV_VAR, "reference")
    assert resolve_backend(None, CPU, "op") == "reference"
    assert resolve_backend("auto", CUDA, "op") == "reference"
    assert resolve_backend("torch", CPU, "op") == "torch"


def test_unknown_names_are_rejected(monkeypatch):
    with pytest.raises(ValueError, match="backend must be one of"):
        resolve_backend("cuda", CPU, "op")
    monkeypatch.setenv(_dispatch.ENV_VAR, "fast")
    with pytest.raises(ValueError, match="MIM_KERNEL_BACKEND"):
        resolve_backend(None, CPU, "op")


def test_triton_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(BackendUnavailableError, match="TRITON_INTERPRET=1"):
        resolve_backend("triton", CPU, "deviation_adanorm")
    monkeypatch.setenv(_dispatch.ENV_VAR, "triton")
    v, s = torch.randn(1, 2, 8), torch.randn(1, 1, 1, 8)
    with pytest.raises(BackendUnavailableError, match="deviation_adanorm"):
        deviation_adanorm(v, s, s)


def test_triton_missing_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(_dispatch, "triton_available", lambda: False)
    with pytest.raises(BackendUnavailableError, match="not installed"):
        resolve_backend("triton", CUDA, "op")
    assert resolve_backend("auto", CUDA, "op") == "torch"


def test_environment_backend_reaches_the_op(monkeypatch):
    calls = []
    op = importlib.import_module("kernels.deviation_adanorm.op")  # the package name is shadowed by the function
    monkeypatch.setattr(op, "deviation_adanorm_reference",
                        lambda *a: calls.append("reference") or torch.zeros(1))
    monkeypatch.setenv(_dispatch.ENV_VAR, "reference")
    deviation_adanorm(torch.randn(1, 2, 8), torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8))
    assert calls == ["reference"]
