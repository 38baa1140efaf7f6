"""``selective_state_update``: input checks, the custom op and backend dispatch."""
from __future__ import annotations

from typing import Optional

import torch

from .._custom_op import custom_op
from .._checks import KERNEL_DTYPES, check_grouped, check_tensor
from .._dispatch import resolve_backend
from .reference import selective_state_update_reference
from .fast_path import selective_state_update_fast

INDEX_DTYPES = (torch.int32, torch.int64)


def _triton_module():
    from . import triton_kernels  # imported lazily: triton is only needed when it is used
    return triton_kernels


@custom_op("mim::selective_state_update", mutates_args=("state",))
def _state_update_op(state: torch.Tensor, x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor,
                     B: torch.Tensor, C: torch.Tensor, D: Optional[torch.Tensor],
                     z: Optional[torch.Tensor], dt_bias: Optional[torch.Tensor], dt_softplus: bool,
                     state_batch_indices: Optional[torch.Tensor], backend: str) -> torch.Tensor:
    """out (batch, dim) on the fast or triton path (Mamba-1 layout); ``state`` is advanced in
    place."""
    if backend == "triton":
        return _triton_module().selective_state_update_triton(
            state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, state_batch_indices)
    return selective_state_update_fast(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus,
                                        state_batch_indices)


@_state_update_op.register_fake
def _(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, state_batch_indices, backend):
    return x.new_empty(x.shape)


def _shape(t: torch.Tensor) -> tuple:
    return tuple(t.shape)


def _check_indices(state_batch_indices, batch: int, cache_batch: int, device) -> None:
    if not isinstance(state_batch_indices, torch.Tensor):
        raise TypeError(f"state_batch_indices must be a torch.Tensor, got "
                        f"{type(state_batch_indices).__name__}")
    if state_batch_indices.dtype not in INDEX_DTYPES:
        raise TypeError(f"state_batch_indices must be int32 or int64, got {state_batch_indices.dtype}")
    if _shape(state_batch_indices) != (batch,):
        raise ValueError(f"state_batch_indices must have shape (batch,) = ({batch},), got "
                         f"{_shape(state_batch_indices)}")
    if state_batch_indices.device != device:
        raise ValueError(f"state_batch_indices is on {state_batch_indices.device} but x is on "
                         f"{device}; pass tensors on one device")
    if batch == 0:
        return
    # One host sync: an index out of range would write outside the state, a repeated one would
    # make the result depend on the order of the writes.
    low, high = int(state_batch_indices.min()), int(state_batch_indices.max())
    if low < 0 or high >= cache_batch:
        raise ValueError(f"state_batch_indices must lie in [0, {cache_batch}) (the state's first "
                         f"dimension), got values from {low} to {high}")
    if state_batch_indices.unique().numel() != batch:
        raise ValueError("state_batch_indices must not repeat an index: each batch element "
                         "updates its own row of the state")


def _check_inputs(state, x, dt, A, B, C, D, z, dt_bias, state_batch_indices) -> None:
    for name, t in (("state", state), ("x", x), ("dt", dt), ("A", A), ("B", B), ("C", C)):
        check_tensor(name, t)
    optional = [(n, t) for n, t in (("D", D), ("z", z), ("dt_bias", dt_bias)) if t is not None]
    for name, t in optional:
        check_tensor(name, t)
    for name, t in [("state", state), ("dt", dt), ("A", A), ("B", B), ("C", C)] + optional:
        if t.device != x.device:
            raise ValueError(f"{name} is on {t.device} but x is on {x.device}; pass tensors on one device")
    if x.dim() == 2:
        batch, dim = x.shape
        lead, lead_names = (dim,), "dim"
    elif x.dim() == 3:
        batch, heads, headdim = x.shape
        lead, lead_names = (heads, headdim), "nheads, headdim"
    else:
        raise ValueError(f"x must be 2-D (batch, dim) or 3-D (batch, nheads, headdim), got shape "
                         f"{_shape(x)}")
    for name, t in (("dt", dt), ("z", z)):
        if t is not None and t.shape != x.shape:
            raise ValueError(f"{name} must have the shape of x (batch, {lead_names}) = "
                             f"{_shape(x)}, got {_shape(t)}")
    if A.dim() != len(lead) + 1 or _shape(A)[:-1] != lead:
        raise ValueError(f"A must be ({lead_names}, N) = ({', '.join(map(str, lead))}, N), got "
                         f"shape {_shape(A)}")
    N = A.shape[-1]
    if state.dim() != len(lead) + 2 or _shape(state)[1:] != (*lead, N):
        raise ValueError(f"state must have shape (batch, {lead_names}, N) = "
                         f"({batch}, {', '.join(map(str, lead))}, {N}), got {_shape(state)}")
    if state_batch_indices is None:
        if state.shape[0] != batch:
            raise ValueError(f"state must have shape (batch, {lead_names}, N) = "
                             f"({batch}, {', '.join(map(str, lead))}, {N}), got {_shape(state)} "
                             "(a larger state cache takes state_batch_indices)")
    else:
        _check_indices(state_batch_indices, batch, state.shape[0], x.device)
    for name, t in (("B", B), ("C", C)):
        # Groups divide the channels (Mamba-1) or the heads (heads layout).
        check_grouped(name, t, batch, lead[0], (N,), "N", "dim" if x.dim() == 2 else "nheads")
    if B.shape != C.shape:
        raise ValueError(f"B and C must have the same shape (and groups), got {_shape(B)} and "
                         f"{_shape(C)}")
    for name, t in (("D", D), ("dt_bias", dt_bias)):
        if t is not None and _shape(t) != lead:
            raise ValueError(f"{name} must have shape ({lead_names}) = {lead}, got {_shape(t)}")


def _flat_state(state: torch.Tensor):
    """(batch, nheads, headdim, N) as (batch, nheads·headdim, N), and whether that is a copy (to
    be written back) rather than a view, as when the strides do not allow one."""
    shape = (state.shape[0], state.shape[1] * state.shape[2], state.shape[3])
    try:
        return state.view(shape), False
    except RuntimeError:
        return state.reshape(shape), True


def selective_state_update(state: torch.Tensor, x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor,
                           B: torch.Tensor, C: torch.Tensor, D: Optional[torch.Tensor] = None,
                           z: Optional[torch.Tensor] = None, dt_bias: Optional[torch.Tensor] = None,
                           dt_softplus: bool = False,
                           state_batch_indices: Optional[torch.Tensor] = None,
                           backend: Optional[str] = None) -> torch.Tensor:
    """One step of the selective scan for streaming inference (``mamba_ssm``'s
    ``selective_state_update`` for real A, in both of its layouts), advancing ``state`` in place.

    Mamba-1 layout:
        state (batch, dim, N); x, dt, z (batch, dim); A (dim, N); B, C (batch, N) or (batch, G, N)
        with G groups dividing dim; D, dt_bias (dim,).
    Heads layout (Mamba-2):
        state (batch, nheads, headdim, N); x, dt, z (batch, nheads, headdim); A (nheads, headdim,
        N); B, C (batch, N) or (batch, G, N) with G groups dividing nheads; D, dt_bias (nheads,
        headdim). Stride-0 expanded views (A, dt, D, dt_bias broadcast over headdim) are read as is.

    Args:
        state: the recurrent state h, in float32, float16 or bfloat16 (float64 also on the
            reference and fast paths); overwritten with h after this step, in its own dtype.
        x, dt: input and time step Δ of this step; z (optional) the same shape, the gate.
        A: real state matrix. B, C: input and output projections of this step.
        D, dt_bias: optional skip weight and Δ bias.
        dt_softplus: apply softplus to dt (+ dt_bias).
        state_batch_indices: optional int32/int64 (batch,): batch element b updates row
            state_batch_indices[b] of ``state``, a cache of any number of rows (distinct indices);
            the other rows are left untouched.
        backend: "auto", "reference", "fast" (alias "torch") or "triton" (see
            ``kernels._dispatch``).

    Every floating input may have its own dtype (e.g. fp32 B, C with bf16 x, as mamba_ssm allows):
    the step is computed in float32 (float64 when the state or x is float64) and out is returned
    in x's dtype and shape: (Σ_n C·h + D·x)·silu(z), with h = exp(dt·A)·h_prev + dt·B·x. Stepping
    it over a sequence reproduces ``selective_scan``.

    Gradients: with grad mode on and an input requiring grad, the reference and fast paths
    compute the step out of place and copy the new state into ``state`` with an in-place write
    that autograd records, so gradients flow to every input, to the state before the step and
    from the state after it (a state that is a leaf requiring grad cannot be written in place:
    step a clone). The triton path has no backward and refuses such a call.

    Example:
        >>> state = torch.zeros(2, 64, 16)
        >>> x, dt = torch.randn(2, 64), torch.rand(2, 64)
        >>> A, B, C = -torch.rand(64, 16), torch.randn(2, 16), torch.randn(2, 16)
        >>> selective_state_update(state, x, dt, A, B, C).shape
        torch.Size([2, 64])
    """
    _check_inputs(state, x, dt, A, B, C, D, z, dt_bias, state_batch_indices)
    chosen = resolve_backend(backend, x.device, "selective_state_update")
    tracked = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (state, x, dt, A, B, C, D, z, dt_bias))
    if tracked and state.is_leaf and state.requires_grad:
        raise RuntimeError("state is a leaf tensor that requires grad, which selective_state_update "
                           "cannot overwrite in place; pass a clone of it (state.clone())")
    if chosen == "reference":
        return selective_state_update_reference(state, x, dt, A, B, C, D, z, dt_bias,
                                                bool(dt_softplus), state_batch_indices)
    if chosen == "triton":
        wants_grad = [n for n, t in (("state", state), ("x", x), ("dt", dt), ("A", A), ("B", B),
                                     ("C", C), ("D", D), ("z", z), ("dt_bias", dt_bias))
                      if tracked and t is not None and t.requires_grad]
        if wants_grad:
            raise RuntimeError(
                f"selective_state_update has no backward on the triton path, but "
                f"{', '.join(wants_grad)} require grad; use backend='fast' (differentiable) or "
                "call it under torch.no_grad() / torch.inference_mode()")
        for name, t in (("x", x), ("dt", dt), ("z", z), ("B", B), ("C", C), ("state", state)):
            if t is not None and t.dtype not in KERNEL_DTYPES:
                raise TypeError(f"{name} must be float16, bfloat16 or float32 on the triton path, "
                                f"got {t.dtype}; use backend='fast' for {t.dtype}")
        if A.shape[-1] > _triton_module().MAX_STATE:
            raise ValueError(f"A has N={A.shape[-1]} states; the triton kernel holds a channel's "
                             f"state in registers and takes N <= {_triton_module().MAX_STATE}; "
                             "use backend='fast'")
    if state_batch_indices is not None:
        state_batch_indices = state_batch_indices.to(torch.int64)
    heads = x.dim() == 3
    work, copied = _flat_state(state) if heads else (state, False)
    if heads:  # channels c = head·headdim + j; groups of heads are groups of channels
        x, dt, A = x.flatten(1), dt.flatten(1), A.flatten(0, 1)
        z = None if z is None else z.flatten(1)
        D = None if D is None else D.flatten()
        dt_bias = None if dt_bias is None else dt_bias.flatten()
    args = (work, x, dt, A, B, C, D, z, dt_bias, bool(dt_softplus), state_batch_indices)
    if tracked:  # autograd records the fast path itself (the custom op has no backward)
        out = selective_state_update_fast(*args)
    else:
        out = _state_update_op(*args, chosen)
    if copied:
        state.copy_(work.view_as(state))
    return out.unflatten(1, state.shape[1:3]) if heads else out
