"""Device-memory traffic of each op: eager PyTorch paths counted, fused Triton kernels modeled.

Run from the repository root::

    python -m bench.traffic [--op NAME ...] [--out-dir DIR] [--breakdown]

Each case's eager paths (the op's reference, differentiated by autograd, and its torch path) run on
CPU under ``TrafficCounter``, a ``TorchDispatchMode`` that sees every ATen op below autograd,
forward and backward, and counts the bytes each would move through device memory on a GPU. The
ATen op sequence of these paths does not depend on the device. The fused Triton kernels address
memory through raw pointers, out of the counter's sight, so their traffic is analytic: a function
next to each case derives it from the kernels' access pattern. Beside both stands the minimum, each
input read once and each output written once.

GPU time is modeled, not measured (there is no GPU here): bytes / 3.0 TB/s + 4 µs per launch, a
round H100 figure. Results go to ``traffic.json`` and ``traffic.md`` under ``bench/results/``.
"""
from __future__ import annotations

import argparse
import datetime
import functools
import importlib.metadata
import json
import math
import os
import platform
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

import torch
from torch._C import DispatchKey
from torch.utils._pytree import tree_leaves
from torch.utils._python_dispatch import TorchDispatchMode

from bench.mamba_style_scan import mamba_style_loop
from bench.saved import saved_bytes
from kernels.deviation_adanorm import deviation_adanorm, deviation_adanorm_reference
from kernels.selective_scan import selective_scan_reference
from kernels.grid_sample_3d import grid_sample_3d
from kernels.region_softmax_warp import region_softmax_warp, region_softmax_warp_reference
from kernels.selective_state_update import selective_state_update

H100_BANDWIDTH_BYTES_PER_S = 3.0e12
LAUNCH_OVERHEAD_S = 4e-6
RESULTS_DIR = Path(__file__).resolve().parent / "results"
DIRECTIONS = ("fwd", "bwd")
MODEL_NOTE = ("GPU times are modeled, not measured: bytes / 3.0 TB/s + 4 µs per launch (H100). "
              "Eager bytes and launches are counted ATen ops; fused figures are analytic.")

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
class Case:
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


@dataclass(frozen=True)
class Row:
    """One eager path of one case in one direction, beside the fused kernels and the minimum."""
    case: Case
    path: str
    direction: str
    eager: Traffic
    eager_breakdown: Mapping[str, Traffic]
    saved_beyond_inputs: Optional[int] = None  # forward rows of differentiable cases

    @property
    def fused(self) -> Traffic:
        return self.case.fused[self.direction]

    @property
    def minimum(self) -> Traffic:
        return self.case.minimum[self.direction]

    @property
    def eager_over_fused(self) -> float:
        return self.eager.bytes / self.fused.bytes

    def to_json(self) -> dict:
        return {
            "op": self.case.op, "shape": self.case.shape, "dtype": _dtype_name(self.case.dtype),
            "direction": self.direction, "path": self.path,
            "eager": self.eager.to_json(), "fused": self.fused.to_json(),
            "minimum": self.minimum.to_json(),
            "eager_over_fused_bytes": round(self.eager_over_fused, 3),
            "modeled_h100_us": {"eager": round(self.eager.modeled_h100_us(), 2),
                                "fused": round(self.fused.modeled_h100_us(), 2)},
            "saved_for_backward_beyond_inputs_bytes": self.saved_beyond_inputs,
            "eager_breakdown": {name: t.to_json() for name, t in self.eager_breakdown.items()},
        }


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


def measure(case: Case) -> list[Row]:
    """Counts every eager path of ``case``, forward and backward, on fresh inputs."""
    rows = []
    for path, fn in case.eager_paths.items():
        counters = count_forward_backward(fn, case.make_inputs(), case.directions)
        saved = saved_bytes(fn, case.make_inputs())[1] if "bwd" in case.directions else None
        rows += [Row(case, path, direction, counters[direction].summary(),
                     counters[direction].breakdown(), saved if direction == "fwd" else None)
                 for direction in case.directions]
    return rows


# deviation_adanorm: v (B, N+1, G), scale/shift/out (B, N, R, G).

def adanorm_fused_traffic(B: int, N: int, R: int, G: int, itemsize: int) -> dict[str, Traffic]:
    """Traffic of the fused deviation_adanorm Triton kernels, s = ``itemsize`` bytes per element.

    Forward, one launch: reads v (B·(N+1)·G·s; v_0 is shared by a batch's N rows and served from
    L2), scale and shift (2·B·N·R·G·s); writes out (B·N·R·G·s) and each row's fp32 mean and 1/std
    (8·B·N bytes).

    Backward, two launches (a memset of the B int32 arrival counters, then the kernel): reads
    grad_out and scale (2·B·N·R·G·s), v (B·(N+1)·G·s) and the rows' mean and 1/std (8·B·N);
    writes grad_scale (B·N·R·G·s) and grad_v (B·(N+1)·G·s). The last program of each batch
    re-reads the batch's N frame-gradient rows to form grad_v_0 (B·N·G·s); the memset writes 4·B
    bytes. grad_shift is grad_out itself: nothing is written for it.
    """
    frames = B * (N + 1) * G * itemsize  # v, grad_v
    regions = B * N * R * G * itemsize  # each of scale, shift, out, grad_out, grad_scale
    row_stats = 2 * 4 * B * N  # fp32 mean and 1/std per row (b, i)
    frame_gradients = B * N * G * itemsize  # grad_v_1..N, re-read for grad_v_0
    arrival_counters = 4 * B
    return {
        "fwd": Traffic(launches=1, bytes_read=frames + 2 * regions,
                       bytes_written=regions + row_stats),
        "bwd": Traffic(launches=2, bytes_read=2 * regions + frames + row_stats + frame_gradients,
                       bytes_written=regions + frames + arrival_counters),
    }


def adanorm_minimum_traffic(B: int, N: int, R: int, G: int, itemsize: int) -> dict[str, Traffic]:
    """The fewest bytes deviation_adanorm can move, in one launch each way.

    Forward reads v, scale and shift once and writes out once. Backward reads grad_out and the
    saved inputs v and scale once and writes grad_v and grad_scale once (grad_shift equals
    grad_out, so it needs no bytes).
    """
    frames = B * (N + 1) * G * itemsize
    regions = B * N * R * G * itemsize
    return {
        "fwd": Traffic(launches=1, bytes_read=frames + 2 * regions, bytes_written=regions),
        "bwd": Traffic(launches=1, bytes_read=2 * regions + frames, bytes_written=regions + frames),
    }


def _adanorm_inputs(B: int, N: int, R: int, G: int, dtype: torch.dtype):
    v = torch.randn(B, N + 1, G, dtype=dtype, requires_grad=True)
    scale = torch.randn(B, N, R, G, dtype=dtype, requires_grad=True)
    shift = torch.randn(B, N, R, G, dtype=dtype, requires_grad=True)
    return v, scale, shift


def adanorm_cases(B: int = 4, N: int = 24, R: int = 10, G: int = 768,
                  dtypes: Sequence[torch.dtype] = (torch.float32, torch.bfloat16)) -> list[Case]:
    """deviation_adanorm at the model's shape: B clips of T = N + 1 frames, R = λ regions."""
    itemsizes = {dtype: torch.empty((), dtype=dtype).element_size() for dtype in dtypes}
    return [Case(op="deviation_adanorm", shape=f"B={B} N={N} (T={N + 1}) R={R} G={G}", dtype=dtype,
                 make_inputs=functools.partial(_adanorm_inputs, B, N, R, G, dtype),
                 eager_paths={"reference": deviation_adanorm_reference,
                              "torch": functools.partial(deviation_adanorm, backend="torch")},
                 fused=adanorm_fused_traffic(B, N, R, G, itemsizes[dtype]),
                 minimum=adanorm_minimum_traffic(B, N, R, G, itemsizes[dtype]))
            for dtype in dtypes]


# selective_scan: u, delta, z, out (batch, dim, L); A (dim, N); B, C (batch, G, N, L); D,
# delta_bias (dim,). The table's case has D, z, delta_bias, softplus, no initial state, and only
# the output's gradient (none for the last state).

def scan_fused_traffic(batch: int, dim: int, L: int, N: int, G: int, itemsize: int
                       ) -> dict[str, Traffic]:
    """Traffic of the selective-scan Triton kernels (with D, z, delta_bias; s = ``itemsize``).

    Forward, one launch: reads u, delta, z once (3·P·L·s, P = batch·dim), B and C once per group
    (the programs of a group share them through L2: 2·batch·G·N·L·s), A, D and delta_bias; writes
    out (P·L·s), one fp32 state checkpoint per chunk of T_CHUNK steps and the last state
    (P·N·4·(n_chunks + 1)).

    Backward, the kernel plus five torch sums: the kernel reads u, delta, z, grad_out (4·P·L·s),
    B, C, the checkpoints, A, D, delta_bias and writes du, ddelta, dz (3·P·L·s), d initial state
    and per-program dA partials (2·P·N·4), dD and ddelta_bias partials (2·P·4), and dB/dC partials,
    one (N, L) fp32 slab per program (2·batch·G·J·N·L·4, J = programs per group). The sums over
    programs (dB, dC) and over batch (dA, dD, ddelta_bias) read those partials and write the
    gradients in fp32 (bf16/fp16 inputs add two casts of dB and dC).
    """
    from kernels.selective_scan import triton_kernels as scan_kernels

    cpu = torch.device("cpu")
    P, fp32 = batch * dim, 4
    group_dim = dim // G
    n_chunks = math.ceil(L / scan_kernels.T_CHUNK)
    bwd_cfg = scan_kernels.launch_config(scan_kernels.BACKWARD_CONFIGS,
                                         scan_kernels.BACKWARD_PROGRAMS_PER_SM,
                                         batch, G, group_dim, N, cpu, scan_kernels.T_CHUNK)
    J = math.ceil(group_dim / bwd_cfg.constexprs["BLOCK_D"])
    sequences = P * L * itemsize  # each of u, delta, z, out, grad_out, du, ddelta, dz
    projections = batch * G * N * L * itemsize  # each of B, C
    parameters = dim * N * fp32 + 2 * dim * fp32  # A, D, delta_bias
    partial_slabs = 2 * batch * G * J * N * L * fp32
    forward = Traffic(launches=1, bytes_read=3 * sequences + 2 * projections + parameters,
                      bytes_written=sequences + P * N * fp32 * (n_chunks + 1))
    kernel = Traffic(launches=1,
                     bytes_read=4 * sequences + 2 * projections + P * N * fp32 * n_chunks
                     + parameters,
                     bytes_written=3 * sequences + 2 * P * N * fp32 + 2 * P * fp32 + partial_slabs)
    grad_projections = 2 * batch * G * N * L * fp32
    sums = Traffic(launches=5, bytes_read=partial_slabs + P * N * fp32 + 2 * P * fp32,
                   bytes_written=grad_projections + parameters)
    backward = kernel + sums
    if itemsize < fp32:
        backward = backward + Traffic(launches=2, bytes_read=grad_projections,
                                      bytes_written=2 * projections)
    return {"fwd": forward, "bwd": backward}


def scan_minimum_traffic(batch: int, dim: int, L: int, N: int, G: int, itemsize: int
                         ) -> dict[str, Traffic]:
    """The fewest bytes the selective scan can move (with D, z, delta_bias), one launch each way.

    Forward reads u, delta, z, B, C, A, D, delta_bias once and writes out and the last state once.
    Backward reads those inputs and grad_out once and writes each of their gradients once; no
    state is kept between the two (a kernel that recomputes every state from the start).
    """
    P, fp32 = batch * dim, 4
    sequences = P * L * itemsize
    projections = batch * G * N * L * itemsize
    parameters = dim * N * fp32 + 2 * dim * fp32
    inputs = 3 * sequences + 2 * projections + parameters
    return {
        "fwd": Traffic(launches=1, bytes_read=inputs, bytes_written=sequences + P * N * fp32),
        "bwd": Traffic(launches=1, bytes_read=inputs + sequences,
                       bytes_written=3 * sequences + 2 * projections + parameters),
    }


def _scan_inputs(batch: int, dim: int, L: int, N: int, dtype: torch.dtype):
    u, delta, z = (torch.randn(batch, dim, L, dtype=dtype) for _ in range(3))
    A = -torch.exp(torch.randn(dim, N))
    B, C = (torch.randn(batch, N, L, dtype=dtype) for _ in range(2))
    D, delta_bias = torch.randn(dim), torch.randn(dim) * 0.1
    return u, delta, A, B, C, D, z, delta_bias


def _first(fn):
    """The output of a path that returns (out, last state)."""
    return lambda *inputs: fn(*inputs)[0]


def scan_cases(batch: int = 2, dim: int = 256, L: int = 2048, N: int = 16) -> list[Case]:
    """selective_scan at a Mamba block's shape with D, z, delta_bias and softplus, forward only:
    the backward of the mamba_ssm-style loop costs O(L²) bytes (each step's slice of the
    (batch, dim, L, N) tensors gets a zero-filled full-size gradient) and minutes to count."""
    itemsize = 4
    loop = _first(lambda *a: mamba_style_loop(*a, delta_softplus=True))
    literal = lambda *a: selective_scan_reference(*a, delta_softplus=True)  # noqa: E731
    return [Case(op="selective_scan", shape=f"batch={batch} dim={dim} L={L} N={N} G=1",
                 dtype=torch.float32,
                 make_inputs=functools.partial(_scan_inputs, batch, dim, L, N, torch.float32),
                 eager_paths={"mamba_style_loop": loop, "reference": literal},
                 fused=scan_fused_traffic(batch, dim, L, N, 1, itemsize),
                 minimum=scan_minimum_traffic(batch, dim, L, N, 1, itemsize),
                 directions=("fwd",))]


# selective_state_update: state (batch, dim, N) fp32 in place; x, dt, z, out (batch, dim);
# B, C (batch, G, N); A (dim, N); D, dt_bias (dim,). Inference only: forward.

def state_update_traffic(batch: int, dim: int, N: int, G: int, itemsize: int) -> dict[str, Traffic]:
    """The recurrence-step Triton kernel (with D, z, dt_bias), which is also the minimum: one launch
    reads the fp32 state once and writes it back once in place (2·batch·dim·N·4), reads x, dt, z
    and writes out once (4·batch·dim·s), reads B and C (2·batch·G·N·s), A (dim·N·4), D and dt_bias
    (2·dim·4)."""
    fp32 = 4
    state = batch * dim * N * fp32
    read = (state + 3 * batch * dim * itemsize + 2 * batch * G * N * itemsize
            + dim * N * fp32 + 2 * dim * fp32)
    step = Traffic(launches=1, bytes_read=read, bytes_written=state + batch * dim * itemsize)
    return {"fwd": step}


def _state_update_inputs(batch: int, dim: int, N: int, dtype: torch.dtype):
    state = torch.randn(batch, dim, N)
    x, dt, z = (torch.randn(batch, dim, dtype=dtype) for _ in range(3))
    A = -torch.exp(torch.randn(dim, N))
    B, C = (torch.randn(batch, N, dtype=dtype) for _ in range(2))
    return state, x, dt, A, B, C, torch.randn(dim), z, torch.randn(dim)


def state_update_cases(batch: int = 2, dim: int = 512, N: int = 16) -> list[Case]:
    """One streaming step of a Mamba block (d_model 256, expand 2: dim 512), fp32."""
    traffic = state_update_traffic(batch, dim, N, 1, 4)
    step = lambda backend: lambda *a: selective_state_update(*a, dt_softplus=True,  # noqa: E731
                                                             backend=backend)
    return [Case(op="selective_state_update", shape=f"batch={batch} dim={dim} N={N} G=1",
                 dtype=torch.float32,
                 make_inputs=functools.partial(_state_update_inputs, batch, dim, N, torch.float32),
                 eager_paths={"reference": step("reference"), "torch": step("torch")},
                 fused=traffic, minimum=traffic, directions=("fwd",))]


# region_softmax_warp: feature F_id (F_b, C, D, H, W) with F_b = 1 (shared) or B; logits
# (B, R, D, H, W); displacement (B, R, 3, D, H, W); mask (B, 1, D, H, W); out (B, C, D, H, W).

def warp_fused_traffic(B: int, C: int, R: int, D: int, H: int, W: int, feature_batch: int,
                       itemsize: int) -> dict[str, Traffic]:
    """Traffic of the region_softmax_warp Triton kernels (one program per 128 output voxels).

    Forward, one launch: reads logits and displacement once (4·N·R·s, N = B·D·H·W), the mask
    (N·s), F_id (F_b·C·V·s distinct bytes, V = D·H·W: the 8 trilinear corners of every channel are
    gathered around the voxel's own position and counted once, which holds for flows of a few
    voxels), β; writes out once (B·C·V·s).

    Backward: a memset of the fp32 feature-gradient buffer (F_b·C·V·4), the kernel, the sum of
    the per-program β partials (and a cast of the feature gradient for 2-byte dtypes). The kernel
    reads grad_out (B·C·V·s), the mask, F_id, and logits and displacement twice (8·N·R·s, the
    worst case: the second pass may come from L2); writes grad_logits and grad_displacement
    (4·N·R·s), grad_mask (N·s), a β partial per program; its 9 fp32 atomic adds per voxel and
    channel land in the feature-gradient buffer, counted as one read and one write of it (it
    stays in L2 at the base shape: 8.4 MB).
    """
    fp32 = 4
    voxels, volume = B * D * H * W, D * H * W
    programs = math.ceil(voxels / 128)
    per_region = voxels * R * itemsize
    out_bytes = B * C * volume * itemsize
    feature = feature_batch * C * volume * itemsize
    grad_buffer = feature_batch * C * volume * fp32
    forward = Traffic(launches=1, bytes_read=4 * per_region + voxels * itemsize + feature + fp32,
                      bytes_written=out_bytes)
    backward = Traffic(
        launches=3,
        bytes_read=out_bytes + voxels * itemsize + feature + 8 * per_region + grad_buffer
        + programs * fp32,
        bytes_written=grad_buffer + 4 * per_region + voxels * itemsize + grad_buffer
        + programs * fp32 + fp32)
    if itemsize < fp32:
        backward = backward + Traffic(launches=1, bytes_read=grad_buffer, bytes_written=feature)
    return {"fwd": forward, "bwd": backward}


def warp_minimum_traffic(B: int, C: int, R: int, D: int, H: int, W: int, feature_batch: int,
                         itemsize: int) -> dict[str, Traffic]:
    """Each input read once and each output written once, one launch each way (β ignored)."""
    voxels, volume = B * D * H * W, D * H * W
    per_region = voxels * R * itemsize
    feature = feature_batch * C * volume * itemsize
    out_bytes = B * C * volume * itemsize
    inputs = 4 * per_region + voxels * itemsize + feature
    return {"fwd": Traffic(launches=1, bytes_read=inputs, bytes_written=out_bytes),
            "bwd": Traffic(launches=1, bytes_read=inputs + out_bytes,
                           bytes_written=feature + 4 * per_region + voxels * itemsize)}


def _warp_inputs(B: int, C: int, R: int, D: int, H: int, W: int, feature_batch: int,
                 dtype: torch.dtype):
    feature = torch.randn(feature_batch, C, D, H, W, dtype=dtype)
    logits = torch.randn(B, R, D, H, W, dtype=dtype)
    displacement = (torch.randn(B, R, 3, D, H, W) * 0.05).to(dtype)
    mask = torch.rand(B, 1, D, H, W, dtype=dtype)
    return tuple(t.requires_grad_() for t in (feature, logits, displacement, mask))


def warp_cases(B: int = 4, C: int = 32, R: int = 10, D: int = 16, H: int = 64, W: int = 64,
               dtypes: Sequence[torch.dtype] = (torch.float32,)) -> list[Case]:
    """region_softmax_warp at the base model's shape: B frames warped from one shared F_id."""
    beta = 0.2
    cases = []
    for dtype in dtypes:
        itemsize = torch.empty((), dtype=dtype).element_size()
        cases.append(Case(
            op="region_softmax_warp", shape=f"B={B} C={C} R={R} D={D} H={H} W={W} F_b=1",
            dtype=dtype, make_inputs=functools.partial(_warp_inputs, B, C, R, D, H, W, 1, dtype),
            eager_paths={"reference": lambda *a: region_softmax_warp_reference(*a, beta),
                         "torch": lambda *a: region_softmax_warp(*a, beta, backend="torch")},
            fused=warp_fused_traffic(B, C, R, D, H, W, 1, itemsize),
            minimum=warp_minimum_traffic(B, C, R, D, H, W, 1, itemsize)))
    return cases


# grid_sample_3d: input (N, C, D, H, W), grid (N, Do, Ho, Wo, 3), out (N, C, Do, Ho, Wo).

def grid_sample_fused_traffic(N: int, C: int, volume: int, points: int, itemsize: int
                              ) -> dict[str, Traffic]:
    """Traffic of the grid_sample_3d Triton kernels (gradients for input and grid).

    Forward, one launch: reads the grid once (3·N·P·s, P output points), gathers the 8 corners of
    every channel (counted as the input once, N·C·V·s, V = D·H·W: corners of neighbouring points
    are shared through L1/L2 when the grid is smooth), writes out once (N·C·P·s).

    Backward: a memset of the fp32 input-gradient buffer (N·C·V·4) and the kernel (plus a cast
    for 2-byte dtypes). The kernel reads grad_out (N·C·P·s), the grid and the input corners again
    (for the grid gradient), writes grad_grid (3·N·P·s), and its 8 fp32 atomic adds per point and
    channel are counted as one read and one write of the buffer (L2-resident).
    """
    fp32 = 4
    grid, out = 3 * N * points * itemsize, N * C * points * itemsize
    source, buffer = N * C * volume * itemsize, N * C * volume * fp32
    forward = Traffic(launches=1, bytes_read=grid + source, bytes_written=out)
    backward = Traffic(launches=2, bytes_read=out + grid + source + buffer,
                       bytes_written=buffer + grid + buffer)
    if itemsize < fp32:
        backward = backward + Traffic(launches=1, bytes_read=buffer, bytes_written=source)
    return {"fwd": forward, "bwd": backward}


def grid_sample_minimum_traffic(N: int, C: int, volume: int, points: int, itemsize: int
                                ) -> dict[str, Traffic]:
    """Each input read once, each output written once, one launch each way."""
    grid, out, source = 3 * N * points * itemsize, N * C * points * itemsize, N * C * volume * itemsize
    return {"fwd": Traffic(launches=1, bytes_read=grid + source, bytes_written=out),
            "bwd": Traffic(launches=1, bytes_read=out + grid + source, bytes_written=source + grid)}


def _grid_sample_inputs(N: int, C: int, D: int, H: int, W: int, dtype: torch.dtype):
    source = torch.randn(N, C, D, H, W, dtype=dtype)
    grid = (torch.rand(N, D, H, W, 3) * 2.2 - 1.1).to(dtype)
    return source.requires_grad_(), grid.requires_grad_()


def grid_sample_cases(N: int = 4, C: int = 32, D: int = 16, H: int = 64, W: int = 64) -> list[Case]:
    """grid_sample_3d over a base-shape volume, one output point per voxel, border padding, fp32."""
    volume = D * H * W
    sample = lambda backend: lambda *a: grid_sample_3d(*a, padding_mode="border",  # noqa: E731
                                                       backend=backend)
    return [Case(op="grid_sample_3d", shape=f"N={N} C={C} D={D} H={H} W={W} (out = in)",
                 dtype=torch.float32,
                 make_inputs=functools.partial(_grid_sample_inputs, N, C, D, H, W, torch.float32),
                 eager_paths={"reference": sample("reference"), "torch": sample("torch")},
                 fused=grid_sample_fused_traffic(N, C, volume, volume, 4),
                 minimum=grid_sample_minimum_traffic(N, C, volume, volume, 4))]


CASES: tuple[Case, ...] = (*adanorm_cases(), *scan_cases(), *state_update_cases(),
                         *grid_sample_cases(), *warp_cases())


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _mb(n_bytes: int) -> str:
    return f"{n_bytes / 1e6:.3f}"


TABLE_HEADERS = ("op", "shape", "dtype", "dir", "path", "eager launches", "eager MB",
                 "fused launches", "fused MB", "min MB", "eager/fused bytes",
                 "modeled H100 µs eager", "modeled H100 µs fused", "saved for bwd MB")


def table_cells(row: Row) -> tuple[str, ...]:
    return (row.case.op, row.case.shape, _dtype_name(row.case.dtype), row.direction, row.path,
            str(row.eager.launches), _mb(row.eager.bytes), str(row.fused.launches),
            _mb(row.fused.bytes), _mb(row.minimum.bytes), f"{row.eager_over_fused:.2f}x",
            f"{row.eager.modeled_h100_us():.1f}", f"{row.fused.modeled_h100_us():.1f}",
            "" if row.saved_beyond_inputs is None else _mb(row.saved_beyond_inputs))


def format_table(rows: Sequence[Row]) -> str:
    """Plain-text table: text columns left-aligned, figures right-aligned."""
    cells = [table_cells(row) for row in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(TABLE_HEADERS)]
    text_columns = 5

    def line(values):
        return "  ".join(v.ljust(w) if i < text_columns else v.rjust(w)
                         for i, (v, w) in enumerate(zip(values, widths)))

    return "\n".join([line(TABLE_HEADERS), line(["-" * w for w in widths]),
                      *(line(c) for c in cells)])


def format_breakdown(row: Row) -> str:
    title = (f"{row.case.op} {row.case.shape} {_dtype_name(row.case.dtype)} {row.direction} "
             f"{row.path}: {row.eager.launches} launches, {_mb(row.eager.bytes)} MB")
    lines = [title]
    for name, t in row.eager_breakdown.items():
        lines.append(f"  {name:<28} x{t.launches:<3} read {_mb(t.bytes_read):>8} MB  "
                     f"written {_mb(t.bytes_written):>8} MB")
    return "\n".join(lines)


def _package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def run_metadata() -> dict:
    return {
        "machine": {"node": platform.node(),
                    "processor": platform.processor() or platform.machine(),
                    "platform": platform.platform()},
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "triton": _package_version("triton")},
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": {"note": MODEL_NOTE, "bandwidth_bytes_per_s": H100_BANDWIDTH_BYTES_PER_S,
                  "launch_overhead_us": LAUNCH_OVERHEAD_S * 1e6},
    }


def report_markdown(rows: Sequence[Row], metadata: dict) -> str:
    machine, versions = metadata["machine"], metadata["versions"]
    lines = [
        "# Device-memory traffic: eager paths counted, fused kernels analytic",
        "",
        f"Machine {machine['node']} ({machine['processor']}), torch {versions['torch']}, "
        f"triton {versions['triton']}, {metadata['date']}. Written by `python -m bench.traffic`.",
        "",
        MODEL_NOTE,
        "",
        "| " + " | ".join(TABLE_HEADERS) + " |",
        "|" + "|".join("---" for _ in TABLE_HEADERS) + "|",
        *("| " + " | ".join(table_cells(row)) + " |" for row in rows),
        "",
        "## Eager paths, per ATen op",
    ]
    for row in rows:
        lines += ["", "```", format_breakdown(row), "```"]
    return "\n".join(lines) + "\n"


def write_atomic(path: Path, text: str) -> None:
    """Writes ``text`` to a temporary file beside ``path``, then renames it over ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp creates the file readable by its owner only
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def main(argv: Sequence[str] | None = None) -> int:
    ops = sorted({case.op for case in CASES})
    parser = argparse.ArgumentParser(prog="python -m bench.traffic",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--op", action="append", choices=ops,
                        help="only this op (repeatable); default: every op")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR,
                        help=f"where traffic.json and traffic.md go (default: {RESULTS_DIR})")
    parser.add_argument("--breakdown", action="store_true",
                        help="print each eager row's traffic per ATen op before the table")
    args = parser.parse_args(argv)

    rows = [row for case in CASES if args.op is None or case.op in args.op
            for row in measure(case)]
    metadata = run_metadata()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = args.out_dir / "traffic.json", args.out_dir / "traffic.md"
    write_atomic(json_path, json.dumps({**metadata, "rows": [r.to_json() for r in rows]},
                                       indent=2, ensure_ascii=False) + "\n")
    write_atomic(md_path, report_markdown(rows, metadata))

    if args.breakdown:
        print("\n\n".join(format_breakdown(row) for row in rows), end="\n\n")
    print(f"wrote {json_path} and {md_path}")
    print(f"note: {MODEL_NOTE}")
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
