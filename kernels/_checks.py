"""Input checks shared by the ops: each failure names the argument and what was expected."""
from __future__ import annotations

import math
from typing import Sequence

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def check_tensor(name: str, value, dtypes: Sequence[torch.dtype] = FLOAT_DTYPES) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dtype not in dtypes:
        allowed = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name} must have a floating dtype ({allowed}), got {value.dtype}")
    return value


def check_same(names: Sequence[str], tensors: Sequence[torch.Tensor]) -> None:
    first_name, first = names[0], tensors[0]
    for name, t in zip(names[1:], tensors[1:]):
        if t.dtype != first.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but {first_name} has {first.dtype}; "
                            "pass tensors of one dtype")
        if t.device != first.device:
            raise ValueError(f"{name} is on {t.device} but {first_name} is on {first.device}; "
                             "pass tensors on one device")


def check_positive_float(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return float(value)


def check_grouped(name: str, t: torch.Tensor, batch: int, dim: int, tail: Sequence[int],
                  tail_names: str, dim_name: str = "dim") -> None:
    """``t`` is (batch, *tail), or (batch, G, *tail) with G groups dividing ``dim`` (Mamba's B, C;
    ``dim_name`` says what ``dim`` counts: channels, or heads in Mamba-2's layout)."""
    tail = tuple(tail)
    if t.dim() == 1 + len(tail):
        expected = (batch, *tail)
    elif t.dim() == 2 + len(tail):
        expected = (batch, t.shape[1], *tail)
        if t.shape[1] < 1 or dim % t.shape[1] != 0:
            raise ValueError(f"{name} has {t.shape[1]} groups, which do not divide {dim_name}={dim}")
    else:
        sizes = ", ".join(str(n) for n in tail)
        raise ValueError(f"{name} must be (batch, {tail_names}) or (batch, G, {tail_names}) = "
                         f"({batch}, [G,] {sizes}), got shape {tuple(t.shape)}")
    if tuple(t.shape) != expected:
        raise ValueError(f"{name} must have shape {expected} (batch, [G,] {tail_names}), "
                         f"got {tuple(t.shape)}")
