"""What autograd keeps for backward, counted with ``torch.autograd.graph.saved_tensors_hooks``."""
from __future__ import annotations

from typing import Callable, Sequence, Tuple

import torch


def saved_bytes(fn: Callable, inputs: Sequence[torch.Tensor]) -> Tuple[int, int]:
    """Runs ``fn(*inputs)`` and returns (bytes of the inputs among what autograd saves, bytes of
    everything else it saves), each storage counted once."""
    saved = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(*inputs)
    own = {t.untyped_storage().data_ptr() for t in inputs if isinstance(t, torch.Tensor)}
    in_inputs = sum(n for ptr, n in saved.items() if ptr in own)
    return in_inputs, sum(saved.values()) - in_inputs
