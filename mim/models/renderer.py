"""The stage-1 renderer: source encoding once, then any number of frames from motion features."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ContextManager, Dict, Optional

import torch
from torch import nn

from kernels import RegionSoftmaxWarp
from mim.config import Config, RendererConfig
from mim.models.dit import DeviationImageTransformer
from mim.models.encoders import AppearanceExtractor, ImageEncoder, MotionEncoder
from mim.models.lmdd import ImageDecoder, LatentMotionDeviationDecoder

__all__ = ["RENDER_STAGES", "Renderer", "SourceState", "record_stage"]

# The steps of one render window, in order (Renderer.render_window runs each inside stage(name)).
RENDER_STAGES = ("DIT", "LMDD", "warp", "decoder")


def record_stage(name: str) -> ContextManager:
    """The default ``stage`` of :meth:`Renderer.render_window`: a ``torch.profiler`` range
    "mim.<name>", visible in a trace when a profiler runs; otherwise about 9 µs per stage on
    this project's CPU (36 µs per window, against 250 ms for a 16-frame window of ``tiny``)."""
    return torch.profiler.record_function("mim." + name)


@dataclass
class SourceState:
    """What rendering needs from the source, computed once: F_id (B, C, S_d, H, W), F_A
    (B, appearance_dim) and the source's motion feature M_0 (B, motion_dim)."""

    feature: torch.Tensor
    appearance: torch.Tensor
    motion: torch.Tensor

    @property
    def batch(self) -> int:
        return self.feature.shape[0]


class Renderer(nn.Module):
    """Stage 1 (paper §III-A, Figs. 1–2): E, the appearance extractor, the motion encoder, the DIT,
    the LMDD, ``region_softmax_warp`` and the decoder U.

    ``backend`` picks the kernels' path for the DIT's ``deviation_adanorm`` and the warp
    ("auto", "reference", "fast", "triton"; see ``kernels._dispatch``). ``motion_film`` adds the
    recipe's motion FiLM to the decoder (``recipe.decoder_motion_film`` of the config, not in the
    paper; see :class:`mim.models.lmdd.ImageDecoder`).

    Example:
        >>> from mim.config import get_config
        >>> renderer = Renderer(get_config("tiny").renderer).eval()
        >>> source, driving = torch.rand(1, 3, 64, 64), torch.rand(1, 5, 3, 64, 64)
        >>> with torch.no_grad():
        ...     state = renderer.encode_source(source)
        ...     frames = renderer.render(state, renderer.encode_motion(driving))
        >>> frames.shape
        torch.Size([1, 5, 3, 64, 64])
    """

    def __init__(self, config: RendererConfig, backend: Optional[str] = None, motion_film: bool = False):
        super().__init__()
        config.validate()
        self.config = config
        self.motion_film = motion_film
        self.image_encoder = ImageEncoder(config)
        self.appearance_extractor = AppearanceExtractor(config)
        self.motion_encoder = MotionEncoder(config)
        self.dit = DeviationImageTransformer(config, backend=backend)
        self.lmdd = LatentMotionDeviationDecoder(config)
        self.warp = RegionSoftmaxWarp(beta=config.beta, learn_beta=config.learn_beta,
                                      padding_mode=config.padding_mode,
                                      align_corners=config.align_corners, backend=backend)
        self.decoder = ImageDecoder(config, motion_film=motion_film)

    @classmethod
    def from_config(cls, config: Config, backend: Optional[str] = None) -> "Renderer":
        """The renderer a whole config describes: its ``renderer`` section and the recipe's
        ``decoder_motion_film``."""
        return cls(config.renderer, backend=backend, motion_film=config.recipe.decoder_motion_film)

    def set_backend(self, backend: Optional[str]) -> None:
        self.dit.adanorm.backend = backend
        self.warp.backend = backend

    def check_frames(self, frames: torch.Tensor, name: str) -> None:
        size = self.config.image_size
        if not torch.is_tensor(frames) or frames.dim() < 4 or frames.shape[-3:] != (3, size, size):
            shape = tuple(frames.shape) if torch.is_tensor(frames) else type(frames).__name__
            raise ValueError(f"{name} must have shape (..., 3, {size}, {size}) (RGB at the config's "
                             f"image_size), got {shape}")
        if not frames.is_floating_point():
            raise TypeError(f"{name} must be a floating tensor in [0, 1], got {frames.dtype}")

    def encode_source(self, source: torch.Tensor) -> SourceState:
        """source (B, 3, S, S) → SourceState; do this once per portrait."""
        if not torch.is_tensor(source) or source.dim() != 4:
            shape = tuple(source.shape) if torch.is_tensor(source) else type(source).__name__
            raise ValueError(f"source must have shape (B, 3, S, S), got {shape}")
        self.check_frames(source, "source")
        return SourceState(feature=self.image_encoder(source),
                           appearance=self.appearance_extractor(source),
                           motion=self.motion_encoder(source))

    def encode_motion(self, frames: torch.Tensor) -> torch.Tensor:
        """frames (..., 3, S, S) → motion features M (..., motion_dim)."""
        self.check_frames(frames, "frames")
        lead = frames.shape[:-3]
        return self.motion_encoder(frames.reshape(-1, *frames.shape[-3:])).view(*lead, -1)

    def encode_volume(self, frames: torch.Tensor) -> torch.Tensor:
        """A frame's own F_id (the target features of the threshold mask loss L_pg)."""
        self.check_frames(frames, "frames")
        return self.image_encoder(frames)

    def render_window(self, state: SourceState, motion: torch.Tensor,
                      stage: Optional[Callable[[str], ContextManager]] = None,
                      warp: Optional[Callable[..., torch.Tensor]] = None) -> Dict[str, torch.Tensor]:
        """One DIT window: motion (B, N, motion_dim), attended over together with M_0 →
        {"frames" (B, N, 3, S, S), "warped" φ_r (B·N, C, S_d, H, W), "mask" (B·N, 1, S_d, H, W)}.

        The four steps run in order, each inside ``stage(name)`` for ``name`` in
        :data:`RENDER_STAGES` ("DIT", "LMDD", "warp", "decoder"): ``stage`` is a context-manager
        factory, by default :func:`record_stage` (a ``torch.profiler`` range "mim.<name>");
        ``mim.profile`` passes its ``StageRecorder``, which times or counts each one.

        F_id is shared by the frames of a clip: the LMDD gets it as a view when B == 1, and the
        warp is called once per clip when B > 1 and N > 1. ``warp`` replaces the warp module by
        ``warp(feature, logits, displacement, mask)``; F_id is then expanded to every frame
        (B·N, C, S_d, H, W) and warped in one call, with no branch on B or N, so that a trace
        (``mim.export``, which passes the reference math with its sampler) holds for any B and N.
        """
        stage = stage or record_stage
        b, n, _ = motion.shape
        feature = state.feature
        with stage("DIT"):
            deviation = self.dit(torch.cat([state.motion[:, None], motion], dim=1))   # (B, N, λ, dim)
            deviation = deviation.reshape(b * n, *deviation.shape[2:])
        with stage("LMDD"):
            if warp is not None:
                per_frame = feature[:, None].expand(b, n, *feature.shape[1:]).reshape(b * n, *feature.shape[1:])
            elif b > 1 or n == 1:
                per_frame = feature.repeat_interleave(n, dim=0)
            else:
                per_frame = feature.expand(n, *feature.shape[1:])
            logits, displacement, mask = self.lmdd(deviation, per_frame)
        # the warp's own math stays fp32 (its backends accumulate in fp32); its tensors are F_id's dtype
        with stage("warp"), torch.autocast(feature.device.type, enabled=False):
            logits, displacement, mask = (x.to(feature.dtype) for x in (logits, displacement, mask))
            if warp is not None:
                warped = warp(per_frame, logits, displacement, mask)
            elif n == 1 or b == 1:
                warped = self.warp(feature, logits, displacement, mask)
            else:  # one call per clip, so F_id is shared by its frames without copying
                warped = torch.cat([self.warp(feature[i:i + 1], logits[i * n:(i + 1) * n],
                                              displacement[i * n:(i + 1) * n], mask[i * n:(i + 1) * n])
                                    for i in range(b)])
        with stage("decoder"):
            if warp is not None:
                appearance = state.appearance[:, None].expand(b, n, state.appearance.shape[-1]).reshape(b * n, -1)
            else:
                appearance = state.appearance.repeat_interleave(n, dim=0)
            frames = self.decode(warped, appearance, motion.reshape(b * n, -1))
        return {"frames": frames.view(b, n, *frames.shape[1:]), "warped": warped, "mask": mask}

    def window_frames(self, feature: torch.Tensor, appearance: torch.Tensor,
                      source_motion: torch.Tensor, motion: torch.Tensor) -> torch.Tensor:
        """:meth:`render_window`'s frames (B, N, 3, S, S) from the tensors of a
        :class:`SourceState` (F_id, F_A, M_0) and a window's motion (B, N, motion_dim).

        Capturable (tensor arguments only, fixed shapes, no host read of a tensor value): the
        unit that ``mim animate --cuda-graphs`` captures once per window shape and replays, and
        that ``torch.compile(fullgraph=True)`` compiles without a graph break."""
        state = SourceState(feature=feature, appearance=appearance, motion=source_motion)
        return self.render_window(state, motion)["frames"]

    def decode(self, warped: torch.Tensor, appearance: torch.Tensor, motion: torch.Tensor) -> torch.Tensor:
        """The decoder U on φ_r with F_A and, with ``motion_film``, the driving motion features
        (K, motion_dim)."""
        return self.decoder(warped, appearance, motion if self.decoder.needs_motion else None)

    def render(self, state: SourceState, motion: torch.Tensor, window: Optional[int] = None,
               return_aux: bool = False, stage: Optional[Callable[[str], ContextManager]] = None):
        """Frames (B, N, 3, S, S) for motion features (B, N, motion_dim), in windows of
        ``window`` frames (default ``config.render_window``), each conditioned on the source's
        M_0 (eq. 2 measures deviations from it): :meth:`render_window` per window, with
        ``stage`` (see there). ``return_aux`` also returns the warped volumes
        (B·N, C, S_d, H, W) and occlusion masks, concatenated over windows."""
        dim = self.config.motion_dim
        if motion.dim() != 3 or motion.shape[0] != state.batch or motion.shape[2] != dim:
            raise ValueError(f"motion must have shape ({state.batch}, N, {dim}), got {tuple(motion.shape)}")
        window = window or self.config.render_window
        outputs = [self.render_window(state, motion[:, s:s + window], stage)
                   for s in range(0, motion.shape[1], window)]
        frames = torch.cat([o["frames"] for o in outputs], dim=1)
        if not return_aux:
            return frames
        if len(outputs) == 1:
            return frames, outputs[0]
        b = state.batch
        aux = {}
        for key in ("warped", "mask"):
            parts = [o[key].view(b, -1, *o[key].shape[1:]) for o in outputs]
            aux[key] = torch.cat(parts, dim=1).flatten(0, 1)
        return frames, aux

    def forward(self, source: torch.Tensor, driving: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Training forward: source (B, 3, S, S), driving (B, N, 3, S, S) → {"frames" (B, N, 3, S, S),
        "motion" (B, N, motion_dim), the driving frames' M, "warped" (B·N, C, S_d, H, W),
        "mask" (B·N, 1, S_d, H, W)}; all N frames in one window."""
        self.check_frames(driving, "driving")
        if driving.dim() != 5 or driving.shape[0] != source.shape[0]:
            raise ValueError(f"driving must have shape ({source.shape[0]}, N, 3, S, S) to match "
                             f"source, got {tuple(driving.shape)}")
        state = self.encode_source(source)
        motion = self.encode_motion(driving)
        frames, aux = self.render(state, motion, window=driving.shape[1], return_aux=True)
        return {"frames": frames, "motion": motion, **{k: v for k, v in aux.items() if k != "frames"}}
