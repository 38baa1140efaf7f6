"""``Mamba``: a drop-in for ``mamba_ssm.Mamba`` (the Mamba-1 block) built on the engine's ops.

Same constructor, parameter names, shapes, initialisation and weight-decay flags as
``mamba_ssm/modules/mamba_simple.py``, so a ``mamba_ssm.Mamba`` state_dict loads with strict=True.
The block, for hidden states (batch, L, d_model), d_inner = expand·d_model and N = d_state:

    x, z  = split(in_proj(hidden_states))                    each (batch, d_inner, L)
    x     = silu(causal_conv1d(x, conv1d.weight, conv1d.bias))
    Δ, B, C = split(x_proj(x))                               (dt_rank, N, N) per token
    y     = selective_scan(x, dt_proj.weight·Δ, A = −exp(A_log), B, C, D, z,
                           delta_bias = dt_proj.bias, delta_softplus = True)
    out   = out_proj(y)                                      (batch, L, d_model)

``step`` runs the same block on one token with ``causal_conv1d_update`` and
``selective_state_update`` (streaming inference).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .causal_conv1d import causal_conv1d, causal_conv1d_update
from .selective_scan import selective_scan
from .selective_state_update import selective_state_update


def _at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    """t in float32, or as is when it is float64 (mamba_ssm's ``.float()``, keeping float64)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


class Mamba(nn.Module):
    """The Mamba-1 block, as ``mamba_ssm.Mamba``.

    Args (as mamba_ssm): d_model; d_state N = 16; d_conv W = 4 (causal conv width); expand = 2
    (d_inner = expand·d_model); dt_rank = "auto" (ceil(d_model / 16)); dt_min = 0.001,
    dt_max = 0.1, dt_init_floor = 1e-4 (the softplus of dt_proj.bias starts log-uniform in
    [dt_min, dt_max], floored); dt_init = "random" | "constant" and dt_scale = 1.0 (dt_proj.weight
    uniform in ±dt_scale/sqrt(dt_rank), or that constant); conv_bias = True; bias = False (in_proj,
    out_proj); use_fast_path = True (accepted for compatibility; there is one implementation, so it
    changes nothing); layer_idx (the key of this layer's states in ``inference_params``);
    device, dtype. A_log and D are kept in float32 whatever ``dtype`` is, as in mamba_ssm.

    backend: "auto", "reference", "fast" (alias "torch") or "triton", passed to every op (see
    ``kernels._dispatch``).
    """

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: float = 2,
                 dt_rank="auto", dt_min: float = 0.001, dt_max: float = 0.1, dt_init: str = "random",
                 dt_scale: float = 1.0, dt_init_floor: float = 1e-4, conv_bias: bool = True,
                 bias: bool = False, use_fast_path: bool = True, layer_idx: Optional[int] = None,
                 device=None, dtype=None, backend: Optional[str] = None):
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__()
        if dt_init not in ("random", "constant"):
            raise ValueError(f"dt_init must be 'random' or 'constant', got {dt_init!r}")
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.expand = expand
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else dt_rank
        self.use_fast_path = use_fast_path
        self.layer_idx = layer_idx
        self.backend = backend
        self.activation = "silu"
        self.act = nn.SiLU()  # as mamba_ssm.Mamba; no parameters, so the state_dict is unchanged

        self.in_proj = nn.Linear(d_model, self.d_inner * 2, bias=bias, **factory_kwargs)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, kernel_size=d_conv, groups=self.d_inner,
                                padding=d_conv - 1, bias=conv_bias, **factory_kwargs)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False, **factory_kwargs)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True, **factory_kwargs)

        # dt_proj keeps the variance of Δ at initialisation.
        dt_init_std = self.dt_rank ** -0.5 * dt_scale
        if dt_init == "constant":
            nn.init.constant_(self.dt_proj.weight, dt_init_std)
        else:
            nn.init.uniform_(self.dt_proj.weight, -dt_init_std, dt_init_std)
        # dt_proj.bias = softplus⁻¹(dt), dt log-uniform in [dt_min, dt_max], floored at dt_init_floor.
        dt = torch.exp(torch.rand(self.d_inner, **factory_kwargs) * (math.log(dt_max) - math.log(dt_min))
                       + math.log(dt_min)).clamp(min=dt_init_floor)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.dt_proj.bias._no_reinit = True  # a re-initialisation that zeroes biases must skip it

        # S4D-real initialisation: A[d, n] = −(n + 1), stored as log in float32.
        A = torch.arange(1, d_state + 1, dtype=torch.float32, device=device).repeat(self.d_inner, 1)
        self.A_log = nn.Parameter(torch.log(A))
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.ones(self.d_inner, device=device))  # skip weight, float32
        self.D._no_weight_decay = True

        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **factory_kwargs)

    def _A(self) -> torch.Tensor:
        return -torch.exp(_at_least_fp32(self.A_log))

    def forward(self, hidden_states: torch.Tensor, inference_params=None,
                seq_idx: Optional[torch.Tensor] = None) -> torch.Tensor:
        """hidden_states (batch, L, d_model) → (batch, L, d_model).

        With ``inference_params`` (mamba_ssm's ``InferenceParams``: ``key_value_memory_dict`` and
        ``seqlen_offset``), a prompt (offset 0) also fills this layer's conv and SSM states, and a
        later call (offset > 0, one token) is a ``step`` on them.

        ``seq_idx`` (int32 (batch, L), non-decreasing along each row) packs several sequences into
        one row: it goes to ``causal_conv1d`` and ``selective_scan``, so each sequence's output
        and gradients equal those of the block run on it alone. With a prompt, the states filled
        are those of each row's last sequence, which later steps continue.
        """
        batch, length, _ = hidden_states.shape
        conv_state = ssm_state = None
        if inference_params is not None:
            conv_state, ssm_state = self._get_states_from_cache(inference_params, batch)
            if inference_params.seqlen_offset > 0:
                out, _, _ = self.step(hidden_states, conv_state, ssm_state)
                return out
        # in_proj straight into (batch, 2·d_inner, L), the layout the conv and the scan read.
        xz = torch.matmul(self.in_proj.weight, hidden_states.transpose(1, 2))
        if self.in_proj.bias is not None:
            xz = xz + self.in_proj.bias.to(xz.dtype)[:, None]
        x, z = xz.chunk(2, dim=1)
        if conv_state is not None:  # the last d_conv inputs (of the row's last sequence)
            last_inputs = x if seq_idx is None else x * (seq_idx == seq_idx[:, -1:])[:, None, :]
            conv_state.copy_(F.pad(last_inputs, (self.d_conv - length, 0)))
        x = causal_conv1d(x, self.conv1d.weight.squeeze(1), self.conv1d.bias, self.activation,
                          backend=self.backend, seq_idx=seq_idx)
        x_dbl = self.x_proj(x.transpose(1, 2).reshape(batch * length, self.d_inner))
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = (self.dt_proj.weight @ dt.t()).unflatten(1, (batch, length)).transpose(0, 1)
        B = B.unflatten(0, (batch, length)).transpose(1, 2).contiguous()
        C = C.unflatten(0, (batch, length)).transpose(1, 2).contiguous()
        y = selective_scan(x, dt, self._A(), B, C, _at_least_fp32(self.D), z=z,
                           delta_bias=_at_least_fp32(self.dt_proj.bias), delta_softplus=True,
                           return_last_state=ssm_state is not None, backend=self.backend,
                           seq_idx=seq_idx)
        if ssm_state is not None:
            y, last_state = y
            ssm_state.copy_(last_state)
        return self.out_proj(y.transpose(1, 2))

    @torch.no_grad()
    def step(self, hidden_states: torch.Tensor, conv_state: torch.Tensor, ssm_state: torch.Tensor):
        """One token for streaming inference: hidden_states (batch, 1, d_model), conv_state
        (batch, d_inner, d_conv) and ssm_state (batch, d_inner, d_state) float32, both updated in
        place. Returns (out (batch, 1, d_model), conv_state, ssm_state). Inference only (runs
        under ``torch.no_grad``); token by token it reproduces ``forward``."""
        if hidden_states.dim() != 3 or hidden_states.shape[1] != 1:
            raise ValueError(f"step takes one token at a time: hidden_states must be (batch, 1, "
                             f"d_model), got shape {tuple(hidden_states.shape)}")
        xz = self.in_proj(hidden_states.squeeze(1))
        x, z = xz.chunk(2, dim=-1)
        x = causal_conv1d_update(x, conv_state, self.conv1d.weight.squeeze(1), self.conv1d.bias,
                                 self.activation, backend=self.backend)
        dt, B, C = torch.split(self.x_proj(x), [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.linear(dt, self.dt_proj.weight)  # dt_proj.bias is added inside, before the softplus
        y = selective_state_update(ssm_state, x, dt, self._A(), B, C, self.D, z=z,
                                   dt_bias=self.dt_proj.bias, dt_softplus=True, backend=self.backend)
        return self.out_proj(y).unsqueeze(1), conv_state, ssm_state

    def _state_dtypes(self, dtype=None):
        conv_dtype = self.conv1d.weight.dtype if dtype is None else dtype
        ssm_dtype = torch.float64 if self.dt_proj.weight.dtype == torch.float64 else torch.float32
        return conv_dtype, ssm_dtype

    def allocate_inference_cache(self, batch_size: int, max_seqlen: int, dtype=None, **kwargs):
        """Zero (conv_state (batch, d_inner, d_conv), ssm_state (batch, d_inner, d_state)).

        conv_state has ``dtype`` (default: conv1d's weight dtype), the dtype of the inputs ``step``
        will see. ssm_state is float32 whatever ``dtype`` is (float64 for a float64 module): the
        recurrent state is kept in full precision (mamba_ssm would use ``dtype`` for it too).
        ``max_seqlen`` is accepted for compatibility; the states do not grow with the sequence.
        """
        device = self.out_proj.weight.device
        conv_dtype, ssm_dtype = self._state_dtypes(dtype)
        conv_state = torch.zeros(batch_size, self.d_inner, self.d_conv, device=device, dtype=conv_dtype)
        ssm_state = torch.zeros(batch_size, self.d_inner, self.d_state, device=device, dtype=ssm_dtype)
        return conv_state, ssm_state

    def _get_states_from_cache(self, inference_params, batch_size: int, initialize_states: bool = False):
        if self.layer_idx is None:
            raise ValueError("Mamba needs a layer_idx to keep its states in inference_params")
        cache = inference_params.key_value_memory_dict
        if self.layer_idx not in cache:
            cache[self.layer_idx] = self.allocate_inference_cache(batch_size, 0)
        conv_state, ssm_state = cache[self.layer_idx]
        if initialize_states:
            conv_state.zero_()
            ssm_state.zero_()
        return conv_state, ssm_state

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, d_state={self.d_state}, d_conv={self.d_conv}, "
                f"expand={self.expand}, dt_rank={self.dt_rank}, backend={self.backend!r}")
