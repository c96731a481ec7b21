"""IR-SDE (mean-reverting SDE) of Refusion: schedules, samplers and the training target.

Pure functions over tensors (REFUSION.md has the equations). Time steps run t = 1..T; state 0 is
never sampled. A sampler step is one short function; ``sample`` is the loop in plain sight. Random
numbers come from a ``noise(t, like)`` callable the caller passes in, so a trajectory can be
replayed exactly (the golden vectors inject theirs) and the tiled engine can key them by position.

Fewer steps than T. The network's time input is a step index of the T-step schedule it was trained
on, so ``steps`` = N means N network evaluations at N of those indices, never a rebuilt schedule
(``timesteps``; by default uniform in t without t = 0: start·(N−i)/N, i = 0..N−1). Each update makes the jump t → s (s the next visited step, 0 after the last) with
coefficients of that jump. ``sde``/``ode``: the reference's Euler(–Maruyama) steps on every grid
step between t and s, with ε reused from t (no new network call) and the substeps' noise summed into
one draw (``_euler_chain``); to first order in the jump this is Euler with θ_t·dt → (θ̄_t − θ̄_s)·dt
and σ_t²·dt → 2λ²(θ̄_t − θ̄_s)·dt, but it integrates the mean reversion across the jump instead of
extrapolating it (ODE at 5 evaluations: 31.5 dB from the all-steps solution against 20.4 dB for the
plain θ̄-difference step, scripts/eval_fewstep.py). ``posterior``: a draw from q(x_s | x_t, x̂_0) of
the OU process (A = e^{−(θ̄_t−θ̄_s)dt}, B = e^{−θ̄_t dt}, C = e^{−θ̄_s dt}). For s = t − 1 every
sampler runs the reference's own formula, bit for bit.

MR Sampler (``mrs``; Li et al., ICLR 2025, arXiv 2502.07856), derived here for the IR-SDE.
Let y = x − μ, u = θ̄·dt (the integrated mean-reversion), m = e^{−u}, σ̄ = λ√(1 − m²), so that
y_t = m_t·y_0 + σ̄_t·z: relative to μ the IR-SDE is a VP diffusion with signal m and noise σ̄.
  1. PF-ODE: dx/dτ = θ(μ − x) − ½σ²·s with s = −ε/σ̄ and σ² = 2λ²θ, i.e. dy/du = −y + λ²ε/σ̄.
  2. Data prediction ŷ_0 = x̂_0 − μ = (y − σ̄ε)/m, i.e. ε = (y − m·ŷ_0)/σ̄, and λ²/σ̄² = 1/(1 − m²):
     dy/du = m²/(1 − m²)·y − m/(1 − m²)·ŷ_0.
  3. Half log-SNR ℓ = log(m/σ̄): dℓ/du = −1/(1 − m²) and d(log σ̄)/du = m²/(1 − m²), hence
     d(y/σ̄)/dℓ = e^ℓ·ŷ_0 — the linear mean-reverting part is gone, integrated exactly:
     y_s = (σ̄_s/σ̄_t)·y_t + σ̄_s ∫_{ℓ_t}^{ℓ_s} e^ℓ ŷ_0(ℓ) dℓ.
  4. First order (ŷ_0 constant over the step; h = ℓ_s − ℓ_t, σ̄_s·e^{ℓ_s} = m_s):
     y_s = (σ̄_s/σ̄_t)·y_t + m_s(1 − e^{−h})·ŷ_0,t,  and m_s(1 − e^{−h}) = m_s − m_t·σ̄_s/σ̄_t.
  5. Second order, multistep (the DPM-Solver++(2M) idea): ŷ_0 linear in ℓ through the previous
     evaluation, approximated by D = ŷ_0,t + (ŷ_0,t − ŷ_0,prev)/(2r), r = (ℓ_t − ℓ_prev)/h, used in (4)
     in place of ŷ_0,t. The first update (no previous evaluation) is first order, and so is the last
     (s = 0: σ̄_0 = 0, ℓ_0 = ∞, and (4) gives exactly x̂_0).
  Deterministic; ``tests/test_sde_fewstep.py`` measures the order (≈ 4× smaller error per doubling).
"""
import math
import operator
from dataclasses import dataclass

import numpy as np
import torch

SCHEDULES = ("cosine", "linear", "constant")
SAMPLERS = ("sde", "ode", "posterior", "mrs")
SPACINGS = ("trailing", "time", "logsnr")
DEFAULT_SPACING = "trailing"


@dataclass(frozen=True)
class Schedule:
    """The discretised IR-SDE: per-step θ, σ, cumulative θ̄ and marginal σ̄ (T+1 entries), and dt."""

    thetas: torch.Tensor
    sigmas: torch.Tensor
    thetas_cumsum: torch.Tensor
    sigma_bars: torch.Tensor
    dt: float
    max_sigma: float  # λ, in the image's [0, 1] units
    T: int

    def to(self, device):
        move = {k: getattr(self, k).to(device) for k in ("thetas", "sigmas", "thetas_cumsum", "sigma_bars")}
        return Schedule(**move, dt=self.dt, max_sigma=self.max_sigma, T=self.T)


def _cosine_thetas(T, s=0.008):
    n = T + 2  # two extra steps so the truncated ends are dropped
    x = torch.linspace(0, n, n + 1, dtype=torch.float32)
    alphas_cumprod = torch.cos(((x / n) + s) / (1 + s) * math.pi * 0.5) ** 2
    alphas_cumprod = alphas_cumprod / alphas_cumprod[0]
    return 1 - alphas_cumprod[1:-1]


def _linear_thetas(T):
    scale = 1000 / (T + 1)
    return torch.linspace(scale * 0.0001, scale * 0.02, T + 1, dtype=torch.float32)


def make_schedule(max_sigma=50, T=100, schedule="cosine", eps=0.005):
    """The reference's discretisation. max_sigma > 1 is read in 8-bit units (λ = max_sigma / 255).

    Computed in float32 in the reference's order, so the numbers are the reference's to the bit.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; expected one of {SCHEDULES}")
    if T < 1:
        raise ValueError(f"T must be at least 1, got {T}")
    if not 0 < eps < 1:
        raise ValueError(f"eps must be in (0, 1), got {eps}")
    lam = max_sigma / 255 if max_sigma > 1 else max_sigma
    if schedule == "cosine":
        thetas = _cosine_thetas(T)
    elif schedule == "linear":
        thetas = _linear_thetas(T)
    else:
        thetas = torch.ones(T + 1, dtype=torch.float32)
    sigmas = torch.sqrt(lam ** 2 * 2 * thetas)
    thetas_cumsum = torch.cumsum(thetas, dim=0) - thetas[0]
    dt = -1 / thetas_cumsum[-1] * math.log(eps)
    sigma_bars = torch.sqrt(lam ** 2 * (1 - torch.exp(-2 * thetas_cumsum * dt)))
    return Schedule(thetas, sigmas, thetas_cumsum, sigma_bars, float(dt), float(lam), T)


# ---- which steps a sampler visits --------------------------------------------------------------

def _signal_noise(sch, t):
    """(m_t, σ̄_t) in float64 from θ̄_t: the MR Sampler's coefficients need more than float32 σ̄."""
    u = float(sch.thetas_cumsum[t]) * sch.dt
    return math.exp(-u), sch.max_sigma * math.sqrt(-math.expm1(-2 * u))


def signal_and_noise(sch):
    """(m_t, σ̄_t) for t = 0..T as float32 tensors, m_t = e^{−θ̄_t dt}: what an x0-predicting noise
    network converts its output to ε with (``ConditionalNAFNet.set_schedule``)."""
    return torch.exp(-sch.thetas_cumsum * sch.dt).float(), sch.sigma_bars.float()


def log_snr(sch, t):
    """Half log-SNR ℓ_t = log(m_t/σ̄_t), m_t = e^{−θ̄_t dt} (float64; +inf at t = 0). MR Sampler's variable."""
    m, sb = _signal_noise(sch, t)
    return math.inf if sb == 0 else math.log(m / sb)


def timesteps(sch_or_T, steps=None, start_step=None, spacing=DEFAULT_SPACING):
    """The time indices a sampler visits, one network evaluation each, descending from ``start_step``.

    ``sch_or_T``: a Schedule or T; ``start_step`` None = T. ``steps`` None = every step start_step, …, 1;
    else N distinct integers (the network knows only the steps it was trained on), first = start_step,
    spread by ``spacing``:
      "trailing" (default): uniform in t over start_step..0 without the point 0 — t_i = start·(N−i)/N,
        so N = start gives start, …, 1 and 100 steps in 5 give 100, 80, 60, 40, 20. The final jump to
        0 is made by the sampler (mrs and posterior land on x̂_0 there). Best measured: scripts/
        eval_fewstep.py, mrs at 5 NFE is 35.3 dB from the all-steps ODE solution against 28.9 (time)
        and 24.5 (logsnr): an evaluation at t = 1, where σ̄ is 2 % of λ, is nearly wasted.
      "time": uniform in t over start_step..1 (ends with an evaluation at t = 1).
      "logsnr": uniform in ℓ_t = log(m_t/σ̄_t) over start_step..1 (needs the Schedule).
    Targets are rounded to the nearest integer, then moved just enough to stay distinct.
    """
    if spacing not in SPACINGS:
        raise ValueError(f"unknown spacing {spacing!r}; expected one of {SPACINGS}")
    is_schedule = isinstance(sch_or_T, Schedule)
    T = sch_or_T.T if is_schedule else operator.index(sch_or_T)
    start = T if start_step is None else int(start_step)
    if not 1 <= start <= T:
        raise ValueError(f"start_step must be in 1..{T}, got {start_step}")
    if steps is None:
        return list(range(start, 0, -1))
    try:
        n = operator.index(steps)
    except TypeError:
        raise ValueError(f"steps must be an integer, got {steps!r}") from None
    if n < 1:
        raise ValueError(f"steps must be at least 1, got {n}")
    if n > start:
        raise ValueError(f"steps={n} is more than the {start} steps available from step {start} of the "
                         f"T={T} schedule (one network evaluation per step); use steps <= {start}")
    if spacing == "trailing":
        targets = np.linspace(start, 0, n + 1)[:-1]
    elif spacing == "time":
        targets = np.linspace(start, 1, n)
    elif not is_schedule:
        raise ValueError(f"spacing {spacing!r} needs the Schedule, not just T")
    else:  # logsnr: ℓ falls as t rises; interpolate t at ℓ-uniform targets
        grid = np.arange(1, start + 1, dtype=np.float64)
        ell = np.array([log_snr(sch_or_T, t) for t in range(1, start + 1)])
        targets = np.interp(np.linspace(ell[-1], ell[0], n), ell[::-1], grid[::-1])
    out = [start]
    for i in range(1, n):
        t = int(math.floor(targets[i] + 0.5))
        out.append(max(min(t, out[-1] - 1), n - i))  # distinct, and room left for the rest
    return out


# ---- forward process and training target -------------------------------------------------------

def mu_bar(sch, x0, mu, t):
    """Mean of x_t given x_0: μ + (x_0 − μ) e^(−θ̄_t dt). ``t`` may be an int or a (B,1,1,1) tensor."""
    return mu + (x0 - mu) * torch.exp(-sch.thetas_cumsum[t] * sch.dt)


def noisy_state(sch, x0, mu, t, z):
    """x_t = mean + σ̄_t z: the marginal sample the training loss starts from."""
    return mu_bar(sch, x0, mu, t) + sch.sigma_bars[t] * z


def _one_step(t, s):
    """Is t → s a single step of the grid (s None means t − 1)? Then the reference's own formula runs."""
    return s is None or (not torch.is_tensor(s) and not torch.is_tensor(t) and s == t - 1)


def _jump(sch, t, s):
    """θ of the jump t → s, θ̄_t − θ̄_s; for one step the table's θ_t itself (bit-exact reference)."""
    return sch.thetas[t] if _one_step(t, s) else sch.thetas_cumsum[t] - sch.thetas_cumsum[s]


def _euler_chain(sch, t, s, k):
    """The reference's Euler(–Maruyama) updates on every grid step j = t, …, s+1, ε held at its value
    from t (no new network call), as one update y_s = P·y_t − Q·ε − √R·z with y = x − μ:
    y ← (1 + θ_j dt)·y − k·λ²θ_j dt·ε/σ̄_j − σ_j√dt·z_j (k = 1 ODE, 2 SDE); R sums the substeps'
    noise variances, so one z gives the chained steps' exact distribution. To first order in the
    jump this is Euler with θ̄_t − θ̄_s; it is far more accurate for long jumps (eval_fewstep.py).
    """
    t, s = int(t), int(s)
    thetas, sigma_bars = sch.thetas[s + 1:t + 1].tolist(), sch.sigma_bars[s + 1:t + 1].tolist()
    lam2, dt = sch.max_sigma ** 2, sch.dt
    p, q, r = 1.0, 0.0, 0.0
    for theta, sigma_bar in zip(reversed(thetas), reversed(sigma_bars)):  # j = t, t − 1, …, s + 1
        a = 1 + theta * dt
        p, q, r = a * p, a * q + k * lam2 * theta * dt / sigma_bar, a * a * r + 2 * lam2 * theta * dt
    return p, q, r


def _abc(sch, t, s=None):
    """A = e^{−(θ̄_t−θ̄_s)dt}, B = e^{−θ̄_t dt}, C = e^{−θ̄_s dt} (s = t − 1 by default)."""
    a = torch.exp(-_jump(sch, t, s) * sch.dt)
    b = torch.exp(-sch.thetas_cumsum[t] * sch.dt)
    c = torch.exp(-sch.thetas_cumsum[t - 1 if s is None else s] * sch.dt)
    return a, b, c


def optimum(sch, xt, x0, mu, t, s=None):
    """The posterior mean of x_s (s = t−1 by default) given x_t and the true x_0 (the training target)."""
    a, b, c = _abc(sch, t, s)
    term1 = a * (1 - c ** 2) / (1 - b ** 2)
    term2 = c * (1 - a ** 2) / (1 - b ** 2)
    return term1 * (xt - mu) + term2 * (x0 - mu) + mu


def training_loss(sch, eps_pred, xt, x0, mu, t):
    """Refusion's maximum-likelihood loss: L1 between the network's reverse step and the optimum."""
    score = -eps_pred / sch.sigma_bars[t]
    predicted = xt - (sch.thetas[t] * (mu - xt) - sch.sigmas[t] ** 2 * score) * sch.dt
    return torch.mean(torch.abs(predicted - optimum(sch, xt, x0, mu, t)))


# ---- reverse samplers: one step each (t → s; s = t − 1 by default) -----------------------------

def sde_step(sch, x, mu, eps, t, z, s=None):
    """Reverse-SDE (Euler–Maruyama) step: x − [θ(μ − x) − σ² s] dt − σ √dt z, with s = −ε/σ̄.
    A jump t → s < t − 1 chains these steps over the grid with ε reused (``_euler_chain``)."""
    if not _one_step(t, s):
        p, q, r = _euler_chain(sch, t, s, 2)
        return mu + p * (x - mu) - q * eps - math.sqrt(r) * z
    score = -eps / sch.sigma_bars[t]
    drift = (sch.thetas[t] * (mu - x) - sch.sigmas[t] ** 2 * score) * sch.dt
    return x - drift - sch.sigmas[t] * (z * math.sqrt(sch.dt))


def ode_step(sch, x, mu, eps, t, z=None, s=None):
    """Probability-flow ODE (Euler) step: x − [θ(μ − x) − ½σ² s] dt (deterministic; z is ignored).
    A jump t → s < t − 1 chains these steps over the grid with ε reused (``_euler_chain``)."""
    if not _one_step(t, s):
        p, q, _ = _euler_chain(sch, t, s, 1)
        return mu + p * (x - mu) - q * eps
    score = -eps / sch.sigma_bars[t]
    return x - (sch.thetas[t] * (mu - x) - 0.5 * sch.sigmas[t] ** 2 * score) * sch.dt


def predict_x0(sch, x, mu, eps, t):
    """The one-shot estimate x̂_0 = (x_t − μ − σ̄_t ε) e^(θ̄_t dt) + μ (inverts ``noisy_state`` for z = ε)."""
    return (x - mu - sch.sigma_bars[t] * eps) * torch.exp(sch.thetas_cumsum[t] * sch.dt) + mu


def posterior_step(sch, x, mu, eps, t, z, s=None):
    """Posterior sampling: predict x̂_0 from ε, then draw x_s from q(x_s | x_t, x̂_0) of the OU process."""
    x0_hat = predict_x0(sch, x, mu, eps, t)
    mean = optimum(sch, x, x0_hat, mu, t, s)
    a, b, c = _abc(sch, t, s)
    var = (1 - a ** 2) * (1 - c ** 2) / (1 - b ** 2)
    std = sch.max_sigma * torch.sqrt(torch.clamp(var, min=0.0))
    return mean + std * z


def mrs_x0(sch, x, mu, eps, t):
    """x̂_0 = μ + (x_t − μ − σ̄_t ε)/m_t with float64 coefficients (``predict_x0`` uses the float32 tables)."""
    m, sb = _signal_noise(sch, t)
    return mu + (x - mu - sb * eps) / m


def mrs_update(sch, x, mu, x0_hat, t, s, prev=None):
    """MR Sampler update t → s from the data prediction x̂_0 at t (module docstring, steps 4–5).

    prev = (x̂_0, t) of the previous evaluation: second order (2M); None: first order. s = 0 gives x̂_0.
    """
    if s == 0:
        return x0_hat
    m_t, sb_t = _signal_noise(sch, t)
    m_s, sb_s = _signal_noise(sch, s)
    d = x0_hat
    if prev is not None:
        x0_prev, t_prev = prev
        r = (log_snr(sch, t) - log_snr(sch, t_prev)) / (log_snr(sch, s) - log_snr(sch, t))
        d = x0_hat + (x0_hat - x0_prev) / (2 * r)
    ratio = sb_s / sb_t
    return mu + ratio * (x - mu) + (m_s - m_t * ratio) * (d - mu)


def mrs_step(sch, x, mu, eps, t, z=None, s=None, prev=None):
    """One MR Sampler step from ε (z is ignored): first order unless prev = (x̂_0, t) of the last one."""
    return mrs_update(sch, x, mu, mrs_x0(sch, x, mu, eps, t), t, t - 1 if s is None else s, prev)


STEPS = {"sde": sde_step, "ode": ode_step, "posterior": posterior_step, "mrs": mrs_step}
NEEDS_NOISE = {"sde": True, "ode": False, "posterior": True, "mrs": False}


def get_step(sampler):
    if sampler not in STEPS:
        raise ValueError(f"unknown sampler {sampler!r}; expected one of {SAMPLERS}")
    return STEPS[sampler]


def start_state(sch, mu, z):
    """x_T = μ + λ z: the reference's start of sampling."""
    return mu + sch.max_sigma * z


def prior_start_state(sch, x0_guess, mu, t, z):
    """x_t drawn from the forward process around an estimate of x_0 (SDEdit-style start): the reverse
    process run from step t keeps the estimate's content and corrects it."""
    return noisy_state(sch, x0_guess, mu, t, z)


def sample(noise_fn, x, mu, sch, sampler="sde", noise=None, callback=None, start_step=None, steps=None,
           spacing=DEFAULT_SPACING):
    """Run the reverse process from x = x_T (or x_{start_step}) down to x_0 in ``steps`` evaluations.

    noise_fn(x, t) -> ε at the true step t of ``sch`` (an int); noise(t, like) -> z for the update
    made after evaluating at visited t (sde and posterior only, called once per evaluation);
    callback(i, t) after evaluation i = 0..N−1. ``steps`` None = every step start_step..1; else N
    steps from start_step down (``timesteps`` with ``spacing``; more than start_step raises
    ValueError). Each update jumps to the next visited step, the last one to 0.
    """
    step = get_step(sampler)
    if NEEDS_NOISE[sampler] and noise is None:
        raise ValueError(f"the {sampler} sampler needs a noise source")
    visited = timesteps(sch, steps, start_step, spacing)
    prev = None  # (x̂_0, t) of the last evaluation: the mrs multistep memory
    for i, t in enumerate(visited):
        s = visited[i + 1] if i + 1 < len(visited) else 0
        eps = noise_fn(x, t)
        if sampler == "mrs":
            x0_hat = mrs_x0(sch, x, mu, eps, t)
            x = mrs_update(sch, x, mu, x0_hat, t, s, prev)
            prev = (x0_hat, t)
        else:
            z = noise(t, x) if NEEDS_NOISE[sampler] else None
            x = step(sch, x, mu, eps, t, z, s)
        if callback is not None:
            callback(i, t)
    return x
