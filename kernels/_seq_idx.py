"""``seq_idx``: several sequences packed into one row, for ``selective_scan`` and ``causal_conv1d``.

``seq_idx`` is an int32 (batch, L) tensor, non-decreasing along each row: position t of row b
belongs to sequence ``seq_idx[b, t]``. A sequence starts at t = 0 and wherever
``seq_idx[b, t] != seq_idx[b, t − 1]``; nothing crosses from one sequence into the next (the scan's
state and the convolution's window restart there), so a packed row computes what separate calls
on its sequences compute. The values only mark boundaries: 0, 0, 1, 1, 1 and 7, 7, 9, 9, 9 pack
the same two sequences.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch


def check_seq_idx(seq_idx: Optional[torch.Tensor], batch: int, length: int,
                  device: torch.device) -> None:
    """Raise a clear error unless ``seq_idx`` is None or an int32 (batch, L) tensor on ``device``.

    On CPU it is also checked to be non-decreasing along each row, except while ``torch.compile``
    traces (a data-dependent branch would break the graph). On other devices that check would
    wait for the device, so it is the caller's responsibility there, as under torch.compile (a
    decreasing step is a boundary like any other change)."""
    if seq_idx is None:
        return
    if not isinstance(seq_idx, torch.Tensor):
        raise TypeError(f"seq_idx must be a torch.Tensor, got {type(seq_idx).__name__}")
    if seq_idx.dtype != torch.int32:
        raise TypeError(f"seq_idx must have dtype int32, got {seq_idx.dtype}")
    if tuple(seq_idx.shape) != (batch, length):
        raise ValueError(f"seq_idx must have shape (batch, L) = ({batch}, {length}), "
                         f"got {tuple(seq_idx.shape)}")
    if seq_idx.device != device:
        raise ValueError(f"seq_idx is on {seq_idx.device} but the input is on {device}; "
                         "pass tensors on one device")
    if seq_idx.device.type == "cpu" and length > 1 and not torch.compiler.is_compiling():
        falls = seq_idx[:, 1:] < seq_idx[:, :-1]
        if bool(falls.any()):
            b, t = (int(i) for i in falls.nonzero()[0])
            raise ValueError(f"seq_idx must be non-decreasing along each row; row {b} falls from "
                             f"{int(seq_idx[b, t])} to {int(seq_idx[b, t + 1])} at t={t + 1}")


def sequence_starts(seq_idx: torch.Tensor) -> torch.Tensor:
    """Bool (batch, L): True where a sequence starts after another one (never at t = 0)."""
    starts = torch.zeros(seq_idx.shape, dtype=torch.bool, device=seq_idx.device)
    starts[:, 1:] = seq_idx[:, 1:] != seq_idx[:, :-1]
    return starts


def sequence_ordinals(seq_idx: torch.Tensor) -> Tuple[torch.Tensor, int]:
    """(int32 (batch, L) ordinal of the sequence each position belongs to, number of sequences).

    Sequences are numbered in order of appearance, row by row: row 0's in position order, then
    row 1's, ... (the count of sequence starts, t = 0 of every row included, up to and including
    the position, minus one). Cheap torch ops on seq_idx's device plus one host sync (``int``)
    for the count, which sizes the per-sequence outputs."""
    firsts = sequence_starts(seq_idx)
    firsts[:, :1] = True
    ordinals = firsts.flatten().cumsum(0, dtype=torch.int64).sub_(1)
    count = int(ordinals[-1]) + 1 if ordinals.numel() else 0
    return ordinals.to(torch.int32).view(seq_idx.shape), count
