"""Cost model of selective_scan: the traffic of its fused Triton kernels and the minimum any
implementation must move (``{"fwd": Traffic, "bwd": Traffic}``), the traffic of the fast path's
numba forward, and its cases for the traffic table (``python -m bench.traffic``)."""
from __future__ import annotations

import functools
import math

import torch

from ..cost import Traffic, TrafficCase
from .inputs import make_inputs
from .reference import selective_scan_mamba_style, selective_scan_reference


# selective_scan: u, delta, z, out (batch, dim, L); A (dim, N); B, C (batch, G, N, L); D,
# delta_bias (dim,). The table's case has D, z, delta_bias, softplus, no initial state, and only
# the output's gradient (none for the last state).

def fused_traffic(batch: int, dim: int, L: int, N: int, G: int, itemsize: int
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
    from . import triton_kernels as scan_kernels

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


def minimum_traffic(batch: int, dim: int, L: int, N: int, G: int, itemsize: int
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


def fast_path_traffic(batch: int, dim: int, length: int, nstate: int,
                      compute_itemsize: int) -> Traffic:
    """The fast path's numba forward (one parallel loop, with D, z, delta_bias): reads u, dt, z
    (batch·dim·L each), B and C (batch·N·L each; one group), A (dim·N), D (dim) and the initial
    state (batch·dim·N); writes out (batch·dim·L), the last state (batch·dim·N) and a checkpoint
    every CHUNK = 64 steps (batch·dim·⌈L/64⌉·N); all in the compute dtype (``compute_itemsize``
    bytes: fp32 for fp32 inputs). The torch ops around it (softplus, layout copies) are not in
    it: a ``TrafficCounter`` sees those."""
    from .fast_path import CHUNK

    s = compute_itemsize
    sequences = batch * dim * length * s
    states = batch * dim * nstate * s
    read = 3 * sequences + 2 * batch * nstate * length * s + dim * nstate * s + dim * s + states
    written = sequences + states + batch * dim * math.ceil(length / CHUNK) * nstate * s
    return Traffic(1, read, written)


def _first(fn):
    """The output of a path that returns (out, last state)."""
    return lambda *inputs: fn(*inputs)[0]


def traffic_cases(batch: int = 2, dim: int = 256, L: int = 2048, N: int = 16) -> list[TrafficCase]:
    """selective_scan at a Mamba block's shape with D, z, delta_bias and softplus, forward only:
    the backward of the mamba_ssm-style loop costs O(L²) bytes (each step's slice of the
    (batch, dim, L, N) tensors gets a zero-filled full-size gradient) and minutes to count."""
    itemsize = 4
    loop = _first(lambda *a: selective_scan_mamba_style(*a, delta_softplus=True))
    literal = lambda *a: selective_scan_reference(*a, delta_softplus=True)  # noqa: E731
    return [TrafficCase(op="selective_scan", shape=f"batch={batch} dim={dim} L={L} N={N} G=1",
                 dtype=torch.float32,
                 make_inputs=functools.partial(make_inputs, batch, dim, L, N,
                                               dtype=torch.float32),
                 eager_paths={"mamba_style_loop": loop, "reference": literal},
                 fused=fused_traffic(batch, dim, L, N, 1, itemsize),
                 minimum=minimum_traffic(batch, dim, L, N, 1, itemsize),
                 directions=("fwd",))]
