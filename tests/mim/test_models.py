import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kernels.deviation_adanorm.reference import deviation_adanorm_reference
from mim.config import get_config
from mim.models import Renderer, standardize_motion
from mim.models.encoders import ImageEncoder


def tiny(**overrides):
    config = get_config("tiny").renderer
    for k, v in overrides.items():
        setattr(config, k, v)
    return config


def test_shapes():
    cfg = tiny()
    renderer = Renderer(cfg).eval()
    source, driving = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 3, 64, 64)
    state = renderer.encode_source(source)
    assert state.feature.shape == (2, cfg.feature_channels, cfg.depth_layers, 32, 32)
    assert state.appearance.shape == (2, cfg.appearance_dim)
    assert state.motion.shape == (2, cfg.motion_dim)
    out = renderer(source, driving)
    assert out["frames"].shape == (2, 3, 3, 64, 64)
    assert out["warped"].shape == (6, cfg.feature_channels, cfg.depth_layers, 32, 32)
    assert out["mask"].shape == (6, 1, cfg.depth_layers, 32, 32)
    assert 0 <= float(out["frames"].detach().min()) and float(out["frames"].detach().max()) <= 1


def test_eq1_depth_weighting():
    cfg = tiny()
    encoder = ImageEncoder(cfg)
    encoder.resnet3d = nn.Identity()
    image = torch.rand(2, 3, 64, 64)
    f_m = encoder.expand(encoder.stem(image)).view(2, cfg.feature_channels, cfg.depth_layers, 32, 32)
    omega = torch.sigmoid(f_m.mean(dim=(2, 3, 4)) @ encoder.depth_fc.weight.T + encoder.depth_fc.bias)
    torch.testing.assert_close(encoder(image), f_m * omega[:, :, None, None, None])


def test_dit_starts_at_the_plain_deviation():
    cfg = tiny()
    renderer = Renderer(cfg, backend="torch")
    motion = torch.randn(2, 4, cfg.motion_dim)
    v_nor = standardize_motion(motion, cfg.eps)
    ones = torch.ones(2, 3, cfg.regions, cfg.motion_dim)
    expected = deviation_adanorm_reference(v_nor.double(), ones.double(), 0 * ones.double(), cfg.eps)
    torch.testing.assert_close(renderer.dit(motion).double(), expected, rtol=1e-5, atol=1e-5)
    assert torch.allclose(v_nor.mean(-1), torch.zeros(2, 4), atol=1e-5)


def test_initial_warp_is_identity():
    """Zero-initialized logits and displacement heads: the warped volume is act(F_id)."""
    cfg = tiny()
    renderer = Renderer(cfg).eval()
    source, driving = torch.rand(1, 3, 64, 64), torch.rand(1, 2, 3, 64, 64)
    with torch.no_grad():
        out = renderer(source, driving)
        expected = F.leaky_relu(renderer.image_encoder(source), cfg.beta).expand(2, -1, -1, -1, -1)
    torch.testing.assert_close(out["warped"], expected, rtol=1e-5, atol=1e-5)


def test_decoder_motion_film_modulates_the_decoder():
    """recipe.decoder_motion_film (Renderer's motion_film): the FiLM layers start at zero (frames
    equal those of a renderer without them); then the driving frame's M changes the pixels
    through the same warp, its gradient reaches the motion encoder, and the decoder refuses to
    run without M."""
    torch.manual_seed(0)
    config = get_config("tiny")
    config.recipe.name, config.recipe.decoder_motion_film = "custom", True
    with_film = Renderer.from_config(config).eval()
    assert with_film.motion_film and with_film.decoder.needs_motion
    without = Renderer(tiny()).eval()
    assert without.decoder.motion_films is None and not without.decoder.needs_motion
    keys = without.load_state_dict(with_film.state_dict(), strict=False)
    # one FiLM at the volume's resolution and one per upsampling block (tiny: 32 -> 64 px)
    assert sorted(keys.unexpected_keys) == [f"decoder.motion_films.{i}.{p}" for i in range(2) for p in ("bias", "weight")]
    assert not keys.missing_keys
    source, driving = torch.rand(1, 3, 64, 64), torch.rand(1, 2, 3, 64, 64)
    with torch.no_grad():
        a, b = with_film(source, driving), without(source, driving)
        torch.testing.assert_close(a["frames"], b["frames"], rtol=0, atol=0)
        for film in with_film.decoder.motion_films:
            film.weight.normal_(0, 0.05)
        c = with_film(source, driving)
        state = with_film.encode_source(source)
        out = with_film.render_window(state, with_film.encode_motion(driving))
        appearance = state.appearance.expand(2, -1)
        plain = with_film.decoder(out["warped"], appearance, torch.zeros(2, with_film.config.motion_dim))
        moved = with_film.decoder(out["warped"], appearance, torch.randn(2, with_film.config.motion_dim))
    torch.testing.assert_close(c["warped"], a["warped"], rtol=0, atol=0)
    assert (c["frames"] - a["frames"]).abs().max() > 1e-3
    change = (moved - plain).abs().amax(1)       # (2, 64, 64): the whole frame, every corner
    assert (change[:, :8, :8].amax((1, 2)) > 1e-3).all() and (change[:, -8:, -8:].amax((1, 2)) > 1e-3).all()
    with_film.zero_grad()
    with_film(source, driving)["frames"].sum().backward()
    assert with_film.motion_encoder.head.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="decoder_motion_film"):
        with_film.decoder(out["warped"], appearance)


def test_frames_do_not_depend_on_other_clips():
    renderer = Renderer(tiny()).eval()
    source, driving = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 3, 64, 64)
    with torch.no_grad():
        both = renderer(source, driving)["frames"]
        first = renderer(source[:1], driving[:1])["frames"]
    torch.testing.assert_close(both[:1], first, rtol=1e-5, atol=1e-5)


def test_render_windows_are_independent_chunks():
    renderer = Renderer(tiny()).eval()
    source, driving = torch.rand(1, 3, 64, 64), torch.rand(1, 5, 3, 64, 64)
    with torch.no_grad():
        state = renderer.encode_source(source)
        motion = renderer.encode_motion(driving)
        windowed, aux = renderer.render(state, motion, window=2, return_aux=True)
        parts = [renderer.render(state, motion[:, s:s + 2]) for s in (0, 2, 4)]
    torch.testing.assert_close(windowed, torch.cat(parts, dim=1))
    assert aux["warped"].shape[0] == 5


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_engine_backends_match_reference(backend, device_under_test):
    """On the device under test: CUDA's compiled kernels where there is one, else the CPU."""
    torch.manual_seed(0)
    cfg = tiny()
    reference = Renderer(cfg, backend="reference")
    for p in reference.lmdd.displacement.parameters():   # a non-trivial warp
        nn.init.normal_(p, std=0.05)
    for p in reference.lmdd.logits.parameters():
        nn.init.normal_(p, std=0.5)
    engine = Renderer(cfg, backend=backend)
    engine.load_state_dict(reference.state_dict())
    reference, engine = reference.to(device_under_test), engine.to(device_under_test)
    source, driving = torch.rand(1, 3, 64, 64), torch.rand(1, 2, 3, 64, 64)
    source, driving = source.to(device_under_test), driving.to(device_under_test)
    outs, grads = [], []
    for model in (reference, engine):
        frames = model(source, driving)["frames"]
        frames.square().mean().backward()
        outs.append(frames)
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-4, atol=1e-5)
    assert (grads[1] - grads[0]).norm() <= 1e-3 * grads[0].norm()


def test_activation_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    plain = Renderer(tiny())
    ckpt = Renderer(tiny(checkpoint_activations=True))
    ckpt.load_state_dict(plain.state_dict())
    source, driving = torch.rand(2, 3, 64, 64), torch.rand(2, 2, 3, 64, 64)
    for model in (plain, ckpt):
        model(source, driving)["frames"].mean().backward()
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(b.grad, a.grad, msg=name)


@pytest.mark.parametrize("shape, match", [
    ((1, 4, 64, 64), r"source must have shape \(\.\.\., 3, 64, 64\)"),
    ((1, 3, 32, 32), r"source must have shape \(\.\.\., 3, 64, 64\)"),
    ((3, 64, 64), r"source must have shape \(B, 3, S, S\)"),
])
def test_bad_source(shape, match):
    renderer = Renderer(tiny())
    with pytest.raises(ValueError, match=match):
        renderer.encode_source(torch.rand(*shape))


def test_bad_driving_and_motion():
    renderer = Renderer(tiny())
    with pytest.raises(ValueError, match="driving must have shape"):
        renderer(torch.rand(2, 3, 64, 64), torch.rand(1, 2, 3, 64, 64))
    state = renderer.encode_source(torch.rand(1, 3, 64, 64))
    with pytest.raises(ValueError, match="motion must have shape"):
        renderer.render(state, torch.rand(1, 2, 7))
    with pytest.raises(TypeError, match="floating"):
        renderer.encode_motion(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
