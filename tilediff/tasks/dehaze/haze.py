"""Synthetic degradations for training / evaluating restoration models (numpy, pure functions).

Haze follows the atmospheric scattering model (Koschmieder; as used by He et al. 2009 and the
RESIDE / HR-dehazing data sets)::

    I(x) = J(x) * t(x) + A * (1 - t(x)),      t(x) = exp(-beta * d(x))

with ``J`` the clean image, ``A`` the (global) airlight colour, ``beta`` the scattering coefficient
and ``d`` a normalised scene depth in [0, 1] (1 = farthest).

Conventions: images are float32 ``H x W x 3`` numpy arrays in [0, 1] (RGB, HWC). Every random
draw goes through the ``numpy.random.Generator`` passed as ``rng`` (an int seed is accepted too),
so a given generator state always yields the same output. No global random state is used.

Parameter ranges (documented contract, checked by ``tests/test_degrade_metrics.py``)
--------------------------------------------------------------------------------
Depth model (:func:`smooth_depth`):
    ``d = normalise(g * ramp + (1 - g) * noise) ** gamma`` with
    * ``ramp``: a linear gradient, far (1) at the top and near (0) at the bottom, whose direction is
      tilted by a random angle in [-30 deg, +30 deg] from vertical;
    * ``noise``: low-frequency value noise, two octaves (random grids of 3-5 and 6-10 cells per side,
      weights 1 and 0.5) upsampled to H x W with cubic-spline interpolation (smooth, no blocks);
    * mix ``g`` uniform in [0.55, 0.85] (the gradient dominates);
    * ``normalise`` maps min -> 0 and max -> 1, so every depth map spans [0, 1] exactly;
    * ``gamma`` (in [1/8, 8], found by bisection) makes the mean depth 0.5, so that the haze amount
      is set by ``beta`` alone.

Scattering coefficient ``beta`` (:func:`random_haze_params`), uniform in ``BETA_RANGES``:
    * ``'light'``:    [0.3, 0.8]  -> mean transmission 0.67-0.87
    * ``'moderate'``: [0.8, 2.0]  -> mean transmission 0.38-0.69 (the image stays clearly visible)
    * ``'dense'``:    [2.0, 3.5]  -> mean transmission 0.19-0.45
    (mean transmission = spatial mean of ``t`` for a depth map from :func:`smooth_depth`; the values
    are the extremes measured over 2000 seeds at both ends of each beta range. The documented,
    slightly wider bounds in ``MEAN_TRANSMISSION_RANGE`` are asserted by the tests.)

Airlight ``A``: a gray level uniform in [0.75, 1.0] plus an independent per-channel tint uniform in
    [-0.05, +0.05], clipped to [0, 1] -> an RGB 3-vector (float32).
"""
from __future__ import annotations

import math
from typing import Optional, Union

import numpy as np
from scipy import ndimage

__all__ = [
    "BETA_RANGES",
    "AIRLIGHT_GRAY_RANGE",
    "AIRLIGHT_TINT",
    "MEAN_TRANSMISSION_RANGE",
    "smooth_depth",
    "random_haze_params",
    "add_haze",
    "transmission",
]

#: Scattering coefficient ranges (uniform) per haze density, for depth normalised to [0, 1].
BETA_RANGES = {
    "light": (0.3, 0.8),
    "moderate": (0.8, 2.0),
    "dense": (2.0, 3.5),
}
#: Gray level of the airlight (uniform).
AIRLIGHT_GRAY_RANGE = (0.75, 1.0)
#: Maximum absolute per-channel tint added to the airlight gray level (uniform in [-x, x]).
AIRLIGHT_TINT = 0.05
#: Approximate range of the spatial mean transmission for random depth maps from
#: :func:`smooth_depth` and beta drawn from ``BETA_RANGES[density]``.
MEAN_TRANSMISSION_RANGE = {
    "light": (0.65, 0.90),
    "moderate": (0.35, 0.70),
    "dense": (0.18, 0.45),
}

RngLike = Union[np.random.Generator, int, None]


def _as_rng(rng: RngLike) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)


def _upsample_smooth(grid: np.ndarray, h: int, w: int) -> np.ndarray:
    """Cubic-spline upsampling of a small 2-D grid to exactly ``h x w`` (corners aligned)."""
    gh, gw = grid.shape
    ys = np.linspace(0.0, gh - 1.0, h)
    xs = np.linspace(0.0, gw - 1.0, w)
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    return ndimage.map_coordinates(grid, [yy, xx], order=3, mode="nearest")


def smooth_depth(h: int, w: int, rng: RngLike = None) -> np.ndarray:
    """A smooth random depth map ``d`` (float32, ``h x w``) spanning exactly [0, 1].

    ``d = normalise(g * ramp + (1 - g) * noise) ** gamma`` where ``ramp`` is a linear gradient that
    is far (large) at the top of the image and near at the bottom, tilted by up to +-30 degrees,
    ``noise`` is two octaves of cubic-spline upsampled random grids (3-5 and 6-10 cells per side),
    ``g ~ U[0.55, 0.85]``, and ``gamma`` sets the mean depth to 0.5 (min 0, max 1 are kept).
    A 1 x 1 (or perfectly flat) map is the constant 0.5.

    Random draws, in order: tilt angle, g, coarse grid size (2 ints), coarse grid values, fine grid
    size (2 ints), fine grid values.
    """
    if h < 1 or w < 1:
        raise ValueError(f"depth map size must be positive, got {h}x{w}")
    rng = _as_rng(rng)
    angle = math.radians(rng.uniform(-30.0, 30.0))
    g = rng.uniform(0.55, 0.85)

    yy = np.linspace(0.0, 1.0, h)[:, None]  # 0 top .. 1 bottom
    xx = np.linspace(-0.5, 0.5, w)[None, :]
    # Depth grows towards the top: project on the (tilted) "up" direction.
    ramp = (1.0 - yy) * math.cos(angle) + xx * math.sin(angle)

    noise = np.zeros((h, w), dtype=np.float64)
    for lo, hi, weight in ((3, 6, 1.0), (6, 11, 0.5)):
        gh, gw = rng.integers(lo, hi, size=2)
        grid = rng.random((int(gh), int(gw)))
        noise += weight * _upsample_smooth(grid, h, w)

    def _norm(a: np.ndarray) -> np.ndarray:
        lo_, hi_ = float(a.min()), float(a.max())
        return (a - lo_) / (hi_ - lo_) if hi_ > lo_ else np.zeros_like(a)

    d = _norm(g * _norm(ramp) + (1.0 - g) * _norm(noise))
    if h * w == 1 or float(d.max()) <= 0.0:
        return np.full((h, w), 0.5, dtype=np.float32)
    # Power curve d**gamma (monotone, keeps 0 -> 0 and 1 -> 1, stays smooth) so that the mean depth
    # is 0.5: haze density is then governed by beta alone.
    d = d ** _gamma_for_mean(d, 0.5)
    return d.astype(np.float32)


def _gamma_for_mean(d: np.ndarray, target: float) -> float:
    """``gamma`` in [1/8, 8] with ``mean(d**gamma) ~= target`` (bisection in log-gamma on a
    subsample of at most ~65k pixels; ``mean(d**gamma)`` decreases with gamma for d in [0, 1])."""
    step = max(1, int(math.ceil(math.sqrt(d.size / 65536.0))))
    sample = d[::step, ::step].ravel()
    lo, hi = math.log(1.0 / 8.0), math.log(8.0)
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        if float(np.mean(sample ** math.exp(mid))) > target:
            lo = mid
        else:
            hi = mid
    return math.exp(0.5 * (lo + hi))


def random_haze_params(rng: RngLike = None, density: str = "moderate") -> tuple[float, np.ndarray]:
    """Draw ``(beta, airlight)`` for the given haze ``density``.

    * ``beta ~ U[BETA_RANGES[density]]`` ('light' [0.3, 0.8], 'moderate' [0.8, 2.0],
      'dense' [2.0, 3.5]); meant for depth in [0, 1] with mean 0.5 (:func:`smooth_depth`).
    * ``airlight = clip(gray + tint, 0, 1)`` with ``gray ~ U[0.75, 1.0]`` and
      ``tint ~ U[-0.05, 0.05]`` independently per channel; a float32 RGB 3-vector.

    Random draws, in order: beta, gray, tint (3 values).
    """
    if density not in BETA_RANGES:
        raise ValueError(f"unknown haze density {density!r}; choose one of {sorted(BETA_RANGES)}")
    rng = _as_rng(rng)
    lo, hi = BETA_RANGES[density]
    beta = float(rng.uniform(lo, hi))
    gray = rng.uniform(*AIRLIGHT_GRAY_RANGE)
    tint = rng.uniform(-AIRLIGHT_TINT, AIRLIGHT_TINT, size=3)
    airlight = np.clip(gray + tint, 0.0, 1.0).astype(np.float32)
    return beta, airlight


def transmission(depth: np.ndarray, beta: float) -> np.ndarray:
    """``t = exp(-beta * depth)`` (float32)."""
    return np.exp(-float(beta) * np.asarray(depth, dtype=np.float32)).astype(np.float32)


def add_haze(
    clean: np.ndarray,
    rng: RngLike = None,
    beta: Optional[float] = None,
    airlight=None,
    depth=None,
    density: str = "moderate",
) -> tuple[np.ndarray, dict]:
    """Apply synthetic haze ``I = J*t + A*(1-t)``, ``t = exp(-beta*depth)``.

    Args:
        clean: ``H x W x 3`` float array in [0, 1] (the clean image ``J``).
        rng: ``numpy.random.Generator`` (or int seed) used for whatever is not given; with the same
            generator state the result is identical. ``None`` means a fresh, unseeded generator.
        beta: scattering coefficient; drawn from ``BETA_RANGES[density]`` when ``None``.
        airlight: scalar gray level or RGB 3-vector in [0, 1]; drawn when ``None``.
        depth: ``H x W`` array or a scalar (constant depth); :func:`smooth_depth` when ``None``.
        density: 'light', 'moderate' or 'dense' (only used for drawn parameters).

    Returns:
        ``(hazy, info)``: ``hazy`` float32 ``H x W x 3`` in [0, 1]; ``info`` a dict with ``beta``
        (float), ``airlight`` (float32 (3,)), ``depth`` (float32 H x W), ``transmission``
        (float32 H x W), ``mean_transmission`` (float) and ``density`` (str).

    Random draws, in order: depth (if not given), then beta/airlight via
    :func:`random_haze_params` (if either is not given; a given value overrides the drawn one).
    """
    clean = np.asarray(clean, dtype=np.float32)
    if clean.ndim != 3 or clean.shape[2] != 3:
        raise ValueError(f"expected an H x W x 3 image, got shape {clean.shape}")
    h, w = clean.shape[:2]
    if density not in BETA_RANGES:
        raise ValueError(f"unknown haze density {density!r}; choose one of {sorted(BETA_RANGES)}")
    need_rng = depth is None or beta is None or airlight is None
    gen = _as_rng(rng) if need_rng else None

    if depth is None:
        depth = smooth_depth(h, w, gen)
    depth = np.broadcast_to(np.asarray(depth, dtype=np.float32), (h, w)).copy()

    if beta is None or airlight is None:
        b, a = random_haze_params(gen, density)
        beta = b if beta is None else beta
        airlight = a if airlight is None else airlight
    beta = float(beta)
    if beta < 0:
        raise ValueError(f"beta must be non-negative, got {beta}")
    airlight = np.broadcast_to(np.asarray(airlight, dtype=np.float32), (3,)).copy()

    t = transmission(depth, beta)
    t3 = t[..., None]
    hazy = clean * t3 + airlight[None, None, :] * (1.0 - t3)
    hazy = np.clip(hazy, 0.0, 1.0).astype(np.float32)
    info = {
        "beta": beta,
        "airlight": airlight,
        "depth": depth,
        "transmission": t,
        "mean_transmission": float(t.mean()),
        "density": density,
    }
    return hazy, info
