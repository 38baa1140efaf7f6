"""Cost model of causal_conv1d: the traffic of its Triton kernels, of the ``causal_conv1d``
package's forward, and the minimum any implementation must move (``{"fwd": Traffic, "bwd":
Traffic}``), and its case for the traffic table (``python -m bench.traffic``)."""
from __future__ import annotations

import functools
import math

import torch

from ..cost import Traffic, TrafficCase
from .inputs import make_inputs
from .op import causal_conv1d
from .reference import causal_conv1d_reference

# causal_conv1d: x, out, grad_out, grad_x (batch, dim, L) in x's dtype (s bytes an element);
# weight (dim, W) and bias (dim,) in fp32, as the table's case and kernels.Mamba in fp32 hold them
# (weights of another dtype add their conversion to fp32, dim·(W + 1) elements, each way).
FP32 = 4


def fused_traffic(batch: int, dim: int, length: int, width: int, itemsize: int,
                  channel_last: bool = False) -> dict[str, Traffic]:
    """Traffic of the causal_conv1d Triton kernels, with a bias and silu (s = ``itemsize``).

    Forward, one launch: reads x once (B·dim·L·s; the W − 1 steps before each tile are its
    neighbour's, from L2), weight and bias (dim·(W + 1)·4); writes out once (B·dim·L·s).

    Backward, the kernel and one sum: the kernel reads x and grad_out once (2·B·dim·L·s; the
    shifted re-reads and the recomputed pre-activations come from L1/L2), weight and bias, and
    writes grad_x (B·dim·L·s) and its per-program partial sums of grad_weight and grad_bias
    (B·⌈L / BLOCK_T⌉·(W + 1)·dim·4); the sum over programs reads them and writes grad_weight and
    grad_bias (dim·(W + 1)·4). BLOCK_T is the tile's time extent for x's layout
    (``triton_kernels.launch_config(channel_last, backward=True)``)."""
    from .triton_kernels import launch_config

    sequence = batch * dim * length * itemsize  # each of x, out, grad_out, grad_x
    parameters = dim * (width + 1) * FP32  # weight and bias
    time_blocks = math.ceil(length / launch_config(channel_last, backward=True).constexprs["BLOCK_T"])
    partials = batch * time_blocks * (width + 1) * dim * FP32
    kernel = Traffic(launches=1, bytes_read=2 * sequence + parameters,
                     bytes_written=sequence + partials)
    reduction = Traffic(launches=1, bytes_read=partials, bytes_written=parameters)
    return {"fwd": Traffic(launches=1, bytes_read=sequence + parameters, bytes_written=sequence),
            "bwd": kernel + reduction}


def minimum_traffic(batch: int, dim: int, length: int, width: int, itemsize: int
                    ) -> dict[str, Traffic]:
    """The fewest bytes causal_conv1d (with a bias) can move, one launch each way: forward reads
    x, weight and bias once and writes out once; backward reads x, grad_out, weight and bias once
    and writes grad_x, grad_weight and grad_bias once (the pre-activation is recomputed)."""
    sequence = batch * dim * length * itemsize
    parameters = dim * (width + 1) * FP32
    return {"fwd": Traffic(launches=1, bytes_read=sequence + parameters, bytes_written=sequence),
            "bwd": Traffic(launches=1, bytes_read=2 * sequence + parameters,
                           bytes_written=sequence + parameters)}


def package_traffic(batch: int, dim: int, length: int, width: int, itemsize: int) -> Traffic:
    """The ``causal_conv1d`` package's forward: reads x, weight and bias, writes out, one launch
    (weight and bias in x's dtype, ``itemsize`` bytes an element)."""
    return Traffic(1, batch * dim * length * itemsize + dim * (width + 1) * itemsize,
                   batch * dim * length * itemsize)


def traffic_cases(batch: int = 2, dim: int = 512, length: int = 2048, width: int = 4
                  ) -> list[TrafficCase]:
    """causal_conv1d at the Mamba block's shape (d_inner = 512, d_conv = 4), fp32, with a bias
    and silu, forward and backward."""
    itemsize = FP32
    return [TrafficCase(
        op="causal_conv1d", shape=f"batch={batch} dim={dim} L={length} W={width}",
        dtype=torch.float32,
        make_inputs=functools.partial(make_inputs, batch, dim, length, width, dtype=torch.float32,
                                      requires_grad=True),
        eager_paths={"reference": functools.partial(causal_conv1d_reference, activation="silu"),
                     "fast": functools.partial(causal_conv1d, activation="silu", backend="fast")},
        fused=fused_traffic(batch, dim, length, width, itemsize),
        minimum=minimum_traffic(batch, dim, length, width, itemsize))]
