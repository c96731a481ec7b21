"""Few-step sampling (issue 18): visited steps, skip-step coefficients and the MR Sampler (``mrs``).

The convergence tests need the ODE's true solution, so they use an analytic ε: the exact noise
prediction E[z | y_u] of a per-element two-Gaussian mixture (y = x − μ), a smooth function of the
continuous u = θ̄·dt, integrated with RK4 in u for the reference. A network's ε exists only at the
integer steps it was trained on, so no network can give a step-size-independent reference.
"""
import math

import pytest
import torch

from conftest import relative_error
from tilediff import sde

LAM = 30 / 255          # the shipped dehazing model's λ
SHAPE = (1, 4, 8, 8)


# ---- an analytic problem: y_0 ~ w N(a1, s0²) + (1 − w) N(a2, s0²) per element ------------------

def _mixture(seed=0, s0=0.06, sep=0.06):
    g = torch.Generator().manual_seed(seed)
    means = torch.stack([sep + 0.05 * torch.rand(SHAPE, generator=g, dtype=torch.float64),
                         -sep + 0.05 * torch.rand(SHAPE, generator=g, dtype=torch.float64)])
    log_w = torch.log(torch.tensor([0.4, 0.6], dtype=torch.float64)).view(2, 1, 1, 1, 1)
    mu = torch.rand(SHAPE, generator=g, dtype=torch.float64)
    z = torch.randn(SHAPE, generator=g, dtype=torch.float64)
    return dict(means=means, log_w=log_w, s0=s0, mu=mu, z=z)


def _eps_over_sigma_bar(p, y, u):
    """ε/σ̄ = −∇ log p_u(y) = Σ_k r_k (y − m a_k)/v_k², v_k² = m² s0² + σ̄² (no 0/0 at u = 0)."""
    m = math.exp(-u)
    v2 = m * m * p["s0"] ** 2 + LAM ** 2 * -math.expm1(-2 * u)
    r = torch.softmax(p["log_w"] - 0.5 * (y - m * p["means"]) ** 2 / v2, dim=0)
    return (r * (y - m * p["means"]) / v2).sum(0)


def _noise_fn(p, sch):
    """noise_fn(x, t) for ``sde.sample``: the exact ε at the continuous u of step t."""
    def fn(x, t):
        assert isinstance(t, int)
        u = float(sch.thetas_cumsum[t]) * sch.dt
        return LAM * math.sqrt(-math.expm1(-2 * u)) * _eps_over_sigma_bar(p, x - p["mu"], u)
    return fn


def _reference(p, sch, n=4000):
    """The PF-ODE dy/du = −y + λ² ε/σ̄ from y_T = λz down to u = 0, RK4 with n steps (≈1e-11 accurate)."""
    def rhs(y, u):
        return -y + LAM ** 2 * _eps_over_sigma_bar(p, y, u)
    u_T = float(sch.thetas_cumsum[sch.T]) * sch.dt
    y, h = LAM * p["z"], -u_T / n
    for i in range(n):
        u = u_T + i * h
        k1 = rhs(y, u)
        k2 = rhs(y + h / 2 * k1, u + h / 2)
        k3 = rhs(y + h / 2 * k2, u + h / 2)
        k4 = rhs(y + h * k3, u + h)
        y = y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return p["mu"] + y


def _solve(p, sch, sampler, steps, spacing=sde.DEFAULT_SPACING):
    x_T = sde.start_state(sch, p["mu"], p["z"])
    return sde.sample(_noise_fn(p, sch), x_T, p["mu"], sch, sampler, steps=steps, spacing=spacing)


def _first_order_mrs(p, sch, steps):
    """mrs without its multistep term (every update first order, DDIM-like): the control."""
    fn, x = _noise_fn(p, sch), sde.start_state(sch, p["mu"], p["z"])
    visited = sde.timesteps(sch, steps)
    for t, s in zip(visited, visited[1:] + [0]):
        x = sde.mrs_step(sch, x, p["mu"], fn(x, t), t, s=s)
    return x


def _error(p, x, ref):
    """‖x − ref‖ / ‖ref − μ‖: relative to the part the ODE moves (y = x − μ)."""
    return ((x - ref).norm() / (ref - p["mu"]).norm()).item()


def _orders(errors):
    return [math.log2(a / b) for a, b in zip(errors, errors[1:])]


@pytest.fixture(scope="module")
def problem():
    p = _mixture()
    sch = sde.make_schedule(30, 1000)
    return p, sch, _reference(p, sch)


def test_reference_solution_is_converged(problem):
    p, sch, ref = problem
    assert _error(p, _reference(p, sch, 2000), ref) < 1e-9


def test_mrs_converges_at_second_order(problem):
    """Error against the ODE's solution falls ≈ 4× per doubling of the evaluations (measured 3.9–4.0)."""
    p, sch, ref = problem
    errors = [_error(p, _solve(p, sch, "mrs", n), ref) for n in (40, 80, 160, 320)]
    assert all(1.8 < q < 2.3 for q in _orders(errors)), errors
    assert errors[-1] < 3e-4


def test_first_order_mrs_converges_at_first_order(problem):
    """The same measurement tells orders apart: mrs without its multistep term gives ≈ 2× (1.98)."""
    p, sch, ref = problem
    errors = [_error(p, _first_order_mrs(p, sch, n), ref) for n in (40, 80, 160, 320)]
    assert all(0.85 < q < 1.15 for q in _orders(errors)), errors


def test_ode_converges_at_first_order_to_its_all_steps_solution(problem):
    """The ode sampler's skip-steps chain the reference's Euler steps, so as N → T it tends to the
    all-steps Euler solution (itself 1e-3 from the ODE's at T = 1000), at first order."""
    p, sch, _ = problem
    full = _solve(p, sch, "ode", None)
    errors = [_error(p, _solve(p, sch, "ode", n), full) for n in (20, 40, 80, 160)]
    assert all(0.85 < q < 1.25 for q in _orders(errors)), errors


def test_mrs_is_more_accurate_than_ode(problem):
    """Measured errors, mrs / ode: 5: 0.21 / 0.29, 10: 0.015 / 0.15, 20: 0.025 / 0.078,
    40: 0.0088 / 0.039, 80: 0.0023 / 0.018 (this bimodal toy is hard at 5 evaluations for both)."""
    p, sch, ref = problem
    for n, factor in ((5, 0.9), (10, 0.2), (20, 0.5), (40, 0.4), (80, 0.25)):
        assert _error(p, _solve(p, sch, "mrs", n), ref) < factor * _error(p, _solve(p, sch, "ode", n), ref), n


def test_mrs_and_ode_with_all_steps_solve_the_same_ode():
    """With N = T both solve the PF-ODE: their gap is Euler's error, first order in 1/T (10× for T × 10)."""
    p = _mixture(1)
    gaps = []
    for T in (100, 1000):
        sch = sde.make_schedule(30, T)
        gaps.append(relative_error(_solve(p, sch, "ode", None), _solve(p, sch, "mrs", None)))
    assert gaps[0] < 0.05 and 6 < gaps[0] / gaps[1] < 14, gaps


def test_mrs_is_exact_when_the_data_prediction_is_constant():
    """For a point mass y_0 = c, x̂_0 = c along the whole path and the exact solution is
    y(u) = m c + (σ̄/σ̄_t)(y_t − m_t c): the exponential integrator reproduces it with any steps."""
    sch = sde.make_schedule(30, 100)
    g = torch.Generator().manual_seed(2)
    mu, c = torch.rand(SHAPE, generator=g, dtype=torch.float64), 0.1 * torch.randn(SHAPE, generator=g, dtype=torch.float64)

    def m_sb(t):
        u = float(sch.thetas_cumsum[t]) * sch.dt
        return math.exp(-u), LAM * math.sqrt(-math.expm1(-2 * u))

    def eps(x, t):
        m, sb = m_sb(t)
        return (x - mu - m * c) / sb

    x_T = sde.start_state(sch, mu, torch.randn(SHAPE, generator=g, dtype=torch.float64))
    for n in (1, 2, 3, 7):
        assert relative_error(sde.sample(eps, x_T, mu, sch, "mrs", steps=n), mu + c) < 1e-12
    (m_t, sb_t), (m_s, sb_s) = m_sb(100), m_sb(37)
    exact = mu + m_s * c + sb_s / sb_t * (x_T - mu - m_t * c)
    assert relative_error(sde.mrs_step(sch, x_T, mu, eps(x_T, 100), 100, s=37), exact) < 1e-12
    assert relative_error(sde.sample(eps, x_T, mu, sch, "ode", steps=7), mu + c) > 1e-3  # Euler is not


# ---- skip-step coefficients -------------------------------------------------------------------

def _tensors(seed=3):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(SHAPE, generator=g, dtype=torch.float64) for _ in range(4)]


@pytest.mark.parametrize("t", [1, 2, 6, 10])
def test_one_step_updates_are_the_reference_for_s_equal_t_minus_1(t):
    sch = sde.make_schedule(50, 10)
    x, mu, eps, z = (v.float() for v in _tensors())
    assert torch.equal(sde.sde_step(sch, x, mu, eps, t, z, s=t - 1), sde.sde_step(sch, x, mu, eps, t, z))
    assert torch.equal(sde.ode_step(sch, x, mu, eps, t, s=t - 1), sde.ode_step(sch, x, mu, eps, t))
    assert torch.equal(sde.posterior_step(sch, x, mu, eps, t, z, s=t - 1), sde.posterior_step(sch, x, mu, eps, t, z))
    assert torch.equal(sde.optimum(sch, x, eps, mu, t, s=t - 1), sde.optimum(sch, x, eps, mu, t))
    # the identity the skip-steps rest on: θ̄_t − θ̄_{t−1} = θ_t
    theta = sch.thetas_cumsum[t] - sch.thetas_cumsum[t - 1]
    assert theta.item() == pytest.approx(sch.thetas[t].item(), rel=1e-5)


def _posterior(sch, t, s):
    """(coefficient of x_t − μ, coefficient of x_0 − μ, variance) of q(x_s | x_t, x_0), via the public API."""
    one, zero = torch.ones(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    a = sde.optimum(sch, one, zero, zero, t, s).item()
    b = sde.optimum(sch, zero, one, zero, t, s).item()
    # eps that makes x̂_0 = μ, so posterior_step(z) = mean + std z
    eps = one / sch.sigma_bars[t].double()
    std = (sde.posterior_step(sch, one, zero, eps, t, one, s) - sde.posterior_step(sch, one, zero, eps, t, zero, s)).item()
    return a, b, std ** 2


@pytest.mark.parametrize("t, r, s", [(100, 60, 20), (90, 89, 0), (50, 10, 9), (30, 12, 1)])
def test_posterior_skip_step_is_the_composition_of_its_parts(t, r, s):
    """q(x_s | x_t, x_0) = ∫ q(x_s | x_r, x_0) q(x_r | x_t, x_0) dx_r (an OU bridge): means and variances chain."""
    sch = sde.make_schedule(30, 100)
    a_ts, b_ts, v_ts = _posterior(sch, t, s)
    a_tr, b_tr, v_tr = _posterior(sch, t, r)
    a_rs, b_rs, v_rs = _posterior(sch, r, s)
    assert a_ts == pytest.approx(a_rs * a_tr, rel=1e-5, abs=1e-7)
    assert b_ts == pytest.approx(a_rs * b_tr + b_rs, rel=1e-5)
    assert v_ts * LAM ** -2 == pytest.approx((a_rs ** 2 * v_tr + v_rs) * LAM ** -2, rel=1e-4, abs=1e-7)


@pytest.mark.parametrize("t, s", [(100, 80), (100, 1), (40, 0), (7, 3)])
def test_posterior_skip_step_keeps_the_forward_marginals(t, s):
    """x_t ~ q(x_t | x_0) then x_s ~ q(x_s | x_t, x_0) gives x_s ~ q(x_s | x_0): mean e^{−θ̄_s dt}, var σ̄_s²."""
    sch = sde.make_schedule(30, 100)
    a, b, v = _posterior(sch, t, s)
    m = lambda k: math.exp(-float(sch.thetas_cumsum[k]) * sch.dt)  # noqa: E731
    assert a * m(t) + b == pytest.approx(m(s), rel=1e-5)
    assert a ** 2 * sch.sigma_bars[t].item() ** 2 + v == pytest.approx(sch.sigma_bars[s].item() ** 2, rel=1e-4, abs=1e-9)


@pytest.mark.parametrize("t, s", [(100, 50), (37, 36), (20, 0), (60, 57), (3, 0)])
def test_euler_skip_step_is_the_chain_of_reference_steps_with_eps_reused(t, s):
    """ode/sde jump t → s = the reference one-steps t, …, s+1 with the same ε; the SDE's single z has
    the variance of the chained steps' independent z_j."""
    sch = sde.make_schedule(30, 100)
    x, mu, eps, _ = _tensors()
    zero, one = torch.zeros_like(x), torch.ones_like(x)

    def chained(step, kick=None):
        y = x
        for j in range(t, s, -1):
            y = step(sch, y, mu, eps, j, one if j == kick else zero)
        return y
    assert relative_error(sde.ode_step(sch, x, mu, eps, t, s=s), chained(sde.ode_step)) < 1e-6
    mean = chained(sde.sde_step)
    assert relative_error(sde.sde_step(sch, x, mu, eps, t, zero, s=s), mean) < 1e-6
    var = sum(((chained(sde.sde_step, j) - mean) ** 2).mean().item() for j in range(t, s, -1))
    std = (sde.sde_step(sch, x, mu, eps, t, one, s=s) - sde.sde_step(sch, x, mu, eps, t, zero, s=s)).abs().mean().item()
    assert std ** 2 == pytest.approx(var, rel=1e-5)


def test_euler_skip_step_is_euler_with_the_theta_bar_jump_to_first_order():
    """Against the plain Euler step with θ_t dt → (θ̄_t − θ̄_s) dt, σ_t² dt → 2λ²(θ̄_t − θ̄_s) dt
    (ε/σ̄ frozen at t), the increments of a k-step jump differ only at second order: by c·k(k − 1),
    one term per pair of chained substeps (so not at all for k = 1)."""
    sch = sde.make_schedule(30, 1000)
    x, mu, eps, _ = _tensors()
    eps = 0.3 * eps
    t, gaps = 500, {}
    for k in (32, 16, 8, 4, 2, 1):
        jump = (sch.thetas_cumsum[t] - sch.thetas_cumsum[t - k]).item() * sch.dt
        plain = x - (jump * (mu - x) + LAM ** 2 * jump * eps / sch.sigma_bars[t].item())
        gaps[k] = (sde.ode_step(sch, x, mu, eps, t, s=t - k) - plain).norm().item()
        if k == 1:
            one_step = (plain - x).norm().item()
    per_pair = [gaps[k] / (k * (k - 1)) for k in (32, 16, 8, 4, 2)]
    assert max(per_pair) / min(per_pair) < 1.1, gaps
    assert gaps[1] < 1e-5 * one_step  # float32 rounding of θ̄_t − θ̄_{t−1} = θ_t


def test_euler_skip_step_agrees_with_chained_steps_to_first_order():
    """With the analytic ε re-evaluated at every chained step, one jump of k steps differs from the
    k one-steps at second order in the jump: ≈ 4× less when k halves."""
    p = _mixture(4)
    sch = sde.make_schedule(30, 1000)
    fn = _noise_fn(p, sch)
    x = sde.noisy_state(sch, p["mu"] + 0.05, p["mu"], 500, p["z"])
    gaps = []
    for k in (32, 16, 8, 4):
        chained = x
        for t in range(500, 500 - k, -1):
            chained = sde.ode_step(sch, chained, p["mu"], fn(chained, t), t)
        gaps.append(relative_error(sde.ode_step(sch, x, p["mu"], fn(x, 500), 500, s=500 - k), chained))
    assert all(1.7 < q < 2.3 for q in _orders(gaps)), gaps


def test_mrs_first_update_and_last_update():
    """The first update is first order (DDIM-like); the last one (s = 0) lands on x̂_0."""
    sch = sde.make_schedule(30, 100)
    x, mu, eps, _ = _tensors()
    x0_hat = sde.mrs_x0(sch, x, mu, eps, 40)
    assert relative_error(x0_hat, sde.predict_x0(sch, x, mu, eps, 40)) < 1e-5
    assert torch.equal(sde.mrs_step(sch, x, mu, eps, 40, s=0), x0_hat)
    one_step = sde.sample(lambda y, t: eps, x, mu, sch, "mrs", start_step=40, steps=1)
    assert torch.equal(one_step, x0_hat)
    # first order: y_s = (σ̄_s/σ̄_t) y_t + (m_s − m_t σ̄_s/σ̄_t) ŷ_0
    m = lambda k: math.exp(-float(sch.thetas_cumsum[k]) * sch.dt)  # noqa: E731
    sb = lambda k: LAM * math.sqrt(1 - m(k) ** 2)  # noqa: E731
    ddim = mu + sb(20) / sb(40) * (x - mu) + (m(20) - m(40) * sb(20) / sb(40)) * (x0_hat - mu)
    assert relative_error(sde.mrs_step(sch, x, mu, eps, 40, s=20), ddim) < 1e-9


# ---- visited steps ----------------------------------------------------------------------------

@pytest.mark.parametrize("spacing", sde.SPACINGS)
@pytest.mark.parametrize("T", [1, 10, 100])
def test_all_steps_are_the_reference_steps(spacing, T):
    sch = sde.make_schedule(30, T)
    assert sde.timesteps(sch, T, spacing=spacing) == list(range(T, 0, -1))
    assert sde.timesteps(sch, None, spacing=spacing) == list(range(T, 0, -1))
    assert sde.timesteps(sch, T // 2 or 1, start_step=T // 2 or 1, spacing=spacing) == list(range(T // 2 or 1, 0, -1))


@pytest.mark.parametrize("spacing", sde.SPACINGS)
def test_visited_steps_are_distinct_integers_from_the_start(spacing):
    sch = sde.make_schedule(30, 100)
    for start in (100, 57, 3):
        for n in range(1, start + 1):
            ts = sde.timesteps(sch, n, start_step=start, spacing=spacing)
            assert len(ts) == n and ts[0] == start and ts[-1] >= 1
            assert all(type(t) is int for t in ts) and all(a > b for a, b in zip(ts, ts[1:]))
            if spacing != "trailing" and n > 1:
                assert ts[-1] == 1


def test_spacings_are_what_they_say():
    sch = sde.make_schedule(30, 100)
    assert sde.timesteps(sch, 5) == [100, 80, 60, 40, 20]           # trailing, the default
    assert sde.timesteps(100, 10, start_step=50) == [50, 45, 40, 35, 30, 25, 20, 15, 10, 5]
    assert sde.timesteps(sch, 5, spacing="time") == [100, 75, 51, 26, 1]
    for n in (7, 13, 33):
        gaps = [a - b for a, b in zip(sde.timesteps(sch, n) + [0], sde.timesteps(sch, n)[1:] + [0])]
        assert max(gaps) - min(gaps) <= 1
    big = sde.make_schedule(30, 1000)
    ell = [sde.log_snr(big, t) for t in sde.timesteps(big, 8, spacing="logsnr")]
    gaps = [b - a for a, b in zip(ell, ell[1:])]
    assert max(gaps) / min(gaps) < 1.1  # rounding to integers: ℓ moves fast near t = 1


def test_error_messages():
    sch = sde.make_schedule(30, 100)
    x = torch.zeros(1, 1, 2, 2)
    with pytest.raises(ValueError, match=r"steps=101 is more than the 100 steps available"):
        sde.sample(lambda y, t: y, x, x, sch, "mrs", steps=101)
    with pytest.raises(ValueError, match=r"steps=31 is more than the 30 steps available from step 30"):
        sde.sample(lambda y, t: y, x, x, sch, "ode", start_step=30, steps=31)
    with pytest.raises(ValueError, match="steps must be at least 1"):
        sde.timesteps(sch, 0)
    with pytest.raises(ValueError, match="steps must be an integer"):
        sde.timesteps(sch, 2.5)
    with pytest.raises(ValueError, match="start_step must be in 1..100"):
        sde.timesteps(sch, 5, start_step=101)
    with pytest.raises(ValueError, match="unknown spacing"):
        sde.timesteps(sch, 5, spacing="karras")
    with pytest.raises(ValueError, match="needs the Schedule"):
        sde.timesteps(100, 5, spacing="logsnr")
    with pytest.raises(ValueError, match="mrs"):
        sde.get_step("dpm")
    with pytest.raises(ValueError, match="needs a noise source"):
        sde.sample(lambda y, t: y, x, x, sch, "posterior", steps=5)
    assert "mrs" in sde.SAMPLERS and sde.NEEDS_NOISE["mrs"] is False
    assert not hasattr(sde, "torch_noise")


# ---- the golden networks ----------------------------------------------------------------------

def _golden_pipe(golden_net, vectors):
    noise_net, compressor = golden_net("nafnet_latent_small"), golden_net("unet_dehaze")
    sch = sde.make_schedule(50, 10, "cosine", 0.005)
    latent, _ = compressor.encode(vectors["pipe.lq"])
    x_T = sde.start_state(sch, latent, vectors["pipe.noise0"])
    return sch, latent, x_T, (lambda x, t: noise_net(x, latent, t))


@pytest.mark.parametrize("spacing", sde.SPACINGS)
@pytest.mark.parametrize("sampler", ["ode", "sde", "posterior"])
def test_all_steps_reproduce_the_golden_trajectories(golden_net, vectors, sampler, spacing):
    with torch.no_grad():
        sch, latent, x_T, fn = _golden_pipe(golden_net, vectors)
        noise = (lambda t, like: vectors[f"pipe.{sampler}.z_step{t}"]) if sampler != "ode" else None
        out = sde.sample(fn, x_T, latent, sch, sampler, noise, steps=10, spacing=spacing)
    assert relative_error(out, vectors[f"pipe.{sampler}.latent"]) <= 1e-4


@pytest.mark.parametrize("sampler", sde.SAMPLERS)
def test_sample_visits_the_timesteps_and_keys_noise_by_them(golden_net, vectors, sampler):
    with torch.no_grad():
        sch, latent, x_T, fn = _golden_pipe(golden_net, vectors)
        seen = {"net": [], "noise": [], "callback": []}

        def net(x, t):
            seen["net"].append(t)
            return fn(x, t)

        def noise(t, like):
            seen["noise"].append(t)
            return vectors[f"pipe.sde.z_step{t}"]
        out = sde.sample(net, x_T, latent, sch, sampler, noise, callback=lambda i, t: seen["callback"].append((i, t)),
                         start_step=8, steps=4)
        again = sde.sample(fn, x_T, latent, sch, sampler, lambda t, like: vectors[f"pipe.sde.z_step{t}"],
                           start_step=8, steps=4)
    assert seen["net"] == [8, 6, 4, 2] == sde.timesteps(sch, 4, start_step=8)
    assert seen["callback"] == [(0, 8), (1, 6), (2, 4), (3, 2)]
    assert seen["noise"] == ([8, 6, 4, 2] if sde.NEEDS_NOISE[sampler] else [])
    assert torch.isfinite(out).all() and torch.equal(out, again)
