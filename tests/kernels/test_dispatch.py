"""Backend selection: per-call argument, environment override, auto, and clear errors."""
import importlib

import pytest
import torch

from kernels import BACKENDS, BackendUnavailableError, deviation_adanorm, resolve_backend
from kernels import _dispatch

CPU = torch.device("cpu")
CUDA = torch.device("cuda")


def test_auto_picks_fast_on_cpu_and_triton_on_cuda():
    assert resolve_backend(None, CPU, "op") == "fast"
    assert resolve_backend("auto", CPU, "op") == "fast"
    assert resolve_backend("auto", CUDA, "op") == "triton"


def test_explicit_backend_is_kept():
    assert BACKENDS == ("auto", "reference", "fast", "triton")
    for name in ("reference", "fast", "triton"):
        assert resolve_backend(name, CPU, "op") == name
    assert resolve_backend(" Fast ", CPU, "op") == "fast"


def test_torch_is_an_alias_of_fast(monkeypatch):
    assert resolve_backend("torch", CPU, "op") == "fast"
    assert resolve_backend(" Torch ", CPU, "op") == "fast"
    monkeypatch.setenv(_dispatch.ENV_VAR, "torch")
    assert resolve_backend(None, CPU, "op") == "fast"
    v, scale, shift = torch.randn(1, 3, 8), torch.randn(1, 2, 1, 8), torch.randn(1, 2, 1, 8)
    torch.testing.assert_close(deviation_adanorm(v, scale, shift, backend="torch"),
                               deviation_adanorm(v, scale, shift, backend="fast"), rtol=0, atol=0)


def test_environment_overrides_auto_but_not_an_explicit_choice(monkeypatch):
    monkeypatch.setenv(_dispatch.ENV_VAR, "reference")
    assert resolve_backend(None, CPU, "op") == "reference"
    assert resolve_backend("auto", CUDA, "op") == "reference"
    assert resolve_backend("fast", CPU, "op") == "fast"


def test_unknown_names_are_rejected(monkeypatch):
    with pytest.raises(ValueError, match="backend must be one of"):
        resolve_backend("cuda", CPU, "op")
    monkeypatch.setenv(_dispatch.ENV_VAR, "numba")
    with pytest.raises(ValueError, match="MIM_KERNEL_BACKEND"):
        resolve_backend(None, CPU, "op")


def test_triton_on_cpu_needs_the_interpreter(monkeypatch):
    """CPU tensors on every device (on CUDA the suite runs without the interpreter anyway)."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(BackendUnavailableError, match="TRITON_INTERPRET=1"):
        resolve_backend("triton", CPU, "deviation_adanorm")
    monkeypatch.setenv(_dispatch.ENV_VAR, "triton")
    v, s = torch.randn(1, 2, 8, device=CPU), torch.randn(1, 1, 1, 8, device=CPU)
    with pytest.raises(BackendUnavailableError, match="deviation_adanorm"):
        deviation_adanorm(v, s, s)


def test_triton_missing_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(_dispatch, "triton_available", lambda: False)
    with pytest.raises(BackendUnavailableError, match="not installed"):
        resolve_backend("triton", CUDA, "op")
    assert resolve_backend("auto", CUDA, "op") == "fast"


def test_environment_backend_reaches_the_op(monkeypatch):
    calls = []
    op = importlib.import_module("kernels.deviation_adanorm.op")  # the package name is shadowed by the function
    monkeypatch.setattr(op, "deviation_adanorm_reference",
                        lambda *a: calls.append("reference") or torch.zeros(1))
    monkeypatch.setenv(_dispatch.ENV_VAR, "reference")
    deviation_adanorm(torch.randn(1, 2, 8), torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8))
    assert calls == ["reference"]
