"""Depthwise causal 1-D convolution of the Mamba block (and its one-step form): reference, torch
path, and the ``causal_conv1d`` CUDA package on the GPU path when it is installed."""
from .op import causal_conv1d, causal_conv1d_update
from .reference import causal_conv1d_reference, causal_conv1d_update_reference

__all__ = ["causal_conv1d", "causal_conv1d_reference", "causal_conv1d_update",
           "causal_conv1d_update_reference"]
