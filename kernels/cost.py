"""Cost accounting shared by every op's cost model: bytes moved, launches, FLOPs, modeled time.

- ``Traffic``: launches and bytes read/written through device memory; every op's ``cost.py``
  returns its fused kernels' and its minimum traffic as ``{"fwd": Traffic, "bwd": Traffic}``.
- ``TrafficCounter``: a ``TorchDispatchMode`` that counts the bytes and launches of the ATen ops
  run under it (eager PyTorch paths, forward and backward), as a GPU would move them.
- ``TrafficCase``: one op at one shape and dtype, for the traffic table (``python -m bench.traffic``).
- ``saved_bytes``: what autograd keeps for backward.
- The H100 roofline model: ``modeled_h100_s(flops, bytes, launches, dtype)`` =
  max(FLOPs / peak, bytes / 3.0 TB/s) + 4 µs per launch; ``modeled_h100_mixed_s`` the same
  with FLOPs at several precisions, each at its own peak. Round figures: a model, not a
  measurement.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence, Tuple

import torch
from torch._C import DispatchKey
from torch.utils._pytree import tree_leaves
from torch.utils._python_dispatch import TorchDispatchMode

H100_BANDWIDTH_BYTES_PER_S = 3.0e12
LAUNCH_OVERHEAD_S = 4e-6
H100_PEAK_FLOPS = {torch.float32: 60e12, torch.bfloat16: 800e12, torch.float16: 800e12}
DIRECTIONS = ("fwd", "bwd")
TRAFFIC_MODEL_NOTE = ("GPU times are modeled, not measured: bytes / 3.0 TB/s + 4 µs per launch "
                      "(H100). Eager bytes and launches are counted ATen ops; fused figures are "
                      "analytic.")
ROOFLINE_NOTE = ("modeled, not measured: max(FLOPs / peak, bytes / 3.0 TB/s) + 4 us x launches per "
                 "stage on an H100 (peak 60 TFLOP/s fp32, 800 TFLOP/s bf16/fp16)")


def modeled_h100_s(flops: float, bytes_moved: float, launches: int, dtype: torch.dtype) -> float:
    """Modeled H100 seconds: max(flops / peak(dtype), bytes / 3.0 TB/s) + 4 µs per launch."""
    if dtype not in H100_PEAK_FLOPS:
        raise ValueError(f"no H100 peak for dtype {dtype}; known: {sorted(map(str, H100_PEAK_FLOPS))}")
    return (max(flops / H100_PEAK_FLOPS[dtype], bytes_moved / H100_BANDWIDTH_BYTES_PER_S)
            + launches * LAUNCH_OVERHEAD_S)


def modeled_h100_mixed_s(flops_by_dtype: Mapping[torch.dtype, float], bytes_moved: float,
                         launches: int) -> float:
    """Modeled H100 seconds of work whose FLOPs run at several precisions: max(Σ_dtype
    flops / peak(dtype), bytes / 3.0 TB/s) + 4 µs per launch. Each dtype's FLOPs take their own
    peak (bf16/fp16 tensor cores, or the fp32 rate) one after the other; with one dtype this is
    ``modeled_h100_s``."""
    unknown = sorted(str(d) for d in flops_by_dtype if d not in H100_PEAK_FLOPS)
    if unknown:
        raise ValueError(f"no H100 peak for dtype {', '.join(unknown)}; "
                         f"known: {sorted(map(str, H100_PEAK_FLOPS))}")
    compute = sum(flops / H100_PEAK_FLOPS[dtype] for dtype, flops in flops_by_dtype.items())
    return max(compute, bytes_moved / H100_BANDWIDTH_BYTES_PER_S) + launches * LAUNCH_OVERHEAD_S


_aten = torch.ops.aten
# Ops that only allocate: they write nothing, so they are no launch.
_ALLOCATIONS = frozenset({_aten.empty, _aten.empty_like, _aten.empty_strided, _aten.empty_permuted,
                          _aten.new_empty, _aten.new_empty_strided})
# Factories that take a tensor only for its shape, dtype and device: its data is not read.
_METADATA_OPERANDS = _ALLOCATIONS | {_aten.zeros_like, _aten.ones_like, _aten.full_like,
                                     _aten.rand_like, _aten.randn_like, _aten.randint_like,
                                     _aten.new_zeros, _aten.new_ones, _aten.new_full}
# In-place ops that overwrite their target without reading it.
_OVERWRITES = frozenset({_aten.fill_, _aten.zero_, _aten.copy_, _aten.normal_, _aten.uniform_,
                         _aten.random_, _aten.bernoulli_, _aten.exponential_})


@dataclass(frozen=True)
class Traffic:
    """Kernel launches and bytes moved through device memory."""
    launches: int
    bytes_read: int
    bytes_written: int

    @property
    def bytes(self) -> int:
        return self.bytes_read + self.bytes_written

    def __add__(self, other: Traffic) -> Traffic:
        return Traffic(self.launches + other.launches, self.bytes_read + other.bytes_read,
                       self.bytes_written + other.bytes_written)

    def modeled_h100_us(self) -> float:
        """Modeled, not measured: bytes at H100 bandwidth plus a fixed cost per launch, in µs."""
        return (self.bytes / H100_BANDWIDTH_BYTES_PER_S + self.launches * LAUNCH_OVERHEAD_S) * 1e6

    def to_json(self) -> dict:
        return {"launches": self.launches, "bytes_read": self.bytes_read,
                "bytes_written": self.bytes_written, "bytes": self.bytes}


@dataclass(frozen=True)
class OpRecord:
    """One ATen op that launched: its name (e.g. ``aten.mul.Tensor``) and the bytes it moved."""
    name: str
    bytes_read: int
    bytes_written: int


def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes of the distinct elements ``t`` spans: a stride-0 (expanded) dimension counts once.

    The count is the product of the sizes of the dimensions with a non-zero stride, bounded by the
    extent from the first element to the last (which only binds for self-overlapping views such
    as ``unfold``): exact for every tensor whose strided dimensions do not overlap.
    """
    if t.numel() == 0:
        return 0
    strided = [(size, abs(stride)) for size, stride in zip(t.shape, t.stride())
               if size > 1 and stride != 0]
    product = math.prod(size for size, _ in strided)
    extent = 1 + sum((size - 1) * stride for size, stride in strided)
    return min(product, extent) * t.element_size()


def _distinct_bytes(tensors: Sequence[torch.Tensor]) -> int:
    """Bytes of ``tensors``; an operand passed twice (same memory, same view) counts once."""
    spans = {(t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(),
              t.dtype): tensor_bytes(t) for t in tensors}
    return sum(spans.values())


def _tensors(value) -> list[torch.Tensor]:
    return [leaf for leaf in tree_leaves(value) if isinstance(leaf, torch.Tensor)]


def _op_bytes(func, args, kwargs, result) -> tuple[int, int]:
    """(bytes read, bytes written) of one non-view ATen op; see ``TrafficCounter`` for the rules."""
    packet = func.overloadpacket
    if packet in _ALLOCATIONS:
        return 0, 0
    schema = func._schema
    read, written = [], []
    for position, argument in enumerate(schema.arguments):
        value = args[position] if position < len(args) else kwargs.get(argument.name)
        tensors = _tensors(value)
        mutated = argument.alias_info is not None and argument.alias_info.is_write
        if mutated:
            written += tensors
        write_only = mutated and (argument.is_out or packet in _OVERWRITES)
        if packet not in _METADATA_OPERANDS and not write_only:
            read += tensors
    results = result if len(schema.returns) > 1 else (result,)
    for returned, value in zip(schema.returns, results):
        if returned.alias_info is None:  # a fresh result; an aliasing one is a mutated argument
            written += _tensors(value)
    return _distinct_bytes(read), _distinct_bytes(written)


def _composite_kernel(func) -> DispatchKey | None:
    """The dispatch key of ``func``'s kernel made of other ops, if it runs that one everywhere.

    A ``CompositeImplicitAutograd`` op (``to``, ``reshape``, ``linalg_vecdot``, ...; seen here
    when called below autograd, inside a custom op) decomposes on every device. So does a custom
    op outside ``aten`` with a ``CompositeExplicitAutograd`` kernel: ``torch.library.custom_op``
    registers its Python body there. An ATen op's ``CompositeExplicitAutograd`` kernel can be
    overridden by a device kernel, so ATen ops are otherwise counted as they are called.
    """
    name = func.name()
    if torch._C._dispatch_has_kernel_for_dispatch_key(name, DispatchKey.CompositeImplicitAutograd):
        return DispatchKey.CompositeImplicitAutograd
    if func.namespace != "aten" and torch._C._dispatch_has_kernel_for_dispatch_key(
            name, DispatchKey.CompositeExplicitAutograd):
        return DispatchKey.CompositeExplicitAutograd
    return None


class TrafficCounter(TorchDispatchMode):
    """Records every ATen op run under it that launches, with the bytes it reads and writes.

    Use as a context manager around any PyTorch callable, forward or backward: for backward, build
    the graph outside and run ``torch.autograd.grad(out, inputs, grad)`` inside. Rules:

    - An op whose kernel is written in ATen ops for every device (``_composite_kernel``) runs that
      kernel under the counter, so the ATen ops it is made of are what is counted.
    - A view (``func.is_view``: view, expand, slice, select, unsqueeze, permute, t, as_strided,
      alias, detach, unbind, split, ...) moves nothing and is no launch; so is ``_unsafe_view``,
      which reinterprets a fresh temporary although its schema declares a new tensor.
    - An allocation (``empty``, ``empty_like``, ``empty_strided``, ``new_empty``, ...) writes
      nothing and is no launch. ``zeros``, ``full``, ``fill_`` and the like write their output;
      the ``*_like`` / ``new_*`` factories read nothing from their tensor argument.
    - Any other op reads its tensor operands (tensors in list arguments included; one passed
      twice is read once) and writes its fresh results and every argument it mutates. A mutated
      argument is read as well, except an ``out=`` argument and the target of an op that
      overwrites without reading (``fill_``, ``zero_``, ``copy_``, random fills).
    - A tensor moves ``tensor_bytes(t)``: the distinct elements it spans.
    - An op that moves at least one byte is one launch. A few composite ATen ops launch two
      kernels on CUDA (``slice_backward``: a memset, then a copy) and count as one, so eager
      figures are lower bounds.
    """

    def __init__(self):
        super().__init__()
        self.records: list[OpRecord] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        composite = _composite_kernel(func)
        if composite is not None:
            with self:
                return func._op_dk(composite, *args, **kwargs)
        result = func(*args, **kwargs)
        if not (func.is_view or func.overloadpacket is _aten._unsafe_view):
            read, written = _op_bytes(func, args, kwargs, result)
            if read + written:
                self.records.append(OpRecord(str(func), read, written))
        return result

    def summary(self) -> Traffic:
        return sum((Traffic(1, r.bytes_read, r.bytes_written) for r in self.records),
                   Traffic(0, 0, 0))

    def breakdown(self) -> dict[str, Traffic]:
        """Traffic per ATen op name, in order of first launch."""
        per_op: dict[str, Traffic] = {}
        for r in self.records:
            per_op[r.name] = per_op.get(r.name, Traffic(0, 0, 0)) + Traffic(1, r.bytes_read,
                                                                            r.bytes_written)
        return per_op


@dataclass(frozen=True)
class TrafficCase:
    """One op at one shape and dtype: the eager paths to count and the fused kernels' traffic.

    ``make_inputs`` returns fresh inputs, those to differentiate with ``requires_grad`` set; each
    eager path maps them to one output tensor. ``fused`` and ``minimum`` map a direction ("fwd",
    "bwd") to traffic derived analytically by a function next to the case.
    """
    op: str
    shape: str
    dtype: torch.dtype
    make_inputs: Callable[[], tuple[torch.Tensor, ...]]
    eager_paths: Mapping[str, Callable[..., torch.Tensor]]
    fused: Mapping[str, Traffic]
    minimum: Mapping[str, Traffic]
    directions: Sequence[str] = DIRECTIONS


def count_forward_backward(fn: Callable[..., torch.Tensor], inputs: Sequence[torch.Tensor],
                           directions: Sequence[str] = DIRECTIONS) -> dict[str, TrafficCounter]:
    """Counts ``fn(*inputs)`` ("fwd") and its backward to the inputs that require grad ("bwd")."""
    with TrafficCounter() as forward:
        out = fn(*inputs)
    if "bwd" not in directions:
        return {"fwd": forward}
    grad = torch.randn_like(out)
    with TrafficCounter() as backward:
        torch.autograd.grad(out, [t for t in inputs if t.requires_grad], grad)
    return {"fwd": forward, "bwd": backward}


def saved_bytes(fn: Callable, inputs: Sequence[torch.Tensor]) -> Tuple[int, int]:
    """Runs ``fn(*inputs)`` and returns (bytes of the inputs among what autograd saves, bytes of
    everything else it saves), each storage counted once."""
    saved, alive = {}, []

    def pack(t):
        # Kept alive until the count is done: a storage freed during the forward (saved by a
        # node of a branch that does not reach the output) could otherwise have its address
        # reused by a later one, and one of the two would go uncounted.
        alive.append(t)
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(*inputs)
    own = {t.untyped_storage().data_ptr() for t in inputs if isinstance(t, torch.Tensor)}
    in_inputs = sum(n for ptr, n in saved.items() if ptr in own)
    return in_inputs, sum(saved.values()) - in_inputs
