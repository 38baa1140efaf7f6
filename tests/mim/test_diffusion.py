"""Stage-2 diffusion: noise schedules, DDPM/DDIM sampling (DDIM with steps = T and η = 1 is DDPM
given the same draws), classifier-free guidance and condition dropout, eqs. 4-7."""
import math

import pytest
import torch

from mim.diffusion import (
    NoiseSchedule,
    acceleration_loss,
    ddim_sample,
    ddim_timesteps,
    ddpm_sample,
    drop_condition,
    eps_loss,
    guided_eps,
    motion_mse,
    velocity_loss,
)


def toy_model(x_t, t, shift=0.0):
    """A deterministic stand-in for ε_θ: ε̂ = 0.1 x_t + sin(t) (+ a condition shift)."""
    return 0.1 * x_t + torch.sin(t.to(x_t.dtype)).view(-1, 1, 1) + shift


def oracle_model(schedule, x0):
    """ε_θ that returns the true noise of x_t for the known clean sample x0."""
    def model(x_t, t):
        return schedule.predict_eps(x_t, t, x0)
    return model


def full_t(value, batch):
    return torch.full((batch,), value, dtype=torch.long)


# --- schedules -------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["cosine", "linear"])
@pytest.mark.parametrize("num_steps", [1, 20, 1000])
def test_alpha_bars_decrease_strictly_inside_unit_interval(kind, num_steps):
    schedule = NoiseSchedule(num_steps, kind)
    ab = schedule.alpha_bars
    assert ab.dtype == torch.float64 and ab.shape == (num_steps,)
    assert bool((ab > 0).all()) and bool((ab <= 1).all())
    assert bool((ab[1:] < ab[:-1]).all())
    assert bool((schedule.betas > 0).all()) and bool((schedule.betas <= 0.999).all())
    assert torch.allclose(schedule.alphas, 1 - schedule.betas, rtol=0, atol=0)


def test_cosine_betas_follow_nichol_dhariwal():
    T, s = 1000, 0.008

    def f(u):
        return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2

    schedule = NoiseSchedule(T, "cosine")
    assert schedule.betas[0].item() == pytest.approx(1 - f(1 / T) / f(0), rel=1e-12)
    for t in (0, 10, 500, 900):  # below the clipping, ᾱ_t = f((t + 1)/T) / f(0)
        assert schedule.alpha_bars[t].item() == pytest.approx(f((t + 1) / T) / f(0), rel=1e-9)
    assert schedule.betas[-1].item() == 0.999  # 1 − f(1)/f((T−1)/T) ≈ 1, clipped


def test_linear_betas_span_the_stated_range():
    schedule = NoiseSchedule(20, "linear")
    assert schedule.betas[0].item() == pytest.approx(1e-4, rel=1e-12)
    assert schedule.betas[-1].item() == pytest.approx(0.02, rel=1e-12)
    steps = torch.diff(schedule.betas)
    assert torch.allclose(steps, torch.full_like(steps, (0.02 - 1e-4) / 19), rtol=1e-9, atol=0)


@pytest.mark.parametrize("kind", ["cosine", "linear"])
def test_q_sample_statistics(kind):
    schedule = NoiseSchedule(1000, kind)
    generator = torch.Generator().manual_seed(1)
    batch, t_value = 4, 300
    x0 = torch.full((batch, 50, 400), 1.5, dtype=torch.float64)
    noise = torch.randn(x0.shape, generator=generator, dtype=torch.float64)
    x_t = schedule.q_sample(x0, full_t(t_value, batch), noise)
    ab = schedule.alpha_bars[t_value].item()
    n = x_t.numel()
    variance = 1 - ab
    assert abs(x_t.mean().item() - math.sqrt(ab) * 1.5) < 5 * math.sqrt(variance / n)
    assert abs(x_t.var().item() - variance) < 5 * variance * math.sqrt(2 / n)


@pytest.mark.parametrize("kind", ["cosine", "linear"])
def test_predict_x0_and_predict_eps_invert_q_sample(kind):
    schedule = NoiseSchedule(1000, kind)
    x0 = torch.randn(5, 7, 3, dtype=torch.float64)
    noise = torch.randn(5, 7, 3, dtype=torch.float64)
    t = torch.tensor([0, 1, 499, 998, 999])
    x_t = schedule.q_sample(x0, t, noise)
    torch.testing.assert_close(schedule.predict_x0(x_t, t, noise), x0, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(schedule.predict_eps(x_t, t, x0), noise, rtol=1e-12, atol=1e-12)


def test_q_sample_uses_each_rows_timestep_and_keeps_float32():
    schedule = NoiseSchedule(100, "cosine")
    x0 = torch.randn(3, 4, 2)
    noise = torch.randn(3, 4, 2)
    t = torch.tensor([5, 50, 99])
    x_t = schedule.q_sample(x0, t, noise)
    assert x_t.dtype == torch.float32
    for row in range(3):
        ab = schedule.alpha_bars[t[row]].item()
        expected = math.sqrt(ab) * x0[row] + math.sqrt(1 - ab) * noise[row]
        torch.testing.assert_close(x_t[row], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["cosine", "linear"])
def test_posterior_variance_by_hand(kind):
    schedule = NoiseSchedule(50, kind)
    betas = schedule.betas.tolist()
    for t in (0, 1, 17, 49):
        ab_t = math.prod(1 - b for b in betas[: t + 1])
        ab_prev = math.prod(1 - b for b in betas[:t])  # empty product = 1 at t = 0
        expected = betas[t] * (1 - ab_prev) / (1 - ab_t)
        x = torch.zeros(2, 3, 4, dtype=torch.float64)
        _, variance = schedule.posterior(x, x, full_t(t, 2))
        assert variance.shape == (2, 1, 1)
        assert variance[0, 0, 0].item() == pytest.approx(expected, rel=1e-12, abs=1e-300)
    assert schedule.posterior_variances[0].item() == 0.0


@pytest.mark.parametrize("kind", ["cosine", "linear"])
def test_posterior_marginalizes_to_q_of_previous_step(kind):
    """μ̃ = c0 x0 + ct x_t; averaging over x_t ~ q(x_t|x0) must give q(x_{t−1}|x0):
    c0 + ct √ᾱ_t = √ᾱ_{t−1} and ct² (1 − ᾱ_t) + β̃_t = 1 − ᾱ_{t−1}."""
    schedule = NoiseSchedule(200, kind)
    ones = torch.ones(1, 1, 1, dtype=torch.float64)
    zeros = torch.zeros_like(ones)
    for t in (1, 2, 100, 199):
        tt = full_t(t, 1)
        c0 = schedule.posterior(ones, zeros, tt)[0].item()
        ct, variance = (v.item() for v in schedule.posterior(zeros, ones, tt))
        ab, ab_prev = schedule.alpha_bars[t].item(), schedule.alpha_bars[t - 1].item()
        assert c0 + ct * math.sqrt(ab) == pytest.approx(math.sqrt(ab_prev), rel=1e-12)
        assert ct ** 2 * (1 - ab) + variance == pytest.approx(1 - ab_prev, rel=1e-12)


# --- samplers --------------------------------------------------------------------------------

@pytest.mark.parametrize("num_steps,steps", [(1000, 50), (1000, 1000), (20, 7), (20, 2),
                                             (10, 1), (7, 6)])
def test_ddim_timesteps_even_and_including_both_ends(num_steps, steps):
    timesteps = ddim_timesteps(num_steps, steps)
    assert timesteps.dtype == torch.long and timesteps.shape == (steps,)
    assert timesteps[0].item() == num_steps - 1
    if steps > 1:
        assert timesteps[-1].item() == 0
        gaps = (-torch.diff(timesteps)).tolist()
        assert min(gaps) >= 1 and max(gaps) - min(gaps) <= 1
    if steps == num_steps:
        assert timesteps.tolist() == list(range(num_steps - 1, -1, -1))


def test_ddim_timesteps_round_half_up():
    # τ_i = round(i · 19/6) = round(0, 3.17, 6.33, 9.5, 12.67, 15.83, 19), reversed
    assert ddim_timesteps(20, 7).tolist() == [19, 16, 13, 10, 6, 3, 0]
    # 999/49 = 20.39: τ_1 = 20, τ_48 = round(978.6) = 979
    timesteps = ddim_timesteps(1000, 50).tolist()
    assert timesteps[:2] == [999, 979] and timesteps[-2:] == [20, 0]
    assert ddim_timesteps(1, 1).tolist() == [0]


def test_ddim_calls_the_model_on_its_timesteps_in_order():
    schedule = NoiseSchedule(1000)
    seen = []

    def model(x_t, t):
        seen.append(t.tolist())
        return toy_model(x_t, t)

    ddim_sample(model, (3, 4, 2), schedule, steps=50, generator=torch.Generator().manual_seed(0))
    assert seen == [[step] * 3 for step in ddim_timesteps(1000, 50).tolist()]


@pytest.mark.parametrize("num_steps,shape,kind,clip", [
    (20, (2, 5, 3), "cosine", None),
    (20, (2, 5, 3), "linear", None),
    (20, (2, 5, 3), "cosine", 0.5),
    (1000, (1, 2, 2), "cosine", None),
])
def test_ddim_full_steps_eta_one_equals_ddpm_with_shared_noises(num_steps, shape, kind, clip):
    schedule = NoiseSchedule(num_steps, kind)
    noises = torch.randn((num_steps, *shape), dtype=torch.float64)
    ddpm = ddpm_sample(toy_model, shape, schedule, noises=noises, clip_x0=clip)
    ddim = ddim_sample(toy_model, shape, schedule, steps=num_steps, eta=1.0, noises=noises,
                       clip_x0=clip)
    assert ddpm.dtype == torch.float64 and bool(torch.isfinite(ddpm).all())
    torch.testing.assert_close(ddim, ddpm, rtol=1e-9, atol=1e-9)
    if clip is not None:
        assert float(ddpm.abs().max()) <= clip + 1e-12  # the t = 0 step returns x̂_0


def test_ddim_eta_one_equals_ddpm_with_equal_generators():
    schedule = NoiseSchedule(20)
    shape = (2, 3, 4)
    ddpm = ddpm_sample(toy_model, shape, schedule, dtype=torch.float64,
                       generator=torch.Generator().manual_seed(7))
    ddim = ddim_sample(toy_model, shape, schedule, steps=20, eta=1.0, dtype=torch.float64,
                       generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(ddim, ddpm, rtol=1e-9, atol=1e-9)


def test_ddpm_reads_the_noises_it_is_given():
    schedule = NoiseSchedule(20)
    noises = torch.randn(20, 2, 3, 4, dtype=torch.float64)
    base = ddpm_sample(toy_model, (2, 3, 4), schedule, noises=noises)
    for k in (0, 5, 19):  # x_T, a middle z, the z of the step into t = 0
        changed = noises.clone()
        changed[k] += 1.0
        assert not torch.allclose(ddpm_sample(toy_model, (2, 3, 4), schedule, noises=changed),
                                  base)
    assert torch.equal(ddpm_sample(toy_model, (2, 3, 4), schedule, noises=list(noises)), base)


def test_ddim_eta_zero_reads_no_z_and_draws_nothing_after_x_T():
    schedule = NoiseSchedule(1000)
    shape = (2, 6, 3)
    noises = torch.full((50, *shape), float("nan"), dtype=torch.float64)
    noises[0] = torch.randn(shape, dtype=torch.float64)
    out = ddim_sample(toy_model, shape, schedule, steps=50, eta=0.0, noises=noises)
    assert bool(torch.isfinite(out).all())
    torch.testing.assert_close(
        ddim_sample(toy_model, shape, schedule, steps=50, noises=noises), out, rtol=0, atol=0)

    generator = torch.Generator().manual_seed(3)
    ddim_sample(toy_model, shape, schedule, steps=50, generator=generator)
    reference = torch.Generator().manual_seed(3)
    torch.randn(shape, generator=reference)  # x_T only
    assert torch.equal(generator.get_state(), reference.get_state())


@pytest.mark.parametrize("steps", [1, 10, 50])
def test_ddim_eta_zero_with_oracle_recovers_x0(steps):
    schedule = NoiseSchedule(1000)
    x0 = torch.randn(3, 8, 5, dtype=torch.float64)
    out = ddim_sample(oracle_model(schedule, x0), x0.shape, schedule, steps=steps,
                      generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(out, x0, rtol=1e-9, atol=1e-9)


def test_ddpm_with_oracle_recovers_x0():
    schedule = NoiseSchedule(100, "linear")
    x0 = torch.randn(2, 4, 3, dtype=torch.float64)
    out = ddpm_sample(oracle_model(schedule, x0), x0.shape, schedule,
                      generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(out, x0, rtol=1e-9, atol=1e-9)


def test_sampler_dtype_and_device_defaults():
    schedule = NoiseSchedule(10)
    out = ddim_sample(toy_model, (1, 2, 3), schedule, steps=5,
                      generator=torch.Generator().manual_seed(0))
    assert out.dtype == torch.float32 and out.device.type == "cpu" and out.shape == (1, 2, 3)


# --- guidance --------------------------------------------------------------------------------

def test_guided_eps_scales():
    x_t = torch.randn(2, 3, 4, dtype=torch.float64)
    t = torch.tensor([3, 9])
    cond, uncond = {"shift": 2.0}, {"shift": -1.0}
    eps_c, eps_u = toy_model(x_t, t, 2.0), toy_model(x_t, t, -1.0)
    assert torch.equal(guided_eps(toy_model, x_t, t, cond, uncond, 0.0), eps_u)
    assert torch.equal(guided_eps(toy_model, x_t, t, cond, uncond, 1.0), eps_c)
    assert torch.equal(guided_eps(toy_model, x_t, t, cond, None, 1.0), eps_c)
    torch.testing.assert_close(guided_eps(toy_model, x_t, t, cond, uncond, 2.0),
                               2 * eps_c - eps_u, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(guided_eps(toy_model, x_t, t, cond, uncond, 2.0),
                               toy_model(x_t, t, 5.0), rtol=1e-12, atol=1e-12)


def test_guided_eps_scale_one_calls_the_model_once():
    calls = []

    def model(x_t, t, shift):
        calls.append(shift)
        return toy_model(x_t, t, shift)

    guided_eps(model, torch.zeros(1, 2, 2), torch.tensor([0]), {"shift": 1.0}, {"shift": 0.0}, 1)
    assert calls == [1.0]


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_samplers_apply_guidance(sampler):
    """With ε̂ affine in the shift, scale 2 between shifts 2 and −1 is the plain model at shift 5;
    ``uncond`` may be a mapping or a function of ``cond``."""
    schedule = NoiseSchedule(30)
    shape = (2, 4, 3)
    noises = torch.randn(30, *shape, dtype=torch.float64)
    kwargs = dict(noises=noises) if sampler == "ddpm" else dict(noises=noises, steps=30, eta=1.0)
    run = ddpm_sample if sampler == "ddpm" else ddim_sample
    expected = run(toy_model, shape, schedule, cond={"shift": 5.0}, **kwargs)
    guided = run(toy_model, shape, schedule, cond={"shift": 2.0}, uncond={"shift": -1.0},
                 guidance_scale=2.0, **kwargs)
    built = run(toy_model, shape, schedule, cond={"shift": 2.0},
                uncond=lambda c: {"shift": -c["shift"] / 2}, guidance_scale=2.0, **kwargs)
    torch.testing.assert_close(guided, expected, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(built, guided, rtol=0, atol=0)


def test_drop_condition_zeros_about_p_of_the_rows():
    cond = torch.rand(20000, 3, 2) + 1.0
    dropped, mask = drop_condition(cond, 0.25, torch.Generator().manual_seed(0))
    assert mask.dtype == torch.bool and mask.shape == (20000,)
    assert abs(mask.float().mean().item() - 0.25) < 0.015
    assert bool((dropped[mask] == 0).all())
    assert torch.equal(dropped[~mask], cond[~mask])
    assert bool((cond > 0).all())  # input untouched
    _, none = drop_condition(cond, 0.0)
    _, every = drop_condition(cond, 1.0)
    assert not none.any() and every.all()


# --- losses (eqs. 4-7) -----------------------------------------------------------------------

B, M, D = 2, 4, 3
M_TRUE = torch.tensor([[[(b * 7 + m * m * 3 + d) % 5 for d in range(D)] for m in range(M)]
                       for b in range(B)], dtype=torch.float64)
M_PRED = torch.tensor([[[(b + 2 * m + d * d) % 4 - 1 for d in range(D)] for m in range(M)]
                       for b in range(B)], dtype=torch.float64)


def test_eps_loss_hand_computed():
    total = sum((M_TRUE[b, m, d].item() - M_PRED[b, m, d].item()) ** 2
                for b in range(B) for m in range(M) for d in range(D))
    assert eps_loss(M_TRUE, M_PRED).item() == pytest.approx(total / (B * M * D), rel=1e-12)


def test_motion_mse_hand_computed():
    per_window = []
    for b in range(B):
        squared_norm = sum((M_TRUE[b, m, d].item() - M_PRED[b, m, d].item()) ** 2
                           for m in range(M) for d in range(D))
        per_window.append(squared_norm / (M * D))
    assert motion_mse(M_TRUE, M_PRED).item() == pytest.approx(sum(per_window) / B, rel=1e-12)
    assert motion_mse(M_TRUE, M_TRUE).item() == 0.0


def test_velocity_loss_hand_computed():
    def f(x, b, k, d):  # f_k(x) = x^(k) − x^(k−1), 1-based frames
        return x[b, k - 1, d].item() - x[b, k - 2, d].item()

    per_window = []
    for b in range(B):
        total = 0.0
        for m in range(1, M):
            total += sum((f(M_TRUE, b, m + 1, d) - f(M_PRED, b, m + 1, d)) ** 2 for d in range(D))
        per_window.append(total / (M - 1) / D)
    assert velocity_loss(M_TRUE, M_PRED).item() == pytest.approx(sum(per_window) / B, rel=1e-12)
    shifted = M_TRUE + torch.arange(D, dtype=torch.float64)  # constant offsets have no velocity
    assert velocity_loss(M_TRUE, shifted).item() == 0.0


def test_acceleration_loss_hand_computed():
    def f(x, b, k, d):
        return x[b, k - 1, d].item() - x[b, k - 2, d].item()

    per_window = []
    for b in range(B):
        total = 0.0
        for m in range(1, M - 1):
            total += sum(((f(M_TRUE, b, m + 2, d) - f(M_TRUE, b, m + 1, d))
                          - (f(M_PRED, b, m + 2, d) - f(M_PRED, b, m + 1, d))) ** 2
                         for d in range(D))
        per_window.append(total / (M - 2) / D)
    assert acceleration_loss(M_TRUE, M_PRED).item() == pytest.approx(sum(per_window) / B,
                                                                      rel=1e-12)
    ramp = M_TRUE + 0.5 * torch.arange(M, dtype=torch.float64).view(1, M, 1)
    assert acceleration_loss(M_TRUE, ramp).item() == pytest.approx(0.0, abs=1e-24)


# --- bad inputs ------------------------------------------------------------------------------

def test_schedule_rejects_bad_arguments():
    with pytest.raises(ValueError, match="kind"):
        NoiseSchedule(100, "quadratic")
    for num_steps in (0, -5, 2.5, True):
        with pytest.raises(ValueError, match="num_steps"):
            NoiseSchedule(num_steps)


def test_timesteps_out_of_range_or_malformed():
    schedule = NoiseSchedule(10)
    x = torch.zeros(2, 3, 4)
    for t, message in ((torch.tensor([0, 10]), r"t must lie in \[0, 9\]"),
                       (torch.tensor([-1, 0]), r"t must lie in \[0, 9\]"),
                       (torch.tensor([0.0, 1.0]), "t must be an integer"),
                       (torch.tensor([1, 2, 3]), r"t must have shape \(B,\) = \(2,\)"),
                       ([1, 2], "t must be an integer torch.Tensor")):
        with pytest.raises((ValueError, TypeError), match=message):
            schedule.q_sample(x, t, x)
    with pytest.raises(ValueError, match="noise must have the shape of x0"):
        schedule.q_sample(x, torch.tensor([0, 1]), torch.zeros(2, 3, 5))
    with pytest.raises(ValueError, match="eps must have the shape of x_t"):
        schedule.predict_x0(x, torch.tensor([0, 1]), torch.zeros(2, 3))


def test_ddim_rejects_bad_steps_and_eta():
    schedule = NoiseSchedule(20)
    for steps in (0, 21, -1, 2.0):
        with pytest.raises(ValueError, match="steps must be an integer in"):
            ddim_sample(toy_model, (1, 2, 2), schedule, steps=steps)
    for eta in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="eta"):
            ddim_sample(toy_model, (1, 2, 2), schedule, steps=5, eta=eta)


def test_samplers_reject_bad_draws_shapes_and_conditions():
    schedule = NoiseSchedule(5)
    shape = (1, 2, 2)
    with pytest.raises(ValueError, match="noises must hold 5 draws"):
        ddpm_sample(toy_model, shape, schedule, noises=torch.zeros(4, *shape))
    with pytest.raises(ValueError, match=r"noises\[2\] must have shape \(1, 2, 2\)"):
        ddpm_sample(toy_model, shape, schedule,
                    noises=[torch.zeros(shape)] * 2 + [torch.zeros(1, 2, 3)] * 3)
    with pytest.raises(ValueError, match="either generator or noises"):
        ddim_sample(toy_model, shape, schedule, steps=5, noises=torch.zeros(5, *shape),
                    generator=torch.Generator())
    with pytest.raises(ValueError, match="shape must be"):
        ddim_sample(toy_model, (2, 3), schedule, steps=2)
    with pytest.raises(ValueError, match="uncond must be given"):
        ddim_sample(toy_model, shape, schedule, steps=2, guidance_scale=2.0)
    with pytest.raises(ValueError, match="clip_x0"):
        ddpm_sample(toy_model, shape, schedule, clip_x0=0.0)
    with pytest.raises(ValueError, match="model must return eps_hat"):
        ddpm_sample(lambda x_t, t: x_t[:, :1], shape, schedule)


def test_losses_reject_bad_shapes():
    m = torch.zeros(2, 4, 3)
    with pytest.raises(ValueError, match=r"m_hat must have the shape of m \(2, 4, 3\)"):
        motion_mse(m, torch.zeros(2, 4, 2))
    with pytest.raises(ValueError, match=r"m must have shape \(B, M, D\)"):
        velocity_loss(torch.zeros(4, 3), torch.zeros(4, 3))
    with pytest.raises(ValueError, match="eps_hat must have the shape of eps"):
        eps_loss(torch.zeros(2, 3), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="velocity_loss needs at least 2 frames"):
        velocity_loss(torch.zeros(2, 1, 3), torch.zeros(2, 1, 3))
    with pytest.raises(ValueError, match="acceleration_loss needs at least 3 frames"):
        acceleration_loss(torch.zeros(2, 2, 3), torch.zeros(2, 2, 3))


def test_drop_condition_and_guidance_reject_bad_arguments():
    for p in (-0.1, 1.5, "0.5"):
        with pytest.raises(ValueError, match="p must be a probability"):
            drop_condition(torch.zeros(4, 2), p)
    with pytest.raises(ValueError, match="uncond must be given"):
        guided_eps(toy_model, torch.zeros(1, 2, 2), torch.tensor([0]), {}, None, 2.0)
    with pytest.raises(ValueError, match="scale must be a finite number"):
        guided_eps(toy_model, torch.zeros(1, 2, 2), torch.tensor([0]), {}, {}, float("inf"))
