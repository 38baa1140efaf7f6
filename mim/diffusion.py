"""Stage-2 diffusion (paper §III-B, eqs. 4-7): the noise schedule, DDPM ancestral and DDIM
sampling with classifier-free guidance, training-time condition dropout, and the stage-2 loss
terms (eq. 7 on the noise, eqs. 4-6 on the motion; ``MotionGenerator.training_loss`` in
mim.models.motion combines them into the objective the trainer uses).

A window of motion features M_D is a float tensor ``(B, M, D)``: B windows, M frames, D features.
The denoiser ε_θ is any callable ``model(x_t, t, **cond) -> eps_hat`` with ``x_t`` and ``eps_hat``
of shape ``(B, M, D)`` and ``t`` a LongTensor ``(B,)`` of timestep indices in ``[0, T)``.

Timestep ``t`` (0-based) is the state after ``t + 1`` noising steps: ᾱ_t = Π_{j ≤ t} (1 − β_j),
and x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε. "ᾱ_{t−1}" at t = 0 is 1 (the clean sample).

Noise draws. Both samplers make ``n`` updates (DDPM: ``n = T``; DDIM: ``n = steps``) and read the
same draws: draw 0 is the starting x_T, and draw k (k = 1 … n − 1) is the z added by update k;
the last update, which lands on the clean sample, adds no noise. Pass ``noises`` (a tensor
``(n, B, M, D)`` or a sequence of n tensors ``(B, M, D)``) to fix every draw, or a
``torch.Generator`` to draw them with ``torch.randn`` in that order. DDIM with η = 0 never reads
(nor draws) z.
"""
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Optional, Union

import torch

COSINE_OFFSET = 0.008  # s in Nichol & Dhariwal's cosine schedule
MAX_BETA = 0.999  # cosine betas are clipped to this, as in Nichol & Dhariwal
LINEAR_BETA_START = 1e-4
LINEAR_BETA_END = 0.02
SCHEDULE_KINDS = ("cosine", "linear")
LOSS_TERMS = ("simple", "mse", "velocity", "acceleration")

Condition = Mapping[str, object]
UncondSpec = Union[Condition, Callable[[Condition], Condition], None]


def _check_float_tensor(value, name):
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {value.dtype}")


def _check_same_shape(value, name, reference, reference_name):
    _check_float_tensor(value, name)
    if value.shape != reference.shape:
        raise ValueError(f"{name} must have the shape of {reference_name} "
                         f"{tuple(reference.shape)}, got {tuple(value.shape)}")


class NoiseSchedule:
    """The forward process q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I) over ``num_steps`` = T steps.

    ``kind="cosine"``: ᾱ(u) = f(u) / f(0) with f(u) = cos²(π/2 · (u + s) / (1 + s)), s = 0.008,
    β_t = min(1 − ᾱ((t + 1)/T) / ᾱ(t/T), 0.999) (Nichol & Dhariwal 2021).
    ``kind="linear"``: β_t evenly spaced from 1e-4 to 0.02 whatever T is (Ho et al. 2020; not
    rescaled for T ≠ 1000).

    The float64 tensors ``betas``, ``alphas``, ``alpha_bars``, ``alpha_bars_prev`` (ᾱ_{t−1}, 1 at
    t = 0) and ``posterior_variances`` (β̃_t) have shape ``(T,)``. The methods take ``t`` as an
    integer tensor ``(B,)`` and broadcast the coefficients over the other dimensions of ``x``; they
    compute in ``x``'s dtype and device.
    """

    def __init__(self, num_steps: int = 1000, kind: str = "cosine"):
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(f"num_steps must be an integer >= 1, got {num_steps!r}")
        if kind not in SCHEDULE_KINDS:
            raise ValueError(f"kind must be one of {SCHEDULE_KINDS}, got {kind!r}")
        self.num_steps = num_steps
        self.kind = kind
        if kind == "cosine":
            u = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
            f = torch.cos((u + COSINE_OFFSET) / (1 + COSINE_OFFSET) * (math.pi / 2)) ** 2
            betas = (1 - f[1:] / f[:-1]).clamp(max=MAX_BETA)
        else:
            betas = torch.linspace(LINEAR_BETA_START, LINEAR_BETA_END, num_steps,
                                   dtype=torch.float64)
        self.betas = betas
        self.alphas = 1 - betas
        self.alpha_bars = torch.cumprod(self.alphas, dim=0)
        self.alpha_bars_prev = torch.cat([torch.ones(1, dtype=torch.float64),
                                          self.alpha_bars[:-1]])
        self.posterior_variances = (betas * (1 - self.alpha_bars_prev) / (1 - self.alpha_bars))
        self._posterior_coef_x0 = betas * self.alpha_bars_prev.sqrt() / (1 - self.alpha_bars)
        self._posterior_coef_xt = ((1 - self.alpha_bars_prev) * self.alphas.sqrt()
                                   / (1 - self.alpha_bars))
        self._device_alpha_bars: Optional[torch.Tensor] = None

    def check_timesteps(self, t, batch_size):
        """Raise an error naming ``t`` unless it is an integer tensor ``(batch_size,)`` of
        timesteps in ``[0, T)``."""
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"t must be an integer torch.Tensor of shape (B,), "
                            f"got {type(t).__name__}")
        if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
            raise ValueError(f"t must be an integer tensor, got {t.dtype}")
        if t.shape != (batch_size,):
            raise ValueError(f"t must have shape (B,) = ({batch_size},), got {tuple(t.shape)}")
        # The range check reads t on the host: skipped while torch.compile traces or a CUDA graph
        # is captured (the capturable sampler, ddim_window, builds t itself from its plan).
        if not batch_size or torch.compiler.is_compiling() or (
                t.is_cuda and torch.cuda.is_current_stream_capturing()):
            return
        if int(t.min()) < 0 or int(t.max()) >= self.num_steps:
            raise ValueError(f"t must lie in [0, {self.num_steps - 1}], got values in "
                             f"[{int(t.min())}, {int(t.max())}]")

    def alpha_bars_on(self, device) -> torch.Tensor:
        """ᾱ_t ``(T,)`` float64 on ``device``. The copy to another device is made on the first
        call and kept, so a gather by a device ``t`` after it copies nothing from the host (a
        CUDA-graph capture allows no such copy)."""
        device = torch.device(device)
        if device == self.alpha_bars.device:
            return self.alpha_bars
        if self._device_alpha_bars is None or self._device_alpha_bars.device != device:
            self._device_alpha_bars = self.alpha_bars.to(device)
        return self._device_alpha_bars

    def _gather(self, values, t, x):
        """``values[t]`` as a ``(B, 1, …, 1)`` tensor in ``x``'s dtype and device."""
        self.check_timesteps(t, x.shape[0])
        picked = values[t.to(values.device)]
        return picked.to(device=x.device, dtype=x.dtype).view((-1,) + (1,) * (x.ndim - 1))

    def _check_x(self, x, name):
        _check_float_tensor(x, name)
        if x.ndim < 1:
            raise ValueError(f"{name} must have a batch dimension, got a 0-d tensor")

    def q_sample(self, x0, t, noise):
        """x_t = √ᾱ_t x0 + √(1 − ᾱ_t) noise."""
        self._check_x(x0, "x0")
        _check_same_shape(noise, "noise", x0, "x0")
        alpha_bar = self._gather(self.alpha_bars, t, x0)
        return alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise

    def predict_x0(self, x_t, t, eps):
        """x̂_0 = (x_t − √(1 − ᾱ_t) ε) / √ᾱ_t: the clean sample implied by a noise estimate."""
        self._check_x(x_t, "x_t")
        _check_same_shape(eps, "eps", x_t, "x_t")
        alpha_bar = self._gather(self.alpha_bars, t, x_t)
        return (x_t - (1 - alpha_bar).sqrt() * eps) / alpha_bar.sqrt()

    def predict_eps(self, x_t, t, x0):
        """ε = (x_t − √ᾱ_t x0) / √(1 − ᾱ_t): the noise implied by a clean-sample estimate."""
        self._check_x(x_t, "x_t")
        _check_same_shape(x0, "x0", x_t, "x_t")
        alpha_bar = self._gather(self.alpha_bars, t, x_t)
        return (x_t - alpha_bar.sqrt() * x0) / (1 - alpha_bar).sqrt()

    def posterior(self, x0, x_t, t):
        """Mean and variance of q(x_{t−1} | x_t, x_0):
        μ̃ = β_t √ᾱ_{t−1} / (1 − ᾱ_t) · x0 + (1 − ᾱ_{t−1}) √α_t / (1 − ᾱ_t) · x_t and
        β̃_t = β_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t) (0 at t = 0). The variance has shape ``(B, 1, …, 1)``.
        """
        self._check_x(x_t, "x_t")
        _check_same_shape(x0, "x0", x_t, "x_t")
        mean = (self._gather(self._posterior_coef_x0, t, x_t) * x0
                + self._gather(self._posterior_coef_xt, t, x_t) * x_t)
        return mean, self._gather(self.posterior_variances, t, x_t)


def drop_condition(cond, p, generator=None):
    """Classifier-free-guidance training: zero the condition of each batch row with probability
    ``p``. ``cond`` is a tensor ``(B, …)``; returns ``(dropped, mask)`` where ``mask`` is a bool
    ``(B,)`` tensor, True for the rows that were zeroed. ``cond`` itself is not modified."""
    _check_float_tensor(cond, "cond")
    if cond.ndim < 1:
        raise ValueError("cond must have a batch dimension, got a 0-d tensor")
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
        raise ValueError(f"p must be a probability in [0, 1], got {p!r}")
    draws = torch.rand(cond.shape[0], generator=generator, device=cond.device)
    mask = draws < p
    keep = (~mask).to(cond.dtype).view((-1,) + (1,) * (cond.ndim - 1))
    return cond * keep, mask


def _call_model(model, x_t, t, cond):
    eps = model(x_t, t, **cond)
    if not isinstance(eps, torch.Tensor) or eps.shape != x_t.shape:
        got = tuple(eps.shape) if isinstance(eps, torch.Tensor) else type(eps).__name__
        raise ValueError(f"model must return eps_hat of the shape of x_t {tuple(x_t.shape)}, "
                         f"got {got}")
    return eps


def guided_eps(model, x_t, t, cond, uncond, scale):
    """Classifier-free guidance: ε̂ = ε_u + scale · (ε_c − ε_u), where ε_c = model(x_t, t, **cond)
    and ε_u = model(x_t, t, **uncond). ``scale = 0`` is the unconditional model, ``scale = 1`` the
    conditional one (returned as is, with one model call; ``uncond`` may then be None), and
    S2G-MDDiffusion's weight 2 extrapolates past it."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"scale must be a finite number, got {scale!r}")
    cond = {} if cond is None else cond
    eps_cond = _call_model(model, x_t, t, cond)
    if scale == 1:
        return eps_cond
    if uncond is None:
        raise ValueError(f"uncond must be given when the guidance scale is not 1 (got {scale})")
    eps_uncond = _call_model(model, x_t, t, uncond)
    return eps_uncond + scale * (eps_cond - eps_uncond)


def _resolve_conditions(cond, uncond, guidance_scale):
    """The conditional and unconditional keyword dicts for the samplers: ``uncond`` may be a dict
    or a function of ``cond`` that builds it."""
    cond = {} if cond is None else cond
    if not isinstance(cond, Mapping):
        raise TypeError(f"cond must be a mapping of model keyword arguments, "
                        f"got {type(cond).__name__}")
    if callable(uncond):
        uncond = uncond(cond)
    if uncond is not None and not isinstance(uncond, Mapping):
        raise TypeError(f"uncond must be a mapping of model keyword arguments or a function "
                        f"building one from cond, got {type(uncond).__name__}")
    if uncond is None and guidance_scale != 1:
        raise ValueError(f"uncond must be given when guidance_scale is not 1 "
                         f"(got {guidance_scale})")
    return cond, uncond


class _NoiseDraws:
    """The ``count`` draws of one sampling run (see the module docstring), from ``noises`` or a
    generator."""

    def __init__(self, shape, count, generator, noises, dtype, device):
        if (not isinstance(shape, (tuple, list)) or len(shape) != 3
                or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1
                           for n in shape)):
            raise ValueError(f"shape must be (B, M, D) with positive integers, got {shape!r}")
        self.shape = tuple(shape)
        if noises is not None:
            if generator is not None:
                raise ValueError("pass either generator or noises, not both")
            if dtype is not None or device is not None:
                raise ValueError("dtype and device come from noises; pass them only without noises")
            if not isinstance(noises, (torch.Tensor, Sequence)) or len(noises) != count:
                length = len(noises) if isinstance(noises, (torch.Tensor, Sequence)) else "none"
                raise ValueError(f"noises must hold {count} draws (x_T and one z per update but "
                                 f"the last), got {length}")
            for k, noise in enumerate(noises):
                _check_float_tensor(noise, f"noises[{k}]")
                if tuple(noise.shape) != self.shape:
                    raise ValueError(f"noises[{k}] must have shape {self.shape}, "
                                     f"got {tuple(noise.shape)}")
            self.dtype, self.device = noises[0].dtype, noises[0].device
        else:
            self.dtype = torch.get_default_dtype() if dtype is None else dtype
            self.device = torch.device("cpu") if device is None else torch.device(device)
        self.noises = noises
        self.generator = generator

    def __call__(self, k):
        if self.noises is not None:
            return self.noises[k].to(device=self.device, dtype=self.dtype)
        return torch.randn(self.shape, generator=self.generator, dtype=self.dtype,
                           device=self.device)


def _check_clip(clip_x0):
    if clip_x0 is not None and (isinstance(clip_x0, bool) or not isinstance(clip_x0, (int, float))
                                or not clip_x0 > 0):
        raise ValueError(f"clip_x0 must be None or a positive number, got {clip_x0!r}")


def _estimate(model, schedule, x_t, t, cond, uncond, guidance_scale, clip_x0):
    """(x̂_0, ε̂) at timestep ``t``; with ``clip_x0`` x̂_0 is clamped to [−clip_x0, clip_x0] and ε̂
    recomputed from it, so the two stay consistent with x_t."""
    eps = guided_eps(model, x_t, t, cond, uncond, guidance_scale)
    x0 = schedule.predict_x0(x_t, t, eps)
    if clip_x0 is not None:
        x0 = x0.clamp(-clip_x0, clip_x0)
        eps = schedule.predict_eps(x_t, t, x0)
    return x0, eps


@torch.no_grad()
def ddpm_sample(model, shape, schedule: NoiseSchedule, *, cond: Optional[Condition] = None,
                uncond: UncondSpec = None, guidance_scale: float = 1.0,
                generator: Optional[torch.Generator] = None, noises=None,
                clip_x0: Optional[float] = None, dtype: Optional[torch.dtype] = None,
                device=None):
    """DDPM ancestral sampling (Ho et al. 2020) of a ``shape = (B, M, D)`` batch, t = T−1 … 0:
    x_{t−1} = μ̃(x̂_0, x_t) + √β̃_t z, with no noise at t = 0, where x̂_0 comes from the guided
    ε̂ (see ``guided_eps``). Uses T draws (module docstring). ``cond`` holds the model's keyword
    arguments; ``uncond`` is their unconditional version or a function building it from ``cond``
    (needed when ``guidance_scale`` ≠ 1). ``dtype``/``device`` (default: torch's default dtype,
    CPU) apply when the draws come from a generator. Runs without autograd."""
    _check_clip(clip_x0)
    cond, uncond = _resolve_conditions(cond, uncond, guidance_scale)
    draws = _NoiseDraws(shape, schedule.num_steps, generator, noises, dtype, device)
    x = draws(0)
    for k, step in enumerate(range(schedule.num_steps - 1, -1, -1), start=1):
        t = torch.full((draws.shape[0],), step, dtype=torch.long, device=draws.device)
        x0, _ = _estimate(model, schedule, x, t, cond, uncond, guidance_scale, clip_x0)
        mean, variance = schedule.posterior(x0, x, t)
        x = mean
        if step > 0:
            x = x + variance.sqrt() * draws(k)
    return x


def ddim_timesteps(num_steps, steps):
    """The DDIM sub-sequence, in sampling order: ``steps`` timesteps evenly spaced over
    [0, T−1] with both ends included ("linspace" spacing: τ_i = round(i (T−1) / (steps−1)),
    halves rounded up), so sampling starts at T−1 and its last model call is at t = 0.
    ``steps = 1`` gives [T−1]; ``steps = T`` gives every timestep."""
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be an integer >= 1, got {num_steps!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= num_steps:
        raise ValueError(f"steps must be an integer in [1, num_steps = {num_steps}], got {steps!r}")
    if steps == 1:
        return torch.tensor([num_steps - 1], dtype=torch.long)
    gaps = steps - 1
    ascending = [(i * (num_steps - 1) * 2 + gaps) // (2 * gaps) for i in range(steps)]
    return torch.tensor(ascending[::-1], dtype=torch.long)


@dataclass(frozen=True)
class DDIMUpdate:
    """One DDIM update, from timestep ``timestep`` (τ) to the next τ' of the sub-sequence (the
    clean sample after the last), as host numbers fixed before sampling starts:
    ᾱ_τ (``alpha_bar``), ᾱ_τ' (``alpha_bar_next``, 1 after the last), σ and the direction
    coefficient √(1 − ᾱ_τ' − σ²) (see ``ddim_sample``)."""

    timestep: int
    alpha_bar: float
    alpha_bar_next: float
    sigma: float
    direction: float


def ddim_plan(schedule: NoiseSchedule, steps: int, eta: float = 0.0) -> tuple:
    """The ``steps`` updates of DDIM sampling over ``ddim_timesteps(T, steps)`` with η = ``eta``,
    as a tuple of :class:`DDIMUpdate`. Everything read from the schedule is read here, on the
    host, so that :func:`ddim_window` reads no tensor value while it runs."""
    timesteps = ddim_timesteps(schedule.num_steps, steps).tolist()
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not 0 <= eta <= 1:
        raise ValueError(f"eta must be a number in [0, 1], got {eta!r}")
    alpha_bars = schedule.alpha_bars.tolist()
    plan = []
    for k, step in enumerate(timesteps, start=1):
        alpha_bar = alpha_bars[step]
        alpha_bar_next = alpha_bars[timesteps[k]] if k < steps else 1.0
        sigma = eta * math.sqrt((1 - alpha_bar_next) / (1 - alpha_bar)
                                * (1 - alpha_bar / alpha_bar_next))
        direction = math.sqrt(max(1 - alpha_bar_next - sigma ** 2, 0.0))
        plan.append(DDIMUpdate(step, alpha_bar, alpha_bar_next, sigma, direction))
    return tuple(plan)


def ddim_noise_count(plan) -> int:
    """How many z draws the updates of ``plan`` add (those with σ > 0; none with η = 0)."""
    return sum(1 for update in plan if update.sigma > 0)


def ddim_draws(plan, shape, generator: Optional[torch.Generator] = None,
               dtype: Optional[torch.dtype] = None, device=None):
    """(x_T ``shape``, z ``(ddim_noise_count(plan), *shape)``) drawn from ``generator`` in the
    order of the module docstring: x_T first, then one z per update with σ > 0."""
    draws = _NoiseDraws(shape, len(plan), generator, None, dtype, device)
    x_T = draws(0)
    noises = [draws(k) for k, update in enumerate(plan, start=1) if update.sigma > 0]
    z = torch.stack(noises) if noises else x_T.new_empty((0, *draws.shape))
    return x_T, z


def ddim_update(model, x: torch.Tensor, update: DDIMUpdate, cond: Condition,
                uncond: Optional[Condition], guidance_scale: float,
                noise: Optional[torch.Tensor] = None, clip_x0: Optional[float] = None):
    """One DDIM update x_τ → x_τ' with the guided ε̂ (``guided_eps``): x̂_0 from ε̂ at ᾱ_τ,
    optionally clipped (ε̂ then recomputed from it), then
    x_τ' = √ᾱ' x̂_0 + √(1 − ᾱ' − σ²) ε̂ + σ z (``noise`` is z, needed when σ > 0).

    Capturable: it reads no tensor value on the host and allocates only tensors of fixed shapes,
    so the same CUDA graph or ``torch.compile`` graph serves every call with those shapes. The
    coefficients are the same float64 numbers rounded to ``x``'s dtype as the schedule's
    ``predict_x0`` uses, so the result is the same bits as the eager ``ddim_sample``'s."""
    t = torch.full((x.shape[0],), update.timestep, dtype=torch.long, device=x.device)
    eps = guided_eps(model, x, t, cond, uncond, guidance_scale)
    alpha_bar = x.new_full((1,) * x.ndim, update.alpha_bar)
    x0 = (x - (1 - alpha_bar).sqrt() * eps) / alpha_bar.sqrt()
    if clip_x0 is not None:
        x0 = x0.clamp(-clip_x0, clip_x0)
        eps = (x - alpha_bar.sqrt() * x0) / (1 - alpha_bar).sqrt()
    x = math.sqrt(update.alpha_bar_next) * x0 + update.direction * eps
    if update.sigma > 0:
        if noise is None:
            raise ValueError(f"noise must be given for an update with sigma > 0 "
                             f"(sigma = {update.sigma:.3g} at t = {update.timestep})")
        x = x + update.sigma * noise
    return x


def ddim_window(model, x_T: torch.Tensor, plan, cond: Condition, uncond: Optional[Condition],
                guidance_scale: float, noises=None, clip_x0: Optional[float] = None):
    """Every update of ``plan`` (``ddim_plan``) from ``x_T``: one whole DDIM sampling run, the
    guidance included. ``noises`` holds the z of the updates with σ > 0, in order
    (``ddim_noise_count(plan)`` of them; ``ddim_draws`` draws them). Capturable as
    ``ddim_update`` is: the loop runs over the plan, a host tuple, so one capture (a CUDA graph,
    or ``torch.compile(fullgraph=True)``) of this function holds every step."""
    x, used = x_T, 0
    for update in plan:
        noise = None
        if update.sigma > 0:
            noise = noises[used]
            used += 1
        x = ddim_update(model, x, update, cond, uncond, guidance_scale, noise, clip_x0)
    return x


@torch.no_grad()
def ddim_sample(model, shape, schedule: NoiseSchedule, *, steps: int = 50, eta: float = 0.0,
                cond: Optional[Condition] = None, uncond: UncondSpec = None,
                guidance_scale: float = 1.0, generator: Optional[torch.Generator] = None,
                noises=None, clip_x0: Optional[float] = None, dtype: Optional[torch.dtype] = None,
                device=None):
    """DDIM sampling (Song et al. 2021) over ``ddim_timesteps(T, steps)``. From τ to the next τ'
    (or to the clean sample, ᾱ' = 1, after the last):
    x_{τ'} = √ᾱ' x̂_0 + √(1 − ᾱ' − σ²) ε̂ + σ z, σ = η √((1 − ᾱ')/(1 − ᾱ_τ)) √(1 − ᾱ_τ/ᾱ').
    η = 0 is deterministic given x_T; η = 1 with ``steps = T`` is DDPM ancestral sampling and,
    given the same draws, gives ``ddpm_sample``'s result. Uses ``steps`` draws (module docstring);
    the other arguments are as in ``ddpm_sample``. Runs without autograd.

    The checks and the draws happen here; the updates are ``ddim_window`` over ``ddim_plan``."""
    plan = ddim_plan(schedule, steps, eta)
    _check_clip(clip_x0)
    cond, uncond = _resolve_conditions(cond, uncond, guidance_scale)
    draws = _NoiseDraws(shape, steps, generator, noises, dtype, device)
    x = draws(0)
    z = [draws(k) for k, update in enumerate(plan, start=1) if update.sigma > 0]
    return ddim_window(model, x, plan, cond, uncond, guidance_scale, z, clip_x0)


def _check_motion_pair(m, m_hat, min_frames, loss_name):
    _check_float_tensor(m, "m")
    if m.ndim != 3:
        raise ValueError(f"m must have shape (B, M, D), got {tuple(m.shape)}")
    _check_same_shape(m_hat, "m_hat", m, "m")
    if m.shape[1] < min_frames:
        raise ValueError(f"{loss_name} needs at least {min_frames} frames (M) in m, "
                         f"got M = {m.shape[1]}")


def eps_loss(eps, eps_hat):
    """L_simple (eq. 7): mean over all elements of (ε − ε̂)²."""
    _check_float_tensor(eps, "eps")
    _check_same_shape(eps_hat, "eps_hat", eps, "eps")
    return (eps - eps_hat).square().mean()


def motion_mse(m, m_hat):
    """L_MSE (eq. 4): the paper's ‖M_D − M̄_D‖², averaged over batch, frames and features (a mean,
    not a sum, so loss weights do not depend on M or D). ``m``, ``m_hat``: ``(B, M, D)``."""
    _check_motion_pair(m, m_hat, 1, "motion_mse")
    return (m - m_hat).square().mean()


def velocity_loss(m, m_hat):
    """L_impvel (eq. 5): with f_k(x) = x^(k) − x^(k−1) along frames,
    1/(M−1) Σ_{m=1}^{M−1} ‖f_{m+1}(M_D) − f_{m+1}(M̄_D)‖², averaged over batch and features too
    (the mean over all B·(M−1)·D squared differences). Needs M ≥ 2: with one frame there is no
    difference to compare and the paper's 1/(M−1) is undefined, so M < 2 is an error."""
    _check_motion_pair(m, m_hat, 2, "velocity_loss")
    return (torch.diff(m, dim=1) - torch.diff(m_hat, dim=1)).square().mean()


def acceleration_loss(m, m_hat):
    """L_accel (eq. 6): second frame differences f_{m+2} − f_{m+1},
    1/(M−2) Σ_{m=1}^{M−2} ‖Δ²M_D − Δ²M̄_D‖², averaged over batch and features too (the mean over
    all B·(M−2)·D squared differences). Needs M ≥ 3 (1/(M−2) is undefined below), else an
    error."""
    _check_motion_pair(m, m_hat, 3, "acceleration_loss")
    return (torch.diff(m, n=2, dim=1) - torch.diff(m_hat, n=2, dim=1)).square().mean()
