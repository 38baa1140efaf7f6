"""One step of the Mamba-1 recurrence for streaming inference: reference, fast path (torch),
Triton kernel."""
from .module import SelectiveStateUpdate
from .op import selective_state_update
from .reference import selective_state_update_reference

__all__ = ["SelectiveStateUpdate", "selective_state_update", "selective_state_update_reference"]
