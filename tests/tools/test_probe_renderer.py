"""tools.probe_renderer: the renderer health probe's figures are what they claim."""
import pytest
import torch

from mim.config import get_config
from mim.data import SyntheticTalkingHeads
from mim.models import Renderer
from mim.sync import sync_correlation
from tools.probe_renderer import probe


def test_probe_figures():
    torch.manual_seed(0)
    renderer = Renderer(get_config("tiny").renderer)
    clips = SyntheticTalkingHeads(2, num_frames=30, size=64, seed=0, split="heldout")
    result = probe(renderer, clips)
    assert renderer.training        # the mode is restored
    clip = clips[0]
    # a fresh renderer warps by identity with the mask head's bias of 2: mask = sigmoid(2)
    assert result["mask"] == pytest.approx(torch.sigmoid(torch.tensor(2.0)).item(), abs=1e-5)
    expected_truth = (sync_correlation(clip["frames"], clip["audio"])
                      + sync_correlation(clips[1]["frames"], clips[1]["audio"])) / 2
    assert result["sync_truth"] == pytest.approx(expected_truth)
    copy = sum(float((c["frames"][1:] - c["frames"][:1]).abs().mean()) for c in (clips[0], clips[1])) / 2
    assert result["copy_l1"] == pytest.approx(copy)
    assert 0 < result["self_l1"] and 0 < result["l1"]
    with pytest.raises(ValueError, match="2 or more"):
        probe(renderer, [{"frames": clip["frames"][:1], "audio": clip["audio"], "sample_rate": 16000}])
