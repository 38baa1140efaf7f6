"""Training from shards: stage 1 and stage 2 stream them, resume continues the stream exactly,
stage 2's streamed inputs equal what encode_clips gives, and 2 torchrun ranks read disjoint
shards."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from mim.checkpoint import latest_checkpoint, read_metadata, save_checkpoint
from mim.cli import main
from mim.config import config_to_dict, get_config, save_config
from mim.data import ShardClips, expand_shards
from mim.evaluate import evaluate_reconstruction
from mim.models import Renderer
from mim.train.loop import TrainerBase
from mim.train.stage1 import Stage1Trainer, train_stage1
from mim.train.stage2 import Stage2Trainer, encode_clips, load_stage1_renderer, train_stage2

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_stream import write_shards  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def stage1_config():
    config = get_config("tiny")
    t = config.train
    t.heldout_clips, t.frames_per_clip, t.batch_size, t.num_driving = 2, 6, 2, 2
    t.log_every, t.checkpoint_every, t.lr_schedule = 1, 2, "constant"
    config.loss.adversarial_start_step = 3      # the GAN from the last step: cheap, but exercised
    return config


def stage2_config():
    config = get_config("tiny")
    m, t = config.motion, config.stage2
    m.window, m.layers, m.sample_steps = 8, 1, 2
    t.heldout_clips, t.frames_per_clip, t.batch_size = 1, 12, 2
    t.log_every, t.checkpoint_every, t.lr_schedule = 1, 2, "constant"
    return config


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """5 shards of 2 segments, 12 frames at 64² (segment 1 has no audio)."""
    folder = str(tmp_path_factory.mktemp("shards"))
    urls, truth = write_shards(folder, shards=5, per_shard=2, frames=12, size=64)
    return folder, urls, truth


@pytest.fixture
def recorded(monkeypatch):
    """Every streamed batch a trainer takes: (step, micro, [(url, key, frame indices)])."""
    seen = []
    original = TrainerBase.stream_batch

    def recording(self, step, micro):
        batch = original(self, step, micro)
        where = batch["driving_start"] if "driving_start" in batch else batch["start"]
        seen.append((step, micro, [(u, k, int(w)) for u, k, w in zip(batch["url"], batch["key"], where)]))
        return batch

    monkeypatch.setattr(TrainerBase, "stream_batch", recording)
    return seen


def parameters(out):
    return {k: v for k, v in load_file(latest_checkpoint(os.path.join(out, "checkpoints"))).items()
            if not k.startswith("rng.")}


def assert_bitwise(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_stage1_resume_continues_the_stream(shards, tmp_path, recorded):
    folder, urls, _ = shards
    config = stage1_config()
    full, split = str(tmp_path / "full"), str(tmp_path / "split")
    train_stage1(config, full, steps=4, data=folder, progress=False, evaluate=False)
    uninterrupted = list(recorded)
    recorded.clear()
    train_stage1(config, split, steps=2, data=folder, progress=False, evaluate=False)
    train_stage1(config, split, steps=4, data=folder, progress=False, evaluate=False, resume=True)
    assert [s for s, _, _ in uninterrupted] == [0, 1, 2, 3]
    assert recorded == uninterrupted
    assert_bitwise(parameters(full), parameters(split))
    drawn = [item for _, _, items in uninterrupted for item in items]
    assert all(url in urls[:-1] for url, _, _ in drawn), "the last shard is held out"
    meta = read_metadata(latest_checkpoint(os.path.join(split, "checkpoints")))
    assert meta["extra"]["stream"] == {"batches": 4, "shards": 4, "seed": 0, "world_size": 1, "workers": 2,
                                       "batch_size": 2}
    with open(os.path.join(full, "log.csv")) as f:
        assert [line.split(",")[0] for line in f.read().splitlines()[1:]] == ["1", "2", "3", "4"]


def test_stage1_stream_refuses_too_many_ranks_and_overlapping_heldout(shards, tmp_path):
    folder, urls, _ = shards
    config = stage1_config()
    with pytest.raises(ValueError, match="held-out shards are also training shards: .*shard-000004.tar"):
        Stage1Trainer(config, str(tmp_path / "a"), data=folder, heldout=urls[-1], progress=False)
    with pytest.raises(ValueError, match="heldout names held-out shards; it applies only when data names shards"):
        Stage1Trainer(config, str(tmp_path / "b"), heldout=urls[-1], progress=False)
    config.train.heldout_clips = 1
    with pytest.raises(ValueError, match="at least 2 are needed"):
        Stage1Trainer(config, str(tmp_path / "c"), data=urls[0], progress=False)
    trainer = Stage1Trainer(config, str(tmp_path / "d"), data=os.path.join(folder, "shard-00000{0..2}.tar"),
                            heldout=urls[4], workers=5, progress=False)
    assert trainer.stream_workers == 3 and len(trainer.stream.urls) == 3 and len(trainer.heldout_clips) == 1
    # the held-out segment's frames 1..5 are scored
    assert evaluate_reconstruction(trainer.renderer, trainer.heldout_clips)["frames"] == 5
    source, driving, _, _ = trainer.batch(0, 0)
    assert source.shape == (2, 3, 64, 64) and driving.shape == (2, 2, 3, 64, 64)
    with pytest.raises(RuntimeError, match="stream batches are read in order: batch 2 asked for, 1 is next"):
        trainer.batch(2, 0)
    trainer.close_stream()


@pytest.fixture(scope="module")
def stage1_checkpoint(tmp_path_factory):
    config = stage2_config()
    torch.manual_seed(0)
    path = str(tmp_path_factory.mktemp("s1") / "stage1.safetensors")
    save_checkpoint(path, kind="stage1", step=0, config=config_to_dict(config),
                    modules={"renderer": Renderer(config.renderer)})
    return path


def test_stage2_streamed_inputs_are_encode_clips_inputs(shards, stage1_checkpoint, tmp_path):
    folder, urls, _ = shards
    renderer, config = load_stage1_renderer(stage1_checkpoint, stage2_config())
    trainer = Stage2Trainer(config, renderer, str(tmp_path), data=folder, workers=0, progress=False)
    assert trainer.clips is None
    clips = ShardClips(urls[:-1], 64)      # the training shards' segments, whole, in list order
    by_key = {clips[i]["key"]: encode_clips(renderer, [clips[i]], config, "cpu")[0]
              for i in range(len(clips)) if len(clips[i]["audio"])}
    assert "talks_v1_mp4-0000" not in by_key and len(by_key) == 7
    # the statistics: the first window of each usable segment
    every = torch.cat([clip["motion"][:8] for clip in by_key.values()])
    torch.testing.assert_close(trainer.generator.motion_mean, every.mean(0), rtol=1e-5, atol=1e-6)
    for step in range(3):
        raw = trainer.stream_batch(step, 0)
        inputs = trainer.encode_stream_batch(raw)
        for i, (key, start) in enumerate(zip(raw["key"], raw["start"].tolist())):
            clip = by_key[key]
            torch.testing.assert_close(inputs["motion"][i], clip["motion"][start:start + 8], rtol=1e-5, atol=1e-6)
            expected = torch.zeros(4, config.renderer.motion_dim)
            if start:
                expected[4 - min(start, 4):] = trainer.generator.normalize(clip["motion"][max(0, start - 4):start])
            torch.testing.assert_close(inputs["prev_motion"][i], expected, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(inputs["appearance"][i], clip["appearance"], rtol=1e-5, atol=1e-6)
            assert torch.equal(inputs["local"][i], clip["local"][start:start + 8])
            length = int(inputs["mel_lengths"][i])
            assert torch.equal(inputs["mel"][i, :length], clip["mel"])


def test_stage2_resume_continues_the_stream(shards, stage1_checkpoint, tmp_path, recorded):
    folder, _, _ = shards
    config = stage2_config()
    full, split = str(tmp_path / "full"), str(tmp_path / "split")
    train_stage2(stage1_checkpoint, full, 4, config=config, data=folder, progress=False)
    uninterrupted = list(recorded)
    recorded.clear()
    train_stage2(stage1_checkpoint, split, 2, config=config, data=folder, progress=False)
    train_stage2(stage1_checkpoint, split, 4, config=config, data=folder, progress=False, resume=True)
    assert len(uninterrupted) == 4 and recorded == uninterrupted
    assert "talks_v1_mp4-0000" not in {k for _, _, items in uninterrupted for _, k, _ in items}
    assert_bitwise(parameters(full), parameters(split))


def test_cli_trains_both_stages_from_shards(shards, tmp_path):
    folder, _, _ = shards
    config = stage2_config()
    config.train.heldout_clips, config.train.frames_per_clip, config.train.batch_size = 1, 6, 2
    path = str(tmp_path / "config.yaml")
    save_config(config, path)
    one = str(tmp_path / "one")
    assert main(["train", "stage1", "--config", path, "--data", os.path.join(folder, "*.tar"), "--steps", "1",
                 "--out", one, "--no-progress", "--device", "cpu"]) == 0
    checkpoint = latest_checkpoint(os.path.join(one, "checkpoints"))
    scores = str(tmp_path / "scores.json")
    assert main(["evaluate", "--checkpoint", checkpoint, "--data", folder, "--json", scores]) == 0
    assert json.load(open(scores))["frames"] == 5      # the held-out shard's first segment, frames 1..5
    two = str(tmp_path / "two")
    assert main(["train", "stage2", "--stage1", checkpoint, "--config", path, "--data",
                 os.path.join(folder, "shard-{000000..000004}.tar"), "--steps", "1", "--out", two,
                 "--no-progress", "--device", "cpu"]) == 0
    assert read_metadata(latest_checkpoint(os.path.join(two, "checkpoints")))["extra"]["stream"]["batches"] == 1


RANK_SCRIPT = """
import json, sys
from mim.config import load_config
from mim.data import Stage1Stream, expand_shards, shard_loader
from mim.train.distributed import init_distributed
from mim.train.loop import TrainerBase
from mim.train.stage1 import train_stage1

data, config, out = sys.argv[1:4]
ctx = init_distributed("cpu")
stream = Stage1Stream(expand_shards(data), 2, 64, pairs_per_segment=1, rank=ctx.rank, world_size=ctx.world_size,
                      epochs=1)
read = [[u, k] for batch in shard_loader(stream, 2) for u, k in zip(batch["url"], batch["key"])]
trained = []
original = TrainerBase.stream_batch
def recording(self, step, micro):
    batch = original(self, step, micro)
    trained.extend([u, k] for u, k in zip(batch["url"], batch["key"]))
    return batch
TrainerBase.stream_batch = recording
train_stage1(load_config(config), out, steps=2, data=data, progress=False, evaluate=False, device="cpu")
with open(f"{out}/rank{ctx.rank}.json", "w") as f:
    json.dump({"read": read, "trained": trained}, f)
"""


def test_torchrun_two_ranks_read_disjoint_shards(shards, tmp_path):
    folder, urls, truth = shards
    config = stage1_config()
    path, script, out = str(tmp_path / "config.yaml"), str(tmp_path / "ranks.py"), str(tmp_path / "run")
    save_config(config, path)
    with open(script, "w") as f:
        f.write(RANK_SCRIPT)
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", script,
           folder, path, out]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.load(open(os.path.join(out, f"rank{r}.json"))) for r in range(2)]
    read = [{tuple(x) for x in r["read"]} for r in ranks]
    # one epoch, one pair per segment: every segment exactly once, each shard on one rank only
    assert sum(len(r["read"]) for r in ranks) == len(truth)
    assert sorted(k for r in read for _, k in r) == sorted(truth)
    assert not {u for u, _ in read[0]} & {u for u, _ in read[1]}
    assert {u for r in read for u, _ in r} == set(urls)
    # training: 4 shards (the last is held out), 2 per rank, 2 steps of 1 pair per rank
    trained = [{u for u, _ in r["trained"]} for r in ranks]
    assert all(len(r["trained"]) == 2 for r in ranks)
    assert not trained[0] & trained[1] and urls[-1] not in trained[0] | trained[1]
    meta = read_metadata(latest_checkpoint(os.path.join(out, "checkpoints")))
    assert meta["step"] == 2 and meta["extra"]["stream"]["world_size"] == 2
    assert meta["extra"]["stream"]["workers"] == 2
    assert expand_shards(folder) == urls
