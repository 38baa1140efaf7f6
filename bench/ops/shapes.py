"""The shapes the model passes to each op, derived from ``mim.config``'s tiny and base configs, and
the ``mamba_ssm`` benchmark's shape.

Renderer ops, per config (``Renderer.render_window``):

- **render window**: one clip's window of ``renderer.render_window`` frames (what ``mim animate``
  and ``mim profile`` run): the DIT's ``deviation_adanorm`` gets v (1, window + 1, motion_dim)
  and R = ``regions``; the warp runs once for the clip, B = window frames sharing one F_id
  (1, feature_channels, depth_layers, volume_size, volume_size); ``grid_sample_3d`` is the warp's
  sampling step, F_id expanded to those frames (N = window), one point per voxel.
- **stage-1 step**: ``train.batch_size`` clips of ``train.num_driving`` driving frames:
  ``deviation_adanorm`` over all clips at once, the warp (and its sampling) once per clip
  (B = num_driving).

Mamba ops, per config (``MotionGenerator``'s Mamba blocks, d_model = ``motion.audio_dim``, with
``kernels.Mamba``'s own d_inner, d_conv and d_state):

- **Mamba-g 1 s**: the whole clip's log-mel, one clip of one second (``mim.audio.MEL_FPS``
  frames);
- **Mamba-l 1 s**: one slice per video frame of that second (``VIDEO_FPS`` slices) of
  (2·local_context + 1) frames' mel (``MEL_FPS / VIDEO_FPS`` each);
- **Mamba-g stage-2 step** and **Mamba-l stage-2 step**: ``stage2.batch_size`` clips of
  ``stage2.frames_per_clip`` frames (Mamba-g) and of ``motion.window`` frames' slices (Mamba-l);
- **step**: one streaming token of a block (``selective_state_update``), batch 1.

mamba_ssm's benchmark shape: batch 2, dim 256 and 2048, N 16, L 2048 and 8192 (width 4 for the
conv; the state update has no L).
"""
from __future__ import annotations

from typing import Dict, List

MAMBA_SSM_BATCH, MAMBA_SSM_DIMS, MAMBA_SSM_LENGTHS, MAMBA_SSM_NSTATE = 2, (256, 2048), (2048, 8192), 16
CONFIGS = ("tiny", "base")


def renderer_shapes(config_name: str) -> List[Dict]:
    """[{"label", "clips", "frames", "feature_channels", "depth", "size", "regions",
    "motion_dim"}] for the render window and the stage-1 step of ``config_name``."""
    from mim.config import get_config

    config = get_config(config_name)
    r, train = config.renderer, config.train
    common = {"feature_channels": r.feature_channels, "depth": r.depth_layers,
              "size": r.volume_size, "regions": r.regions, "motion_dim": r.motion_dim}
    return [{"label": f"{config_name} render window", "clips": 1, "frames": r.render_window, **common},
            {"label": f"{config_name} stage-1 step", "clips": train.batch_size,
             "frames": train.num_driving, **common}]


def mamba_block(config_name: str) -> Dict[str, int]:
    """{"dim": d_inner, "nstate": d_state, "width": d_conv} of the config's Mamba blocks, read
    from a ``kernels.Mamba`` built as ``MotionGenerator`` builds it."""
    from kernels import Mamba
    from mim.config import get_config

    motion = get_config(config_name).motion
    block = Mamba(motion.audio_dim, d_state=motion.d_state)
    return {"dim": block.d_inner, "nstate": block.d_state, "width": block.d_conv}


def mamba_sequences(config_name: str) -> List[Dict]:
    """[{"label", "batch", "length"}]: the sequences the config's Mamba-g and Mamba-l read."""
    from mim.audio import MEL_FPS, VIDEO_FPS
    from mim.config import get_config

    config = get_config(config_name)
    motion, stage2 = config.motion, config.stage2
    per_frame = MEL_FPS // VIDEO_FPS
    local = per_frame * (2 * motion.local_context + 1)
    return [{"label": f"{config_name} Mamba-g 1 s", "batch": 1, "length": MEL_FPS},
            {"label": f"{config_name} Mamba-l 1 s", "batch": VIDEO_FPS, "length": local},
            {"label": f"{config_name} Mamba-g stage-2 step", "batch": stage2.batch_size,
             "length": stage2.frames_per_clip * per_frame},
            {"label": f"{config_name} Mamba-l stage-2 step",
             "batch": stage2.batch_size * motion.window, "length": local}]


def mamba_ssm_sequences() -> List[Dict]:
    """mamba_ssm's benchmark shapes: [{"label", "batch", "dim", "length", "nstate"}]."""
    return [{"label": f"mamba_ssm dim={dim} L={length}", "batch": MAMBA_SSM_BATCH, "dim": dim,
             "length": length, "nstate": MAMBA_SSM_NSTATE}
            for dim in MAMBA_SSM_DIMS for length in MAMBA_SSM_LENGTHS]


CPU_MAMBA_SSM = {"label": "mamba_ssm scaled: dim=256 L=512", "batch": MAMBA_SSM_BATCH, "dim": 256,
                 "length": 512, "nstate": MAMBA_SSM_NSTATE}
"""The CPU stand-in for mamba_ssm's shape: its batch, smaller dim and L a quarter of 2048."""
MAMBA_SSM_WIDTH = 4


def sequence_shapes(device: str) -> List[Dict]:
    """[{"label", "batch", "dim", "length", "nstate", "width"}] of the selective scan and the
    causal conv: each config's Mamba-g/Mamba-l sequences and mamba_ssm's shapes on CUDA; on CPU,
    tiny's sequences and ``CPU_MAMBA_SSM``."""
    result = []
    for config in (("tiny",) if device == "cpu" else CONFIGS):
        block = mamba_block(config)
        result += [{**sequence, **block} for sequence in mamba_sequences(config)]
    others = [CPU_MAMBA_SSM] if device == "cpu" else mamba_ssm_sequences()
    return result + [{**other, "width": MAMBA_SSM_WIDTH} for other in others]
