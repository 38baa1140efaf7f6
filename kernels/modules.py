"""Thin ``nn.Module`` wrappers: shapes and settings only, the math lives in the ops."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .deviation_adanorm import DeviationAdaNorm  # noqa: F401
from .grid_sample_3d import GridSample3d  # noqa: F401
from .region_softmax_warp import RegionSoftmaxWarp  # noqa: F401


