"""Depthwise causal 1-D convolution of the Mamba block and its one-step form: reference, fast
(torch) path, Triton kernels, and the ``causal_conv1d`` CUDA package when it is installed."""
from .module import CausalConv1d
from .op import CausalConv1dFunction, causal_conv1d, causal_conv1d_update
from .reference import causal_conv1d_reference, causal_conv1d_update_reference

__all__ = ["CausalConv1d", "CausalConv1dFunction", "causal_conv1d", "causal_conv1d_reference",
           "causal_conv1d_update", "causal_conv1d_update_reference"]
