"""mim.video_eval: the paper's metric table over (generated, truth) video pairs, and the
`mim evaluate --metrics` command around it."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mim.metrics import psnr, ssim
from mim.video_eval import (METRICS, VideoPair, evaluate_videos, folder_pairs, format_table,
                            parse_metrics)


def _pair(name, frames=6, size=32, noise=0.05, seed=0, **kw):
    g = torch.Generator().manual_seed(seed)
    truth = torch.rand(frames, 3, size, size, generator=g)
    fake = (truth + noise * torch.randn(truth.shape, generator=g)).clamp(0, 1)
    return VideoPair(name, fake, truth, **kw)


def test_parse_metrics():
    assert parse_metrics("all") == list(METRICS)
    assert parse_metrics("ssim, PSNR,lse-c") == ["psnr", "ssim", "lse"]
    with pytest.raises(ValueError, match="unknown metric.*bogus"):
        parse_metrics("psnr,bogus")
    with pytest.raises(ValueError, match="--metrics"):
        parse_metrics(" ")


def test_frame_means_equal_the_metrics_over_all_frames():
    pairs = [_pair("a", frames=5, seed=1), _pair("b", frames=40, seed=2)]
    result = evaluate_videos(iter(pairs), ["psnr", "ssim"])
    fakes = torch.cat([p.generated for p in pairs])
    truths = torch.cat([p.truth for p in pairs])
    assert result["frames"] == 45 and result["videos"] == 2 and result["errors"] == {}
    assert result["generated"]["psnr"] == pytest.approx(float(psnr(fakes, truths).double().mean()), rel=1e-6)
    assert result["generated"]["ssim"] == pytest.approx(float(ssim(fakes, truths).double().mean()), rel=1e-6)


def test_lengths_and_sizes_are_aligned():
    pair = _pair("a", frames=8, size=32)
    longer = VideoPair("a", torch.cat([pair.truth, pair.truth[:3]]), pair.truth)
    result = evaluate_videos([longer], ["psnr"])
    assert result["trimmed_frames"] == 3 and result["frames"] == 8
    assert result["generated"]["psnr"] > 90            # identical after the cut
    smooth = torch.nn.functional.interpolate(torch.rand(3, 3, 4, 4), size=(32, 32), mode="bilinear")
    bigger = VideoPair("b", torch.nn.functional.interpolate(smooth, size=(64, 64), mode="bilinear"), smooth)
    assert evaluate_videos([bigger], ["psnr"])["generated"]["psnr"] > 35      # resized to the truth's size
    with pytest.raises(ValueError, match="bad: generated must be a \\(T, 3, H, W\\)"):
        evaluate_videos([VideoPair("bad", torch.rand(4, 32, 32), pair.truth)], ["psnr"])
    with pytest.raises(ValueError, match="no videos"):
        evaluate_videos([], ["psnr"])


def test_missing_weights_are_named_and_the_rest_still_run(tmp_path):
    result = evaluate_videos([_pair("a", frames=20)], list(METRICS), weights_dir=tmp_path)
    errors = result["errors"]
    for metric in ("fid", "fvd", "lse", "headpose", "lpips"):
        assert metric in errors and str(tmp_path) in errors[metric], (metric, errors.get(metric))
    assert "lpips_vgg.safetensors" in errors["lpips"]
    assert "div+tgd" in errors and "keypoints" in errors["div+tgd"]
    assert set(result["generated"]) == {"psnr", "ssim"}
    table = format_table(result)
    assert "| generated |" in table and "n/a" in table
    assert table.count("not computed:") == len(errors)


def test_format_table_columns_and_rows():
    result = {"generated": {"psnr": 30.123456, "lse_d": 7.5, "lse_c": 2.0}, "truth": {"lse_d": 6.0,
              "lse_c": 3.0}, "errors": {"fid": "fid: no file"}, "videos": 2, "frames": 50}
    table = format_table(result, ["psnr", "fid", "lse"])
    head, _, gen, truth = table.splitlines()[:4]
    assert head == "| | PSNR ↑ | FID ↓ | LSE-D ↓ | LSE-C ↑ |"
    assert gen == "| generated | 30.12 | n/a | 7.5 | 2 |"
    assert truth == "| ground truth | - | n/a | 6 | 3 |"
    assert "not computed: fid: no file" in table


def test_folder_pairs_match_by_name(tmp_path):
    from mim.io import write_video

    gen, truth = tmp_path / "gen", tmp_path / "truth"
    gen.mkdir(), truth.mkdir()
    frames = torch.rand(4, 3, 32, 32)
    audio = np.zeros(int(16000 * 4 / 25), dtype=np.float32)
    write_video(str(truth / "a.mp4"), frames, fps=25, audio=audio)
    write_video(str(gen / "a.mp4"), frames, fps=25)
    names, pairs = folder_pairs(gen, truth)
    pair = next(pairs)
    assert names == ["a"] and pair.generated.shape == pair.truth.shape == (4, 3, 32, 32)
    assert pair.audio is not None and pair.audio.shape[0] >= 2560    # AAC may pad a frame
    write_video(str(gen / "b.mp4"), frames, fps=25)
    with pytest.raises(ValueError, match="no namesake in --truth: b"):
        folder_pairs(gen, truth)
    with pytest.raises(ValueError, match="--generated .* is not a folder"):
        folder_pairs(tmp_path / "nope", truth)


def test_network_metrics_are_fed_and_accumulated(tmp_path, monkeypatch):
    """FID, FVD and LSE as this module drives them: the networks are found in the weights folder
    by name and fed every frame (FID), the non-overlapping 16-frame clips as (N, 3, 16, H, W)
    (FVD; a shorter tail unscored) and each video with its audio (LSE, both rows). The networks
    here are stand-ins with cheap features (tests/mim/test_metric_nets.py runs the real
    architectures end to end): identical videos give FID and FVD 0, a brighter one more."""
    import mim.metric_nets as nets

    fed = {"fid": [], "fvd": [], "lse": []}
    monkeypatch.setattr(nets, "load_metric_network", lambda metric, path: torch.nn.Identity())

    def inception(net, frames):
        fed["fid"].append(tuple(frames.shape))
        return frames.mean(dim=(2, 3)).double().numpy()

    def i3d(net, clips):
        fed["fvd"].append(tuple(clips.shape))
        return clips.mean(dim=(2, 3, 4)).double().numpy()

    def syncnet(net, frames, audio, rate):
        fed["lse"].append((frames.shape[0], audio.shape[0], rate))
        video = frames.mean(dim=(2, 3)).double().numpy()
        return video, video + 0.5

    monkeypatch.setattr(nets, "inception_features", inception)
    monkeypatch.setattr(nets, "i3d_features", i3d)
    monkeypatch.setattr(nets, "syncnet_embeddings", syncnet)
    for metric in ("fid", "fvd", "lse"):
        (tmp_path / nets.METRIC_WEIGHTS[metric][-1]).write_bytes(b"stand-in")
    frames = 2 * nets.I3D_CLIP_FRAMES + 5
    pairs = []
    for index in range(2):
        video = _pair(f"v{index}", frames=frames, size=8, seed=index).truth
        pairs.append(VideoPair(f"v{index}", video.clone(), video, np.zeros(frames * 640, np.float32), 16000))
    result = evaluate_videos(pairs, ["fid", "fvd", "lse"], weights_dir=tmp_path)
    assert result["errors"] == {}
    gen, truth = result["generated"], result["truth"]
    assert fed["fid"] == [(frames, 3, 8, 8)] * 4
    assert fed["fvd"] == [(2, 3, nets.I3D_CLIP_FRAMES, 8, 8)] * 4
    assert fed["lse"] == [(frames, frames * 640, 16000)] * 4
    assert gen["fid_samples"] == 2 * frames and gen["fvd_samples"] == 4
    assert abs(gen["fid"]) < 1e-9 and abs(gen["fvd"]) < 1e-9
    assert gen["lse_d"] == truth["lse_d"] and gen["lse_c"] == truth["lse_c"] and 0 < gen["lse_d"] <= 0.5 * 3 ** 0.5 + 1e-5
    brighter = [VideoPair(p.name, (p.truth + 0.2).clamp(0, 1), p.truth, p.audio) for p in pairs]
    result = evaluate_videos(brighter, ["fid", "fvd"], weights_dir=tmp_path)["generated"]
    assert result["fid"] > 0.05 and result["fvd"] > 0.05


def test_headpose_is_averaged_over_frames_with_a_face(tmp_path, monkeypatch):
    """The Headpose accumulator weights each video by its frames with a face in both videos and
    counts the rest (a landmarker stand-in poses the face model by each frame's brightness; a
    black frame has no face)."""
    import mim.headpose as headpose

    class Landmarker:
        def __init__(self, path):
            assert str(path).endswith("shape_predictor_68_face_landmarks.dat")

        def __call__(self, image):
            level = float(image.mean()) / 255
            if level < 0.01:
                return None
            return headpose.project_face_model(40 * level, 0.0, 0.0, image.shape[1::-1])

    monkeypatch.setattr(headpose, "DlibLandmarker", Landmarker)
    (tmp_path / "shape_predictor_68_face_landmarks.dat").write_bytes(b"stand-in")
    full = lambda levels: torch.tensor(levels).view(-1, 1, 1, 1).expand(-1, 3, 16, 16).contiguous()
    pairs = [VideoPair("a", full([0.5, 0.5, 0.0]), full([0.25, 0.25, 0.25])),   # 10° off, frame 2 faceless
             VideoPair("b", full([1.0]), full([0.5])),                         # 20° off
             VideoPair("c", full([0.0]), full([0.5]))]                         # no face at all
    gen = evaluate_videos(pairs, ["headpose"], weights_dir=tmp_path)["generated"]
    assert gen["headpose_yaw"] == pytest.approx((2 * 10 + 20) / 3, abs=1e-3)
    assert gen["headpose_pitch"] == pytest.approx(0, abs=1e-3)
    assert gen["headpose"] == pytest.approx(gen["headpose_yaw"] / 3, abs=1e-3)
    assert gen["headpose_frames"] == 3 and gen["headpose_frames_without_face"] == 1
    assert gen["headpose_videos_without_face"] == 1


DEMO = Path(__file__).resolve().parents[2] / "examples" / "demo" / "mim_tiny.safetensors"


def test_cli_metrics_all_with_an_empty_weights_dir(tmp_path, capsys):
    """The acceptance command on one held-out clip: every missing weight file is named with its
    metric, PSNR/SSIM are still printed and written, the exit status says not all ran."""
    from mim.cli import main

    empty = tmp_path / "weights"
    empty.mkdir()
    out = tmp_path / "table.json"
    code = main(["evaluate", "--checkpoint", str(DEMO), "--metrics", "all", "--weights-dir", str(empty),
                 "--clips", "1", "--frames", "30", "--sample-steps", "1", "--no-progress", "--json", str(out)])
    captured = capsys.readouterr()
    assert code == 1
    assert "| generated |" in captured.out and "PSNR ↑" in captured.out and "SSIM ↑" in captured.out
    for metric, name in (("fid", "pt_inception-2015-12-05-6726825d.pth"), ("fvd", "rgb_imagenet.pt"),
                         ("lse", "syncnet_v2.model"), ("headpose", "shape_predictor_68_face_landmarks.dat"),
                         ("lpips", "lpips_vgg.safetensors")):
        assert any(line.startswith(f"not computed: {metric}:") and name in line
                   for line in captured.out.splitlines()), (metric, captured.out)
    assert "5 metric(s) not computed" in captured.err
    result = json.loads(out.read_text())
    assert set(result["generated"]) == {"psnr", "ssim"} and result["frames"] == 30
    assert 5 < result["generated"]["psnr"] < 60 and 0 < result["generated"]["ssim"] <= 1


@pytest.mark.parametrize("argv, named", [
    (["--metrics", "psnr,nope", "--checkpoint", "x"], "nope"),
    (["--metrics", "psnr", "--generated", "g"], "--generated and --truth go together"),
    (["--metrics", "psnr"], "--metrics needs a stage-2 --checkpoint"),
    (["--metrics", "psnr", "--weights-dir", "/no/such/dir", "--checkpoint", "x"], "--weights-dir"),
    (["--weights-dir", "w", "--checkpoint", "x"], "--weights-dir goes with --metrics"),
])
def test_cli_metrics_bad_arguments(argv, named, capsys):
    from mim.cli import main

    assert main(["evaluate", *argv]) == 2
    assert named in capsys.readouterr().err


def test_div_tgd_read_gesture_bodies_against_their_keypoints():
    """On procedural gesture clips the generated frames' head and hands are read off and compared
    with the clip's exact keypoints: the true frames score TGD about 0 (the read-out's offsets
    are constant) and their own DIV; a still video scores DIV 0 and TGD the truth's mean speed."""
    from mim.data.gesture import make_gesture_clip
    from mim.gesture_metrics import diversity, readout_subset, temporal_gesture_distance

    clips = [make_gesture_clip(seed, num_frames=30, size=64) for seed in (3, 4)]
    truth_pairs = [VideoPair(f"g{i}", c["frames"], c["frames"], keypoints=c["keypoints"])
                   for i, c in enumerate(clips)]
    still_pairs = [VideoPair(p.name, p.truth[:1].expand_as(p.truth), p.truth, keypoints=p.keypoints)
                   for p in truth_pairs]
    exact = [readout_subset(c["keypoints"]) for c in clips]
    same = evaluate_videos(truth_pairs, ["div", "tgd"])
    still = evaluate_videos(still_pairs, ["div", "tgd"])
    assert same["errors"] == {} and still["errors"] == {}
    assert same["truth"]["div"] == pytest.approx(diversity(exact)) and same["truth"]["div"] > 0.01
    assert same["generated"]["div"] == pytest.approx(same["truth"]["div"], rel=0.1)
    assert same["generated"]["tgd"] < 0.1 * still["generated"]["tgd"]
    assert still["generated"]["div"] < 1e-12
    moving = temporal_gesture_distance(exact, [e[:1].repeat(len(e), 0) for e in exact])
    assert still["generated"]["tgd"] == pytest.approx(moving, rel=0.05)
