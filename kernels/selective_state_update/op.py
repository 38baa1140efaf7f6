"""``selective_state_update``: input checks, the custom op and backend dispatch."""
from __future__ import annotations

from typing import Optional

import torch

from .._custom_op import custom_op
from .._checks import KERNEL_DTYPES, check_grouped, check_same, check_tensor
from .._dispatch import resolve_backend
from .reference import selective_state_update_reference
from .torch_path import selective_state_update_torch

STATE_DTYPES = (torch.float32, torch.float64)


def _triton_module():
    from . import triton_kernels  # imported lazily: triton is only needed when it is used
    return triton_kernels


@custom_op("mim::selective_state_update", mutates_args=("state",))
def _state_update_op(state: torch.Tensor, x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor,
                     B: torch.Tensor, C: torch.Tensor, D: Optional[torch.Tensor],
                     z: Optional[torch.Tensor], dt_bias: Optional[torch.Tensor], dt_softplus: bool,
                     backend: str) -> torch.Tensor:
    """out (batch, dim) on the torch or triton path; ``state`` is advanced in place."""
    if backend == "triton":
        return _triton_module().selective_state_update_triton(state, x, dt, A, B, C, D, z, dt_bias,
                                                              dt_softplus)
    return selective_state_update_torch(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)


@_state_update_op.register_fake
def _(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, backend):
    return x.new_empty(x.shape)


def _check_inputs(state, x, dt, A, B, C, D, z, dt_bias) -> None:
    for name, t in (("state", state), ("x", x), ("dt", dt), ("A", A), ("B", B), ("C", C)):
        check_tensor(name, t)
    optional = [(n, t) for n, t in (("D", D), ("z", z), ("dt_bias", dt_bias)) if t is not None]
    for name, t in optional:
        check_tensor(name, t)
    same = [("x", x), ("dt", dt), ("B", B), ("C", C)] + ([("z", z)] if z is not None else [])
    check_same([n for n, _ in same], [t for _, t in same])
    for name, t in [("state", state), ("A", A)] + [(n, t) for n, t in optional if n != "z"]:
        if t.device != x.device:
            raise ValueError(f"{name} is on {t.device} but x is on {x.device}; pass tensors on one device")
    if state.dtype not in STATE_DTYPES:
        raise TypeError(f"state must be float32 (float64 on the reference and torch paths): the "
                        f"recurrent state is kept in full precision, got {state.dtype}; allocate it "
                        "with kernels.Mamba.allocate_inference_cache or as float32")
    if x.dim() != 2:
        raise ValueError(f"x must be 2-D (batch, dim), got shape {tuple(x.shape)}")
    batch, dim = x.shape
    if dt.shape != x.shape:
        raise ValueError(f"dt must have the shape of x (batch, dim) = {tuple(x.shape)}, got {tuple(dt.shape)}")
    if z is not None and z.shape != x.shape:
        raise ValueError(f"z must have the shape of x (batch, dim) = {tuple(x.shape)}, got {tuple(z.shape)}")
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"A must be 2-D (dim, N) = ({dim}, N), got shape {tuple(A.shape)}")
    N = A.shape[1]
    if tuple(state.shape) != (batch, dim, N):
        raise ValueError(f"state must have shape (batch, dim, N) = ({batch}, {dim}, {N}), "
                         f"got {tuple(state.shape)}")
    for name, t in (("B", B), ("C", C)):
        check_grouped(name, t, batch, dim, (N,), "N")
    if B.shape != C.shape:
        raise ValueError(f"B and C must have the same shape (and groups), got {tuple(B.shape)} and "
                         f"{tuple(C.shape)}")
    for name, t in (("D", D), ("dt_bias", dt_bias)):
        if t is not None and tuple(t.shape) != (dim,):
            raise ValueError(f"{name} must have shape (dim,) = ({dim},), got {tuple(t.shape)}")
    if torch.is_grad_enabled():
        wants_grad = [n for n, t in [("state", state), ("x", x), ("dt", dt), ("A", A), ("B", B),
                                     ("C", C)] + optional if t.requires_grad]
        if wants_grad:
            raise RuntimeError(
                f"selective_state_update is inference-only (it advances state in place and has no "
                f"backward), but {', '.join(wants_grad)} require grad; call it under torch.no_grad() "
                "or torch.inference_mode(), or train with selective_scan")


def selective_state_update(state: torch.Tensor, x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor,
                           B: torch.Tensor, C: torch.Tensor, D: Optional[torch.Tensor] = None,
                           z: Optional[torch.Tensor] = None, dt_bias: Optional[torch.Tensor] = None,
                           dt_softplus: bool = False, backend: Optional[str] = None) -> torch.Tensor:
    """One step of the Mamba-1 selective scan for streaming inference (``mamba_ssm``'s
    ``selective_state_update`` for real A), advancing ``state`` in place.

    Args:
        state: (batch, dim, N) the recurrent state h, float32 (float64 also on the reference and
            torch paths); overwritten with h after this step.
        x, dt: (batch, dim) input and time step Δ of this step; z (optional) the same shape, the gate.
        A: (dim, N) real state matrix.
        B, C: (batch, N), or (batch, G, N) with G groups dividing dim.
        D, dt_bias: (dim,) optional skip weight and Δ bias (any floating dtype).
        dt_softplus: apply softplus to dt (+ dt_bias).
        backend: "auto", "reference", "torch" or "triton" (see ``kernels._dispatch``).

    Returns:
        out (batch, dim) in x's dtype: (Σ_n C·h + D·x)·silu(z), with
        h = exp(dt·A)·h_prev + dt·B·x. Stepping it over a sequence reproduces ``selective_scan``.

    Inference only: no gradient flows through it. When grad mode is on and an input requires grad
    it raises ``RuntimeError`` rather than return a result cut off from autograd.

    Example:
        >>> state = torch.zeros(2, 64, 16)
        >>> x, dt = torch.randn(2, 64), torch.rand(2, 64)
        >>> A, B, C = -torch.rand(64, 16), torch.randn(2, 16), torch.randn(2, 16)
        >>> selective_state_update(state, x, dt, A, B, C).shape
        torch.Size([2, 64])
    """
    _check_inputs(state, x, dt, A, B, C, D, z, dt_bias)
    chosen = resolve_backend(backend, x.device, "selective_state_update")
    if chosen == "reference":
        return selective_state_update_reference(state, x, dt, A, B, C, D, z, dt_bias, bool(dt_softplus))
    if chosen == "triton":
        check_tensor("x", x, KERNEL_DTYPES)
        if state.dtype != torch.float32:
            raise TypeError(f"state must be float32 on the triton path, got {state.dtype}")
        if A.shape[1] > _triton_module().MAX_STATE:
            raise ValueError(f"A has N={A.shape[1]} states; the triton kernel holds a channel's state "
                             f"in registers and takes N <= {_triton_module().MAX_STATE}; use backend='torch'")
    return _state_update_op(state, x, dt, A, B, C, D, z, dt_bias, bool(dt_softplus), chosen)
