"""Stage-2 motion model: Mamba-g/Mamba-l audio features, the denoiser ε_θ and its attention,
windowed DDIM generation with continuity and audio guidance, and the training objective."""
import dataclasses
import math
import sys
import types

import pytest
import torch
import torch.nn.functional as F

from mim.config import get_config
from mim.diffusion import LOSS_TERMS, NoiseSchedule, acceleration_loss, eps_loss, motion_mse, velocity_loss
from mim.models import motion as motion_module
from mim.models.motion import (
    X0_LOSS_MIN_ALPHA_BAR,
    MotionDenoiser,
    MotionGenerator,
    attention,
)

TINY = get_config("tiny")
CFG = TINY.motion                       # window 25, prev_frames 4, audio_dim 64
MOTION_DIM = TINY.renderer.motion_dim   # 192
APPEARANCE_DIM = TINY.renderer.appearance_dim  # 64
SLICE = 4 * (2 * CFG.local_context + 1)


def make_generator(seed=0, config=CFG, perturb_head=True):
    """A tiny MotionGenerator; with ``perturb_head`` its zero-initialized output layer gets random
    weights, so ε̂ depends on every input."""
    torch.manual_seed(seed)
    model = MotionGenerator(config, MOTION_DIM, APPEARANCE_DIM)
    if perturb_head:
        with torch.no_grad():
            model.denoiser.head.weight.normal_(0.0, 0.05)
            model.denoiser.head.bias.normal_(0.0, 0.05)
    return model


def conditions(batch, frames, seed=1):
    """Random (F_ag, F_al, F_A) of the tiny sizes."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, CFG.audio_dim, generator=g),
            torch.randn(batch, frames, CFG.audio_dim, generator=g),
            torch.randn(batch, APPEARANCE_DIM, generator=g))


def denoiser_inputs(batch, frames, seed=2):
    g = torch.Generator().manual_seed(seed)
    return dict(x_t=torch.randn(batch, frames, MOTION_DIM, generator=g),
                t=torch.randint(0, CFG.diffusion_steps, (batch,), generator=g),
                audio_global=torch.randn(batch, CFG.audio_dim, generator=g),
                audio_local=torch.randn(batch, frames, CFG.audio_dim, generator=g),
                prev_motion=torch.randn(batch, CFG.prev_frames, MOTION_DIM, generator=g),
                appearance=torch.randn(batch, APPEARANCE_DIM, generator=g))


def record_denoiser_calls(model):
    """Every call of model.denoiser as a dict of its (detached, cloned) inputs."""
    calls = []

    def hook(module, args, kwargs):
        x_t, t = args
        calls.append({"x_t": x_t.clone(), "t": t.clone(),
                      **{k: v.detach().clone() for k, v in kwargs.items()}})

    model.denoiser.register_forward_pre_hook(hook, with_kwargs=True)
    return calls


def set_motion_statistics(model, seed=3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.motion_mean.copy_(torch.randn(MOTION_DIM, generator=g))
        model.motion_std.copy_(torch.rand(MOTION_DIM, generator=g) + 0.5)


# --- shapes ----------------------------------------------------------------------------------

def test_shapes_with_tiny_config():
    model = make_generator()
    mel = torch.randn(2, 37, 80)
    windows = torch.randn(2, 9, SLICE, 80)
    f_ag, f_al = model.encode_audio(mel, windows)
    assert f_ag.shape == (2, CFG.audio_dim) and f_al.shape == (2, 9, CFG.audio_dim)
    inputs = denoiser_inputs(2, 9)
    assert model(**inputs).shape == (2, 9, MOTION_DIM)
    motion = model.generate(f_ag, f_al, torch.randn(2, APPEARANCE_DIM), steps=2)
    assert motion.shape == (2, 9, MOTION_DIM) and bool(motion.isfinite().all())


# --- Mamba-g and Mamba-l ---------------------------------------------------------------------

def test_global_feature_ignores_padding_beyond_length():
    model = make_generator()
    torch.manual_seed(4)
    mel = torch.randn(2, 40, 80)
    lengths = torch.tensor([40, 23])
    other = mel.clone()
    other[1, 23:] = torch.randn(17, 80) * 3.0
    with torch.no_grad():
        base = model.mamba_g(mel, lengths)
        repadded = model.mamba_g(other, lengths)
        alone = model.mamba_g(mel[1:, :23])
        unmasked = model.mamba_g(other)
    torch.testing.assert_close(repadded, base, rtol=0, atol=1e-6)
    torch.testing.assert_close(base[1], alone[0], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(unmasked[1], base[1], atol=1e-3)  # the padding would matter


def test_local_features_are_per_frame():
    model = make_generator()
    torch.manual_seed(5)
    windows = torch.randn(2, 6, SLICE, 80)
    changed = windows.clone()
    changed[1, 3] = torch.randn(SLICE, 80)
    with torch.no_grad():
        base = model.mamba_l(windows)
        after = model.mamba_l(changed)
    differs = (after - base).abs().amax(dim=-1) > 1e-6          # (B, T)
    expected = torch.zeros(2, 6, dtype=torch.bool)
    expected[1, 3] = True
    assert torch.equal(differs, expected)


def test_local_feature_reads_the_whole_slice():
    """The last token is the pooled one: even the slice's first mel frame reaches it."""
    model = make_generator()
    torch.manual_seed(6)
    windows = torch.randn(1, 2, SLICE, 80)
    changed = windows.clone()
    changed[0, 0, 0] += 2.0
    with torch.no_grad():
        delta = (model.mamba_l(changed) - model.mamba_l(windows)).abs().amax(dim=-1)
    assert delta[0, 0] > 1e-5 and delta[0, 1] == 0


# --- attention -------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_attention_fallback_is_softmax_attention(dtype, tol):
    torch.manual_seed(7)
    q, k, v = (torch.randn(2, 7, 3, 5, dtype=dtype) for _ in range(3))   # (B, L, heads, d)
    scores = torch.einsum("blhd,bmhd->bhlm", q, k) / math.sqrt(5)
    expected = torch.einsum("bhlm,bmhd->blhd", scores.softmax(dim=-1), v)
    out = attention(q, k, v)
    assert out.shape == expected.shape
    assert ((out - expected).norm() / expected.norm()).item() <= tol


@pytest.fixture
def fake_flash_attn(monkeypatch):
    """A fake ``flash_attn`` package in sys.modules that counts its calls."""
    calls = []

    def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False):
        calls.append(q.shape)
        return torch.zeros_like(q)

    module = types.ModuleType("flash_attn")
    module.flash_attn_func = flash_attn_func
    monkeypatch.setitem(sys.modules, "flash_attn", module)
    motion_module._load_flash_attn.cache_clear()
    yield calls
    motion_module._load_flash_attn.cache_clear()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_flash_attn_is_not_used_on_cpu(fake_flash_attn, dtype):
    torch.manual_seed(8)
    q, k, v = (torch.randn(1, 6, 2, 8, dtype=dtype) for _ in range(3))
    out = attention(q, k, v)
    expected = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                              v.transpose(1, 2)).transpose(1, 2)
    assert fake_flash_attn == []
    torch.testing.assert_close(out, expected)


def test_flash_attention_limits():
    from types import SimpleNamespace as T

    half = T(is_cuda=True, dtype=torch.float16, shape=(1, 6, 2, 64))
    assert motion_module.flash_attention_applies(half, half, half)
    bf16 = T(is_cuda=True, dtype=torch.bfloat16, shape=(1, 6, 2, 256))
    assert motion_module.flash_attention_applies(bf16, bf16, bf16)
    assert not motion_module.flash_attention_applies(T(is_cuda=True, dtype=torch.float32, shape=(1, 6, 2, 64)), half, half)
    assert not motion_module.flash_attention_applies(T(is_cuda=False, dtype=torch.float16, shape=(1, 6, 2, 64)), half, half)
    assert not motion_module.flash_attention_applies(T(is_cuda=True, dtype=torch.float16, shape=(1, 6, 2, 512)), half, half)
    assert not motion_module.flash_attention_applies(half, bf16, half)


def test_flash_attn_is_called_when_it_applies(fake_flash_attn, monkeypatch):
    """The dispatch itself, on CPU: where the limits hold, flash-attn's result is returned."""
    monkeypatch.setattr(motion_module, "flash_attention_applies", lambda q, k, v: True)
    q, k, v = (torch.randn(1, 6, 2, 8) for _ in range(3))
    out = attention(q, k, v)
    assert fake_flash_attn == [(1, 6, 2, 8)] and torch.equal(out, torch.zeros_like(q))


# --- denoiser --------------------------------------------------------------------------------

def test_denoiser_output_is_zero_at_init_and_not_after_perturbing_head():
    torch.manual_seed(9)
    denoiser = MotionDenoiser(CFG, MOTION_DIM, APPEARANCE_DIM)
    inputs = denoiser_inputs(2, 11)
    with torch.no_grad():
        assert torch.equal(denoiser(**inputs), torch.zeros(2, 11, MOTION_DIM))
        denoiser.head.weight.normal_(0.0, 0.05)
        out = denoiser(**inputs)
    assert out.abs().min() > 0 and bool(out.isfinite().all())


def test_denoiser_depends_on_every_condition():
    model = make_generator()
    inputs = denoiser_inputs(2, 8)
    with torch.no_grad():
        base = model(**inputs)
        for name in ("t", "audio_global", "audio_local", "prev_motion", "appearance"):
            changed = dict(inputs)
            changed[name] = (inputs[name] + 7) if name == "t" else inputs[name] + 1.0
            assert not torch.allclose(model(**changed), base, atol=1e-5), name


# --- generation ------------------------------------------------------------------------------

def test_generate_shorter_than_one_window():
    model = make_generator()
    calls = record_denoiser_calls(model)
    f_ag, f_al, f_a = conditions(1, 7)
    motion = model.generate(f_ag, f_al, f_a, steps=3, guidance_scale=1.0)
    assert motion.shape == (1, 7, MOTION_DIM) and bool(motion.isfinite().all())
    assert len(calls) == 3
    assert all(c["x_t"].shape == (1, 7, MOTION_DIM) for c in calls)
    assert all(torch.equal(c["prev_motion"], torch.zeros(1, CFG.prev_frames, MOTION_DIM))
               for c in calls)


def test_generate_windows_are_continuous():
    model = make_generator()
    set_motion_statistics(model)
    calls = record_denoiser_calls(model)
    progress = []
    f_ag, f_al, f_a = conditions(2, 80)
    steps = 2
    motion = model.generate(f_ag, f_al, f_a, steps=steps, guidance_scale=1.0,
                            progress=lambda k, n: progress.append((k, n)))
    assert motion.shape == (2, 80, MOTION_DIM) and bool(motion.isfinite().all())
    assert progress == [(0, 4), (1, 4), (2, 4), (3, 4)]
    windows = [calls[i] for i in range(0, len(calls), steps)]
    assert len(calls) == 4 * steps
    assert [w["x_t"].shape[1] for w in windows] == [25, 25, 25, 5]
    for k, w in enumerate(windows):                       # each window reads its own audio
        torch.testing.assert_close(w["audio_local"], f_al[:, 25 * k:25 * k + 25], rtol=0, atol=0)
    assert torch.equal(windows[0]["prev_motion"], torch.zeros(2, CFG.prev_frames, MOTION_DIM))
    normalized = model.normalize(motion)
    for k in range(1, 4):
        end = 25 * k
        torch.testing.assert_close(windows[k]["prev_motion"], normalized[:, end - 4:end],
                                   rtol=1e-5, atol=1e-4)


def test_generate_is_deterministic_given_a_seed():
    model = make_generator()
    f_ag, f_al, f_a = conditions(1, 30)

    def run(seed):
        return model.generate(f_ag, f_al, f_a, steps=3, eta=0.5, guidance_scale=2.0,
                              generator=torch.Generator().manual_seed(seed))

    first = run(11)
    assert torch.equal(first, run(11))
    assert not torch.allclose(first, run(12))


def test_guidance_zeroes_only_the_audio_in_the_unconditional_call():
    model = make_generator()
    calls = record_denoiser_calls(model)
    f_ag, f_al, f_a = conditions(1, 30)
    steps = 3
    single = model.generate(f_ag, f_al, f_a, steps=steps, guidance_scale=1.0,
                            generator=torch.Generator().manual_seed(0))
    assert len(calls) == steps * 2                     # 2 windows (25 + 5), one call per step
    assert all(bool(c["audio_global"].abs().sum() > 0) for c in calls)
    calls.clear()
    guided = model.generate(f_ag, f_al, f_a, steps=steps, guidance_scale=2.0,
                            generator=torch.Generator().manual_seed(0))
    assert len(calls) == steps * 2 * 2
    for cond, uncond in zip(calls[0::2], calls[1::2]):
        torch.testing.assert_close(cond["audio_global"], f_ag, rtol=0, atol=0)
        assert torch.equal(uncond["audio_global"], torch.zeros_like(f_ag))
        assert torch.equal(uncond["audio_local"], torch.zeros_like(cond["audio_local"]))
        assert bool(cond["audio_local"].abs().sum() > 0)
        for name in ("x_t", "t", "prev_motion", "appearance"):
            assert torch.equal(cond[name], uncond[name]), name
    assert not torch.allclose(single, guided)


# --- training --------------------------------------------------------------------------------

def test_training_loss_is_finite_and_reaches_every_parameter_group():
    model = make_generator()
    torch.manual_seed(12)
    mel = torch.randn(4, 30, 80)
    windows = torch.randn(4, 6, SLICE, 80)
    f_ag, f_al = model.encode_audio(mel, windows, torch.tensor([30, 30, 21, 12]))
    m = torch.randn(4, 6, MOTION_DIM)
    prev = torch.randn(4, CFG.prev_frames, MOTION_DIM)
    terms = model.training_loss(m, f_ag, f_al, prev, torch.randn(4, APPEARANCE_DIM),
                                (1.0, 1.0, 1.0, 1.0), generator=torch.Generator().manual_seed(3))
    assert set(terms) == {"simple", "mse", "velocity", "acceleration", "total"}
    assert all(bool(v.isfinite()) for v in terms.values())
    terms["total"].backward()
    for group in (model.mamba_g, model.mamba_l, model.denoiser):
        grads = [p.grad for p in group.parameters()]
        assert all(g is not None and bool(g.isfinite().all()) for g in grads)
        assert sum(g.norm() for g in grads) > 0
    assert all(p.grad.abs().sum() > 0 for p in model.denoiser.parameters())


def test_training_loss_applies_eqs_4_to_6_above_the_alpha_bar_floor():
    config = dataclasses.replace(CFG, condition_drop=0.0, prediction="eps")
    model = make_generator(config=config)
    set_motion_statistics(model)
    captured = {}

    def hook(module, args, kwargs, output):
        captured.update(x_t=args[0], t=args[1], eps_hat=output)

    model.denoiser.register_forward_hook(hook, with_kwargs=True)
    batch = 12
    torch.manual_seed(13)
    m = torch.randn(batch, 5, MOTION_DIM)
    f_ag, f_al, f_a = conditions(batch, 5)
    prev = torch.zeros(batch, CFG.prev_frames, MOTION_DIM)
    weights = (1.0, 0.5, 2.0, 0.25)
    with torch.no_grad():
        terms = model.training_loss(m, f_ag, f_al, prev, f_a, weights,
                                    generator=torch.Generator().manual_seed(1))
    x_t, t, eps_hat = captured["x_t"], captured["t"], captured["eps_hat"]
    schedule = model.schedule
    kept = schedule.alpha_bars[t] >= X0_LOSS_MIN_ALPHA_BAR
    assert 0 < int(kept.sum()) < batch                      # both kinds of samples in the batch
    x0 = model.normalize(m)
    noise = schedule.predict_eps(x_t, t, x0)
    m_hat = schedule.predict_x0(x_t[kept], t[kept], eps_hat[kept])   # eq. 4-6's M̄_D from ε̂
    expected = {"mse": motion_mse(x0[kept], m_hat), "velocity": velocity_loss(x0[kept], m_hat),
                "acceleration": acceleration_loss(x0[kept], m_hat)}
    for name in ("mse", "velocity", "acceleration"):
        torch.testing.assert_close(terms[name], expected[name], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(terms["simple"], eps_loss(noise, eps_hat), rtol=1e-4, atol=1e-6)
    total = sum(w * terms[n] for w, n in zip(weights, LOSS_TERMS))
    torch.testing.assert_close(terms["total"], total)


def test_v_prediction_turns_the_output_into_eps_and_x0_and_uses_every_sample_in_eqs_4_to_6():
    config = dataclasses.replace(CFG, condition_drop=0.0, prediction="v")
    model = make_generator(config=config)
    set_motion_statistics(model)
    captured = {}

    def hook(module, args, kwargs, output):
        captured.update(x_t=args[0], t=args[1], v_hat=output)

    model.denoiser.register_forward_hook(hook, with_kwargs=True)
    batch = 12
    torch.manual_seed(14)
    m = torch.randn(batch, 5, MOTION_DIM)
    f_ag, f_al, f_a = conditions(batch, 5)
    prev = torch.zeros(batch, CFG.prev_frames, MOTION_DIM)
    weights = (1.0, 0.5, 2.0, 0.25)
    with torch.no_grad():
        terms = model.training_loss(m, f_ag, f_al, prev, f_a, weights,
                                    generator=torch.Generator().manual_seed(1))
    x_t, t, v_hat = captured["x_t"], captured["t"], captured["v_hat"]
    alpha_bar = model.schedule.alpha_bars[t].view(-1, 1, 1).double()
    assert float(alpha_bar.min()) < X0_LOSS_MIN_ALPHA_BAR < float(alpha_bar.max())
    x0 = model.normalize(m).double()
    noise = (x_t.double() - alpha_bar.sqrt() * x0) / (1 - alpha_bar).sqrt()
    eps_hat = (1 - alpha_bar).sqrt() * x_t + alpha_bar.sqrt() * v_hat     # by hand, float64
    x0_hat = alpha_bar.sqrt() * x_t - (1 - alpha_bar).sqrt() * v_hat
    # x̂_0 and ε̂ agree with x_t as the forward process says
    torch.testing.assert_close(alpha_bar.sqrt() * x0_hat + (1 - alpha_bar).sqrt() * eps_hat,
                               x_t.double())
    expected = {"simple": ((noise - eps_hat) ** 2).mean(),
                "mse": ((x0 - x0_hat) ** 2).mean(),                        # every sample
                "velocity": ((x0.diff(dim=1) - x0_hat.diff(dim=1)) ** 2).mean(),
                "acceleration": ((x0.diff(n=2, dim=1) - x0_hat.diff(n=2, dim=1)) ** 2).mean()}
    for name, value in expected.items():
        torch.testing.assert_close(terms[name].double(), value, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(terms["total"],
                               sum(w * terms[n] for w, n in zip(weights, LOSS_TERMS)))


def test_v_prediction_at_initialisation_passes_x_t_through_as_eps():
    """The zero-initialized head gives v̂ = 0, so ε̂ = √(1 − ᾱ_t)·x_t: at high noise ε̂ ≈ x_t
    before any training (what ε-prediction has to learn through the transformer)."""
    config = dataclasses.replace(CFG, prediction="v")
    model = make_generator(config=config, perturb_head=False)
    inputs = denoiser_inputs(3, 5)
    inputs["t"] = torch.tensor([0, 500, 999])
    with torch.no_grad():
        eps_hat = model(**inputs)
    scale = (1 - model.schedule.alpha_bars[inputs["t"]]).sqrt().float().view(-1, 1, 1)
    torch.testing.assert_close(eps_hat, scale * inputs["x_t"])
    assert float(scale[2]) > 0.99999


def test_training_loss_without_samples_above_the_floor_is_eq_7_only():
    model = make_generator(config=dataclasses.replace(CFG, prediction="eps"))
    model.schedule = NoiseSchedule(1, "cosine")             # ᾱ_0 = 0.001: nothing is kept
    f_ag, f_al, f_a = conditions(3, 4)
    terms = model.training_loss(torch.randn(3, 4, MOTION_DIM), f_ag, f_al,
                                torch.zeros(3, CFG.prev_frames, MOTION_DIM), f_a,
                                (1.0, 1.0, 1.0, 1.0))
    for name in ("mse", "velocity", "acceleration"):
        assert terms[name].item() == 0
    assert terms["total"].item() == terms["simple"].item() > 0


def test_condition_dropout_zeroes_global_and_local_audio_together():
    config = dataclasses.replace(CFG, condition_drop=0.5)
    model = make_generator(config=config)
    calls = record_denoiser_calls(model)
    batch = 16
    f_ag, f_al, f_a = conditions(batch, 4)
    with torch.no_grad():
        model.training_loss(torch.randn(batch, 4, MOTION_DIM), f_ag, f_al,
                            torch.zeros(batch, CFG.prev_frames, MOTION_DIM), f_a,
                            (1.0, 1.0, 1.0, 1.0), generator=torch.Generator().manual_seed(5))
    seen_global, seen_local = calls[0]["audio_global"], calls[0]["audio_local"]
    dropped = seen_global.abs().sum(dim=1) == 0
    assert 0 < int(dropped.sum()) < batch
    assert torch.equal(seen_local[dropped], torch.zeros_like(seen_local[dropped]))
    assert torch.equal(seen_global[~dropped], f_ag[~dropped])
    assert torch.equal(seen_local[~dropped], f_al[~dropped])
    assert torch.equal(calls[0]["appearance"], f_a)


def test_normalize_and_denormalize_are_inverse():
    model = make_generator(perturb_head=False)
    set_motion_statistics(model)
    m = torch.randn(2, 3, MOTION_DIM)
    torch.testing.assert_close(model.denormalize(model.normalize(m)), m)
    torch.testing.assert_close(model.normalize(model.motion_mean), torch.zeros(MOTION_DIM))


# --- bad inputs ------------------------------------------------------------------------------

def _bad_calls():
    def encode(mel=None, windows=None, lengths=None):
        return lambda model: model.encode_audio(
            torch.randn(2, 20, 80) if mel is None else mel,
            torch.randn(2, 3, SLICE, 80) if windows is None else windows, lengths)

    def forward(**overrides):
        def call(model):
            inputs = denoiser_inputs(2, 5)
            inputs.update(overrides)
            return model(**inputs)
        return call

    def generate(frames=5, appearance_dim=APPEARANCE_DIM):
        def call(model):
            f_ag, f_al, _ = conditions(1, frames)
            return model.generate(f_ag, f_al, torch.randn(1, appearance_dim), steps=1)
        return call

    def loss(frames=5, weights=(1.0, 1.0, 1.0, 1.0)):
        def call(model):
            f_ag, f_al, f_a = conditions(2, frames)
            return model.training_loss(torch.randn(2, frames, MOTION_DIM), f_ag, f_al,
                                       torch.zeros(2, CFG.prev_frames, MOTION_DIM), f_a, weights)
        return call

    return [
        ("mel 81 bins", encode(mel=torch.randn(2, 20, 81)), "mel must have shape"),
        ("slice length", encode(windows=torch.randn(2, 3, SLICE - 1, 80)), "local_windows"),
        ("batch mismatch", encode(windows=torch.randn(3, 3, SLICE, 80)), "local_windows"),
        ("no video frames", encode(windows=torch.randn(2, 0, SLICE, 80)), "T = 0"),
        ("lengths range", encode(lengths=torch.tensor([20, 21])), "lengths must lie"),
        ("lengths dtype", encode(lengths=torch.tensor([20.0, 3.0])), "lengths must be an integer"),
        ("x_t features", forward(x_t=torch.randn(2, 5, MOTION_DIM + 1)), "x_t must have shape"),
        ("window overflow", forward(x_t=torch.randn(2, 26, MOTION_DIM),
                                    audio_local=torch.randn(2, 26, CFG.audio_dim)),
         "config.window = 25"),
        ("audio_local frames", forward(audio_local=torch.randn(2, 4, CFG.audio_dim)),
         "audio_local must have shape"),
        ("prev_motion frames", forward(prev_motion=torch.randn(2, 3, MOTION_DIM)),
         "prev_motion must have shape"),
        ("appearance size", forward(appearance=torch.randn(2, APPEARANCE_DIM + 2)),
         "appearance must have shape"),
        ("t dtype", forward(t=torch.zeros(2)), "t must be an integer"),
        ("generate T=0", generate(frames=0), "T = 0"),
        ("generate appearance", generate(appearance_dim=3), "appearance must have shape"),
        ("loss two frames", loss(frames=2), "between 3"),
        ("loss weights", loss(weights=(1.0, 1.0, 1.0)), "weights must be 4"),
        ("loss negative weight", loss(weights=(1.0, -1.0, 1.0, 1.0)), "weights must be 4"),
    ]


@pytest.mark.parametrize("case", _bad_calls(), ids=lambda case: case[0])
def test_bad_inputs_raise_clear_errors(case):
    _, call, message = case
    model = make_generator(perturb_head=False)
    with pytest.raises(ValueError, match=message):
        call(model)


def test_normalize_rejects_wrong_feature_size():
    model = make_generator(perturb_head=False)
    with pytest.raises(ValueError, match="motion_dim = 192"):
        model.normalize(torch.randn(2, 3, MOTION_DIM - 1))
