"""Health probe of a stage-1 renderer on held-out procedural clips: can it reproduce its source,
does it beat copying the source, is it still warping, and does it show the mouth?

    python -m tools.probe_renderer CHECKPOINT [--clips 3] [--frames 100]

For each clip, frame 0 is the source and every frame (frame 0 included) is rendered from the
motion of the true frame. Prints the means over clips of:

- ``self_l1``: L1 of frame 0 rendered from its own motion (the trivial case; a healthy renderer
  is far below ``copy_l1``);
- ``l1`` and ``copy_l1``: L1 of frames 1.. against the truth, for the renderer and for the source
  copied to every frame;
- ``mask``: the mean occlusion mask (near 0: the renderer has stopped using the warp);
- ``sync_reconstruction`` and ``sync_truth``: :func:`mim.sync.sync_correlation` of the rendered
  and of the true frames with the clip's audio (how much lip motion the renderer shows, and the
  ceiling).
"""
from __future__ import annotations

import argparse
import json
from typing import Dict

import numpy as np
import torch

from mim.data import SyntheticTalkingHeads
from mim.models import Renderer
from mim.sync import sync_correlation


@torch.no_grad()
def probe(renderer: Renderer, clips) -> Dict[str, float]:
    was_training = renderer.training
    renderer.eval()
    rows = []
    window = renderer.config.render_window
    for index in range(len(clips)):
        clip = clips[index]
        frames = clip["frames"]
        if frames.shape[0] < 2:
            raise ValueError(f"clip {index} has {frames.shape[0]} frame(s); the probe needs 2 or more")
        state = renderer.encode_source(frames[:1])
        motion = renderer.encode_motion(frames[None])
        outputs = [renderer.render(state, motion[:, s:s + window], window=window, return_aux=True)
                   for s in range(0, motion.shape[1], window)]
        pred = torch.cat([frames_[0] for frames_, _ in outputs]).clamp(0, 1)
        mask = torch.cat([aux["mask"].flatten() for _, aux in outputs])
        rows.append({
            "self_l1": float((pred[0] - frames[0]).abs().mean()),
            "l1": float((pred[1:] - frames[1:]).abs().mean()),
            "copy_l1": float((frames[1:] - frames[:1]).abs().mean()),
            "mask": float(mask.mean()),
            "sync_reconstruction": sync_correlation(pred, clip["audio"], clip["sample_rate"]),
            "sync_truth": sync_correlation(frames, clip["audio"], clip["sample_rate"]),
        })
    renderer.train(was_training)
    return {key: float(np.mean([row[key] for row in rows])) for key in rows[0]}


def main(argv=None) -> int:
    from mim.checkpoint import renderer_from_checkpoint

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--clips", type=int, default=3)
    parser.add_argument("--frames", type=int, default=100)
    args = parser.parse_args(argv)
    renderer = renderer_from_checkpoint(args.checkpoint)
    clips = SyntheticTalkingHeads(args.clips, num_frames=args.frames, size=renderer.config.image_size,
                                  seed=0, split="heldout")
    print(json.dumps(probe(renderer, clips), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
