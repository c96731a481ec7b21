"""IR-SDE (mean-reverting SDE) of Refusion: schedules, samplers and the training target.

Pure functions over tensors (REFUSION.md has the equations). Time steps run t = 1..T; state 0 is
never sampled. A sampler step is one short function; ``sample`` is the loop in plain sight. Random
numbers come from a ``noise(t, like)`` callable the caller passes in, so a trajectory can be
replayed exactly (the golden vectors inject theirs) and the tiled engine can key them by position.
"""
import math
from dataclasses import dataclass

import torch

SCHEDULES = ("cosine", "linear", "constant")
SAMPLERS = ("sde", "ode", "posterior")


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


# ---- forward process and training target -------------------------------------------------------

def mu_bar(sch, x0, mu, t):
    """Mean of x_t given x_0: μ + (x_0 − μ) e^(−θ̄_t dt). ``t`` may be an int or a (B,1,1,1) tensor."""
    return mu + (x0 - mu) * torch.exp(-sch.thetas_cumsum[t] * sch.dt)


def noisy_state(sch, x0, mu, t, z):
    """x_t = mean + σ̄_t z: the marginal sample the training loss starts from."""
    return mu_bar(sch, x0, mu, t) + sch.sigma_bars[t] * z


def _abc(sch, t):
    a = torch.exp(-sch.thetas[t] * sch.dt)
    b = torch.exp(-sch.thetas_cumsum[t] * sch.dt)
    c = torch.exp(-sch.thetas_cumsum[t - 1] * sch.dt)
    return a, b, c


def optimum(sch, xt, x0, mu, t):
    """The posterior mean of x_{t−1} given x_t and the true x_0 (the training target)."""
    a, b, c = _abc(sch, t)
    term1 = a * (1 - c ** 2) / (1 - b ** 2)
    term2 = c * (1 - a ** 2) / (1 - b ** 2)
    return term1 * (xt - mu) + term2 * (x0 - mu) + mu


def training_loss(sch, eps_pred, xt, x0, mu, t):
    """Refusion's maximum-likelihood loss: L1 between the network's reverse step and the optimum."""
    score = -eps_pred / sch.sigma_bars[t]
    predicted = xt - (sch.thetas[t] * (mu - xt) - sch.sigmas[t] ** 2 * score) * sch.dt
    return torch.mean(torch.abs(predicted - optimum(sch, xt, x0, mu, t)))


# ---- reverse samplers: one step each ----------------------------------------------------------

def sde_step(sch, x, mu, eps, t, z):
    """Reverse-SDE (Euler–Maruyama) step: x − [θ(μ − x) − σ² s] dt − σ √dt z, with s = −ε/σ̄."""
    score = -eps / sch.sigma_bars[t]
    drift = (sch.thetas[t] * (mu - x) - sch.sigmas[t] ** 2 * score) * sch.dt
    return x - drift - sch.sigmas[t] * (z * math.sqrt(sch.dt))


def ode_step(sch, x, mu, eps, t, z=None):
    """Probability-flow ODE step: x − [θ(μ − x) − ½σ² s] dt (deterministic; z is ignored)."""
    score = -eps / sch.sigma_bars[t]
    return x - (sch.thetas[t] * (mu - x) - 0.5 * sch.sigmas[t] ** 2 * score) * sch.dt


def predict_x0(sch, x, mu, eps, t):
    """The one-shot estimate x̂_0 = (x_t − μ − σ̄_t ε) e^(θ̄_t dt) + μ (inverts ``noisy_state`` for z = ε)."""
    return (x - mu - sch.sigma_bars[t] * eps) * torch.exp(sch.thetas_cumsum[t] * sch.dt) + mu


def posterior_step(sch, x, mu, eps, t, z):
    """Posterior sampling: predict x̂_0 from ε, then draw x_{t−1} from q(x_{t−1} | x_t, x̂_0)."""
    x0_hat = predict_x0(sch, x, mu, eps, t)
    mean = optimum(sch, x, x0_hat, mu, t)
    a, b, c = _abc(sch, t)
    var = (1 - a ** 2) * (1 - c ** 2) / (1 - b ** 2)
    std = sch.max_sigma * torch.sqrt(torch.clamp(var, min=0.0))
    return mean + std * z


STEPS = {"sde": sde_step, "ode": ode_step, "posterior": posterior_step}
NEEDS_NOISE = {"sde": True, "ode": False, "posterior": True}


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


def sample(noise_fn, x, mu, sch, sampler="sde", noise=None, callback=None, start_step=None):
    """Run the reverse process from x = x_T (or x_{start_step}) down to x_0.

    noise_fn(x, t) -> ε; noise(t, like) -> z (needed by the sde and posterior samplers);
    callback(step_index, t) after each step.
    """
    step = get_step(sampler)
    if NEEDS_NOISE[sampler] and noise is None:
        raise ValueError(f"the {sampler} sampler needs a noise source")
    start_step = sch.T if start_step is None else int(start_step)
    if not 1 <= start_step <= sch.T:
        raise ValueError(f"start_step must be in 1..{sch.T}, got {start_step}")
    for i, t in enumerate(range(start_step, 0, -1)):
        eps = noise_fn(x, t)
        z = noise(t, x) if NEEDS_NOISE[sampler] else None
        x = step(sch, x, mu, eps, t, z)
        if callback is not None:
            callback(i, t)
    return x


def torch_noise(generator):
    """A noise source drawing from a torch.Generator in call order (whole-image reference mode)."""
    def draw(t, like):
        return torch.randn(like.shape, generator=generator, dtype=like.dtype, device="cpu").to(like.device)
    return draw
