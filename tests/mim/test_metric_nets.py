"""mim.metric_nets: the FID / FVD / LSE networks end to end with random weights of the right
architectures, saved here as safetensors and as torch.save'd state dicts (both load, same features);
weight-file discovery, wrong keys, unsafe pickles and TorchScript refused, the converter; SyncNet's
input preparation (MFCC against python_speech_features, window alignment, face crop geometry) and
FVD's TF1 resize on hand-worked cases."""

import pickle

import numpy as np
import pytest
import python_speech_features
import torch
import torch.nn.functional as F
from torch import nn
from safetensors.torch import load_file, save_file

from mim.metric_nets import (
    I3D_MIN_FRAMES, METRIC_WEIGHTS, MissingMetricWeights, WeightFileError, build_metric_network,
    convert_weights, find_metric_weights, i3d_features, inception_features, load_metric_network,
    resize_bilinear_tf1, syncnet_embeddings, syncnet_face_crop, syncnet_mfcc,
)


@pytest.fixture(scope="module")
def weights(tmp_path_factory, randomised_metric_net):
    """Per metric: the source state dict, a safetensors file and a torch.save'd state dict
    (SyncNet's in the legacy non-zip format of its 2018 file, without num_batches_tracked)."""
    folder = tmp_path_factory.mktemp("metric_weights")
    files = {}
    for seed, metric in enumerate(("fid", "fvd", "lse")):
        state = {k: v.clone() for k, v in randomised_metric_net(build_metric_network(metric), seed).state_dict().items()}
        safe, pickled = folder / f"{metric}.safetensors", folder / METRIC_WEIGHTS[metric][1]
        save_file(state, str(safe))
        if metric == "lse":
            old = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
            torch.save(old, pickled, _use_new_zipfile_serialization=False)
        else:
            torch.save(state, pickled)
        files[metric] = (state, safe, pickled)
    return files


def _loaded_both(weights, metric):
    state, safe, pickled = weights[metric]
    nets = [load_metric_network(metric, safe), load_metric_network(metric, pickled)]
    for net in nets:
        assert not net.training
        loaded = net.state_dict()
        assert all(torch.equal(loaded[k], v) for k, v in state.items() if not k.endswith("num_batches_tracked"))
    return nets


def _check_features(first, second, shape):
    assert first.dtype == np.float64 and first.shape == shape and np.isfinite(first).all()
    assert np.array_equal(first, second)
    scale = np.abs(first).mean()
    assert scale > 1e-3                                            # not a vanished signal
    return scale


def test_fid_pipeline_loads_both_formats_to_the_same_features(weights):
    nets = _loaded_both(weights, "fid")
    frames = torch.rand(2, 3, 37, 45, generator=torch.Generator().manual_seed(1))
    first = inception_features(nets[0], frames, batch=1)
    second = inception_features(nets[1], frames[:1])          # the other file: the same first image
    scale = _check_features(first[:1], second, (1, 2048))
    assert first.shape == (2, 2048)
    assert np.abs(first[0] - first[1]).mean() > 1e-3 * scale      # the two images differ
    assert (first >= 0).all()                                      # pool of ReLU outputs
    net = nets[0]
    with pytest.raises(ValueError, match=r"frames must be in \[0, 1\], got values in \[0, 255\]"):
        inception_features(net, torch.linspace(0, 255, 3 * 8 * 8).reshape(1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"frames must be \(N, 3, H, W\)"):
        inception_features(net, torch.rand(3, 8, 8))
    with pytest.raises(ValueError, match="frames must be floats"):
        inception_features(net, torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="NaN or infinite"):
        inception_features(net, torch.full((1, 3, 8, 8), float("nan")))


def test_fvd_pipeline_at_the_smallest_clip_loads_both_formats_to_the_same_features(weights):
    nets = _loaded_both(weights, "fvd")
    clips = torch.rand(1, 3, I3D_MIN_FRAMES, 30, 40, generator=torch.Generator().manual_seed(2))
    first, second = (i3d_features(net, clips) for net in nets)
    _check_features(first, second, (1, 400))
    with pytest.raises(ValueError, match=f"at least {I3D_MIN_FRAMES} frames"):
        i3d_features(nets[0], clips[:, :, :I3D_MIN_FRAMES - 1])


def test_lse_pipeline_loads_both_formats_and_aligns_windows_as_syncnet_python(weights):
    nets = _loaded_both(weights, "lse")
    gen = torch.Generator().manual_seed(3)
    frames = torch.rand(9, 3, 40, 40, generator=gen)
    audio = (torch.rand(8 * 640 + 100, generator=gen) * 2 - 1).numpy()
    # L = min(9 frames, 8 audio frames) = 8: syncnet_python's 8 - 5 = 3 windows
    (video, heard), (video2, heard2) = (syncnet_embeddings(net, frames, audio, 16000, batch=2) for net in nets)
    _check_features(video, video2, (3, 1024))
    _check_features(heard, heard2, (3, 1024))
    net = nets[0]
    # window 2 is frames 2..6 (224 x 224, 0..255, BGR) and MFCC steps 8..27 of the int16 audio
    crops = torch.round(F.interpolate(frames[2:7], size=(224, 224), mode="bilinear",
                                      align_corners=False) * 255).flip(1)
    with torch.no_grad():
        lip = net.lip_embedding(crops.permute(1, 0, 2, 3)[None])
        mfcc = syncnet_mfcc(np.clip(np.round(audio * 32768), -32768, 32767))
        sound = net.audio_embedding(torch.from_numpy(mfcc[:, 8:28]).float()[None, None])
    assert np.allclose(video[2], lip[0].double().numpy(), rtol=1e-5, atol=1e-5 * np.abs(video).max())
    assert np.allclose(heard[2], sound[0].double().numpy(), rtol=1e-5, atol=1e-5 * np.abs(heard).max())
    with pytest.raises(ValueError, match="sample_rate must be 16000"):
        syncnet_embeddings(net, frames, audio, 22050)
    with pytest.raises(ValueError, match="at least 6 frames"):
        syncnet_embeddings(net, frames[:5], audio, 16000)


def test_weight_files_are_found_by_name_and_a_missing_one_names_its_metric(tmp_path, weights):
    assert set(METRIC_WEIGHTS) == {"fid", "fvd", "lse", "headpose"}
    assert "pt_inception-2015-12-05-6726825d.pth" in METRIC_WEIGHTS["fid"]
    assert "rgb_imagenet.pt" in METRIC_WEIGHTS["fvd"]
    assert "syncnet_v2.model" in METRIC_WEIGHTS["lse"]
    assert METRIC_WEIGHTS["headpose"] == ("shape_predictor_68_face_landmarks.dat",)
    for metric, names in METRIC_WEIGHTS.items():
        with pytest.raises(MissingMetricWeights) as caught:
            find_metric_weights(metric, tmp_path)
        assert isinstance(caught.value, FileNotFoundError)
        message = str(caught.value)
        assert message.startswith(f"{metric}:") and str(tmp_path) in message and "http" in message
        assert all(name in message for name in names)
    (tmp_path / "rgb_imagenet.pt").write_bytes(b"x")
    assert find_metric_weights("fvd", tmp_path) == tmp_path / "rgb_imagenet.pt"
    (tmp_path / "fvd_i3d.safetensors").write_bytes(b"x")             # the converted file wins
    assert find_metric_weights("fvd", tmp_path) == tmp_path / "fvd_i3d.safetensors"
    with pytest.raises(MissingMetricWeights, match="does not exist"):
        find_metric_weights("lse", tmp_path / "nowhere")
    with pytest.raises(ValueError, match="unknown metric 'psnr'"):
        find_metric_weights("psnr", tmp_path)
    with pytest.raises(ValueError, match="unknown metric 'headpose'"):
        load_metric_network("headpose", weights["lse"][1])


def test_a_file_of_the_wrong_network_or_keys_is_named(tmp_path, weights):
    state = dict(weights["lse"][0])
    with pytest.raises(WeightFileError, match=r"fvd: .* does not fit the I3D network: missing .* "
                                              r"unexpected \d+ key\(s\): netcnnaud"):
        load_metric_network("fvd", weights["lse"][1])
    del state["netfclip.3.bias"]
    state["netfclip.9.weight"] = torch.zeros(3)
    path = tmp_path / "renamed.safetensors"
    save_file(state, str(path))
    with pytest.raises(WeightFileError, match=r"lse: .*missing 1 key\(s\): netfclip\.3\.bias; "
                                              r"unexpected 1 key\(s\): netfclip\.9\.weight"):
        load_metric_network("lse", path)
    state = dict(weights["lse"][0])
    state["netfcaud.0.weight"] = torch.zeros(512, 256)
    save_file(state, str(path))
    with pytest.raises(WeightFileError, match=r"netfcaud\.0\.weight \(512, 256\) \(expected \(512, 512\)\)"):
        load_metric_network("lse", path)
    with pytest.raises(FileNotFoundError, match="lse: weight file .* does not exist"):
        load_metric_network("lse", tmp_path / "absent.model")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(WeightFileError, match="lse: .* is not a readable safetensors file"):
        load_metric_network("lse", tmp_path / "junk.safetensors")


class _Payload:
    """Stands for code in a pickle: weights_only refuses any class it does not know."""

    def __reduce__(self):
        return (print, ("this would have run",))


def test_pickles_are_read_with_weights_only_and_torchscript_is_refused(tmp_path, weights):
    unsafe = tmp_path / "syncnet_v2.model"
    torch.save({"netfclip.3.bias": _Payload()}, unsafe)
    with pytest.raises(WeightFileError, match=r"lse: .*torch.load\(weights_only=True\).*UnpicklingError"):
        load_metric_network("lse", unsafe)
    with open(unsafe, "wb") as handle:                              # a plain pickle, not torch.save's
        pickle.dump({"netfclip.3.bias": _Payload()}, handle)
    with pytest.raises(WeightFileError, match=r"lse: .*torch.load\(weights_only=True\)"):
        load_metric_network("lse", unsafe)
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    with pytest.raises(WeightFileError, match="does not hold a state dict"):
        load_metric_network("lse", tmp_path / "list.pt")
    script = tmp_path / "i3d_torchscript.pt"
    torch.jit.save(torch.jit.script(nn.Linear(2, 2)), str(script))
    with pytest.raises(WeightFileError, match="fvd: .* is a TorchScript archive .* not loaded. Use .*rgb_imagenet.pt"):
        load_metric_network("fvd", script)


def test_the_converter_round_trips_and_writes_atomically(tmp_path, weights):
    state, _, pickled = weights["lse"]
    dst = convert_weights("lse", pickled, tmp_path / "out" / "lse_syncnet.safetensors")
    converted = load_file(str(dst))
    assert set(converted) == set(state)
    assert all(torch.equal(converted[k], v) for k, v in state.items() if not k.endswith("num_batches_tracked"))
    again = load_metric_network("lse", dst).state_dict()
    assert all(torch.equal(again[k], converted[k]) for k in converted)
    with pytest.raises(ValueError, match="must be a .safetensors file"):
        convert_weights("lse", pickled, tmp_path / "out.pt")
    with pytest.raises(WeightFileError, match="fid: .* does not fit"):
        convert_weights("fid", pickled, tmp_path / "bad" / "fid_inception.safetensors")
    assert not (tmp_path / "bad").exists()                         # checked before anything is written


@pytest.mark.parametrize("samples", [300, 400, 401, 640 * 6 + 17])
def test_mfcc_matches_python_speech_features(samples):
    rng = np.random.default_rng(samples)
    audio = np.round(rng.standard_normal(samples) * 4000)
    want = python_speech_features.mfcc(audio.astype(np.int16), 16000).T     # as syncnet_python calls it
    got = syncnet_mfcc(audio)
    assert got.shape == want.shape == (13, 1 if samples <= 400 else 1 + -(-(samples - 400) // 160))
    assert np.allclose(got, want, rtol=1e-10, atol=1e-9)
    silent = np.zeros(1000)
    assert np.allclose(syncnet_mfcc(silent), python_speech_features.mfcc(silent, 16000).T, atol=1e-9)
    with pytest.raises(ValueError, match="sample_rate must be 16000"):
        syncnet_mfcc(audio, 8000)


def test_syncnet_face_crop_follows_run_pipelines_geometry():
    height, width, frames = 100, 120, 15
    rows = torch.arange(height, dtype=torch.float32)[:, None].expand(height, width)
    image = torch.stack([rows / 255, torch.arange(width, dtype=torch.float32)[None, :].expand(height, width) / 255,
                         torch.full((height, width), 0.5)])
    video = image[None].repeat(frames, 1, 1, 1)
    boxes = np.tile([40.0, 40.0, 60.0, 60.0], (frames, 1))
    boxes[7] = [0, 0, 110, 90]                                      # one bad detection: median-filtered away
    crops = syncnet_face_crop(video, boxes)
    assert crops.shape == (frames, 3, 224, 224)
    # s = 10, centre (50, 50), pad int(18): rows [50 - 10, 50 + 18) and columns [50 - 14, 50 + 14)
    want = F.interpolate(image[None, :, 40:68, 36:64], size=(224, 224), mode="bilinear", align_corners=False)[0]
    assert torch.allclose(crops[7], want, atol=1e-6) and torch.allclose(crops[0], want, atol=1e-6)
    corner = syncnet_face_crop(video, np.tile([0.0, 0.0, 20.0, 20.0], (frames, 1)))
    assert torch.allclose(corner[0, 2, :5, :5], torch.full((5, 5), 110 / 255))   # the grey padding
    with pytest.raises(ValueError, match=r"boxes must be finite \(T, 4\) = \(15, 4\)"):
        syncnet_face_crop(video, boxes[:3])


def test_the_fvd_resize_is_tf1s_bilinear():
    line = torch.tensor([[0.0, 4.0, 8.0, 2.0]])
    # up by 2: output i samples i / 2 (no half-pixel offset), the last one clamped
    assert torch.equal(resize_bilinear_tf1(line.expand(4, 4), 8)[0], torch.tensor([0, 2, 4, 6, 8, 5, 2, 2.0]))
    # down by 2: output i is input 2i exactly (PyTorch's half-pixel resize would average pairs)
    assert torch.equal(resize_bilinear_tf1(line.expand(4, 4), 2)[0], torch.tensor([0, 8.0]))
