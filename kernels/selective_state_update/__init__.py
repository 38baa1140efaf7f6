"""One step of the Mamba-1 recurrence for streaming inference: reference, torch path, Triton kernel."""
from .op import selective_state_update
from .reference import selective_state_update_reference

__all__ = ["selective_state_update", "selective_state_update_reference"]
