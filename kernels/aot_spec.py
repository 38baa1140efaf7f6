"""The shape of an op's AOT C spec (``kernels/<op>/aot.py`` defines ``AOT_OP``): what
``python -m tools.aot`` needs to put the op's forward kernel in the C library."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Tuple


@dataclass(frozen=True)
class AotOp:
    """One op's forward kernel in the library.

    ``params`` is the C parameter list of ``function``. In the launcher's body, C snippets
    (``string.Template``s over ``constants()``) and generated checks run in this order:
    ``validate`` (the op's input checks; returns MIM_SUCCESS early when the output is empty);
    the pointer arguments' checks (non-NULL, 16-byte aligned where the signature says ``:16``);
    ``plan``, which sets ``int64_t constexprs[]`` (indexed by ``CX_<NAME>``) and
    ``int64_t launch_grid[3]`` the way ``python_launcher`` does; the integer arguments' checks
    (int32 range, ``:16`` divisibility); the launch. ``args`` maps every runtime argument of the
    kernel to a C expression (pointer expressions may use the parameters only)."""

    op: str
    kernel: str
    module: str
    python_launcher: str
    params: Tuple[Tuple[str, str], ...]
    doc: str
    validate: str
    plan: str
    args: Mapping[str, str]
    constants: Callable[[], Mapping[str, Any]]

    @property
    def function(self) -> str:
        return f"mim_{self.op}_fwd"

    @property
    def source_name(self) -> str:
        return f"{self.function}.c"
