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

Haze v2 (:func:`add_haze_v2`; the functions above are unchanged)
----------------------------------------------------------------
The same scattering model with a spatially varying airlight, ``I = J*t + A(x)*(1 - t)``, and the
variations real haze has. Checked by ``tests/test_haze_v2.py``.

Haze-free pairs: with probability ``clear_prob`` (default 0) ``beta = 0``, so ``t = 1`` and the output
    is the clean image exactly (the network learns to leave a clear photo alone).

Depth (:func:`depth_v2`), mode ``'mix'`` by default:
    * ``'smooth'``: :func:`smooth_depth` (far at the top, tilted by up to +-30 deg, value noise);
    * ``'cues'``: :func:`cue_depth`, from the image itself: a mix of *brightness* (bright, smoothed
      luminance is far: sky, distant haze), *height* (far at the top) and *lack of detail* (smooth,
      blurred regions are far: bokeh, distant low-contrast land), weights ``~ Dirichlet(1, 1, 1)``, the
      brightness and detail maps smoothed with a Gaussian of sigma ``U[0.02, 0.06] * min(H, W)``
      (``DEPTH_CUE_SIGMA``);
    * ``'mix'``: ``normalise(m * cues + (1 - m) * smooth)``, ``m ~ U[0, 1]`` (``DEPTH_V2_MIX_RANGE``).
    Every mode is then normalised to span [0, 1] and bent by the power ``gamma`` of
    :func:`smooth_depth` to a mean of 0.5 (to within ~0.005: the maps are smooth, so they are built
    at ~128 px on the short side and upsampled linearly once; so is the airlight field). With
    probability ``DEPTH_V2_FLAT_PROB`` = 0.15 the depth is then flattened towards 0.5,
    ``d = 0.5 + c * (d - 0.5)`` with ``c ~ U[0, 0.5]`` (``DEPTH_V2_FLAT_CONTRAST``: nearly uniform
    haze, e.g. close-ups in fog); the mean stays 0.5. Drawn depth always lies in [0, 1].

Scattering coefficient: ``beta ~ U[BETA_RANGES[density]]`` as above. The spatial mean transmission
    then lies in ``MEAN_TRANSMISSION_RANGE_V2[density]`` (light [0.65, 0.90], moderate [0.35, 0.72],
    dense [0.16, 0.47]; measured 0.670-0.865 / 0.368-0.692 / 0.174-0.442 over 600 depth maps of 12
    photos of up to 256 px at both ends of each beta range). A little wider than v1's at the low
    end: a depth map of mean 0.5 has ``mean(t) >= exp(-beta / 2)`` (Jensen), reached by the
    flattened maps.

Airlight field (:func:`random_airlight_field`): ``A(x) = clip(g(x) + s(x) * tint + jitter, 0, 1)``
    * gray level ``gray ~ U[0.70, 1.0]`` (``AIRLIGHT_V2_GRAY_RANGE``);
    * non-uniform with probability ``AIRLIGHT_V2_NONUNIFORM_PROB`` = 0.7: the local gray level is
      ``g(x) = clip(gray * (1 + a * f(x)), 0.6, 1.0)`` with ``f`` a smooth random field in [-1, 1]
      (a random-direction linear ramp mixed with 2-4-cell value noise; e.g. brighter towards the sun)
      and ``a ~ U[0, 0.15]`` (``AIRLIGHT_V2_FIELD_AMPLITUDE``); otherwise ``g(x) = clip(gray, 0.6, 1)``;
    * tint family drawn with probabilities ``AIRLIGHT_V2_TINT_PROBS`` (neutral 0.4, bluish 0.3,
      yellowish 0.3), direction ``AIRLIGHT_V2_TINTS`` (neutral (0, 0, 0), bluish (-0.10, -0.03,
      +0.06), yellowish (+0.05, +0.02, -0.10)), strength ``s ~ U[0.3, 1.0]``
      (``AIRLIGHT_V2_TINT_STRENGTH``) that varies over a non-uniform field as
      ``s(x) = clip(s * (1 + 0.3 * f2(x)), 0, 1)`` (``AIRLIGHT_V2_TINT_VARIATION``);
    * ``jitter ~ U[-0.01, 0.01]`` per channel (``AIRLIGHT_V2_JITTER``), constant over the image.
    Bounds (asserted by the tests): every channel within ``AIRLIGHT_V2_TINT_MAX`` = 0.11 of the local
    gray level ``g(x)`` (and so in [0.49, 1]); bluish fields have ``A_b >= A_r`` and yellowish ones
    ``A_r >= A_b`` at every pixel.
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
    "AIRLIGHT_V2_GRAY_RANGE",
    "AIRLIGHT_V2_TINTS",
    "AIRLIGHT_V2_TINT_PROBS",
    "AIRLIGHT_V2_TINT_MAX",
    "MEAN_TRANSMISSION_RANGE_V2",
    "smooth_field",
    "cue_depth",
    "depth_v2",
    "random_airlight_field",
    "add_haze_v2",
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
    return hazy, _scatter_info(beta, airlight, depth, t, density)


def _scatter_info(beta, airlight, depth, t, density):
    """What a hazing drew: the scattering coefficient, airlight, depth, transmission and density."""
    return {"beta": beta, "airlight": airlight, "depth": depth, "transmission": t,
            "mean_transmission": float(t.mean()), "density": density}


# ---- haze v2 ------------------------------------------------------------------------------------
# Ranges documented in the module docstring ("Haze v2"); tests/test_haze_v2.py checks them.

#: Weight of the image-cue depth against :func:`smooth_depth` in depth mode 'mix' (uniform).
DEPTH_V2_MIX_RANGE = (0.0, 1.0)
#: Sigma of the brightness / detail smoothing of :func:`cue_depth`, as a fraction of min(H, W).
DEPTH_CUE_SIGMA = (0.02, 0.06)
#: Probability that a drawn v2 depth map is flattened towards 0.5, and the range of its contrast ``c``.
DEPTH_V2_FLAT_PROB = 0.15
DEPTH_V2_FLAT_CONTRAST = (0.0, 0.5)
DEPTH_V2_MODES = ("smooth", "cues", "mix")

#: Gray level of the v2 airlight (uniform) and the clip of its local gray level g(x).
AIRLIGHT_V2_GRAY_RANGE = (0.70, 1.0)
AIRLIGHT_V2_LOCAL_GRAY_CLIP = (0.6, 1.0)
#: Probability of a spatially varying airlight, and the range of its relative amplitude ``a``.
AIRLIGHT_V2_NONUNIFORM_PROB = 0.7
AIRLIGHT_V2_FIELD_AMPLITUDE = (0.0, 0.15)
#: Tint directions (added to the gray level, times the strength s) and their probabilities.
AIRLIGHT_V2_TINTS = {
    "neutral": (0.0, 0.0, 0.0),
    "bluish": (-0.10, -0.03, 0.06),
    "yellowish": (0.05, 0.02, -0.10),
}
AIRLIGHT_V2_TINT_PROBS = {"neutral": 0.4, "bluish": 0.3, "yellowish": 0.3}
AIRLIGHT_V2_TINT_STRENGTH = (0.3, 1.0)
AIRLIGHT_V2_TINT_VARIATION = 0.3
AIRLIGHT_V2_JITTER = 0.01
#: Every channel of a v2 airlight lies within this of the local gray level g(x).
AIRLIGHT_V2_TINT_MAX = 0.11
#: Range of the spatial mean transmission with :func:`add_haze_v2`'s drawn depth and beta.
MEAN_TRANSMISSION_RANGE_V2 = {
    "light": (0.65, 0.90),
    "moderate": (0.35, 0.72),
    "dense": (0.16, 0.47),
}

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _normalise(a: np.ndarray) -> np.ndarray:
    """Min -> 0, max -> 1 (a flat array -> zeros)."""
    lo, hi = float(a.min()), float(a.max())
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)


def _mean_half(d: np.ndarray) -> np.ndarray:
    """A [0, 1] map bent by ``d ** gamma`` to a mean of 0.5 (as :func:`smooth_depth`); flat -> 0.5."""
    if d.size == 1 or float(d.max()) <= 0.0:
        return np.full(d.shape, 0.5, dtype=np.float32)
    return (d ** _gamma_for_mean(d, 0.5)).astype(np.float32)


_CUE_SIDE = 128   # cue_depth and smooth_field work at about this many pixels on the short side


def _linear_rows(a: np.ndarray, n_out: int) -> np.ndarray:
    """Linear interpolation of the rows of ``a`` to ``n_out`` rows (pixel centres aligned, edges
    clamped). Gathers only: no BLAS call, whose threads contend on a busy machine."""
    n_in = a.shape[0]
    pos = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0, n_in - 1.0)
    i0 = np.floor(pos).astype(int)
    i1 = np.minimum(i0 + 1, n_in - 1)
    frac = (pos - i0).astype(np.float32)[:, None]
    return a[i0] * (1.0 - frac) + a[i1] * frac


def _area_rows(a: np.ndarray, n_out: int) -> np.ndarray:
    """Box averaging of the rows of ``a`` down to ``n_out`` rows (exact, fractional boxes included:
    differences of the piecewise-linear running integral at the box edges)."""
    n_in = a.shape[0]
    c = np.concatenate([np.zeros((1,) + a.shape[1:]), np.cumsum(a, axis=0, dtype=np.float64)])
    edges = np.linspace(0.0, n_in, n_out + 1)
    i = np.minimum(np.floor(edges).astype(int), n_in - 1)
    f = (edges - i)[:, None]
    at = c[i] + f * (c[i + 1] - c[i])
    return ((at[1:] - at[:-1]) * (n_out / n_in)).astype(np.float32)


def _small_size(h: int, w: int) -> tuple[int, int]:
    """The working size of the low-resolution maps (the full size when it is already small)."""
    k = max(1.0, min(h, w) / _CUE_SIDE)
    return max(1, int(round(h / k))), max(1, int(round(w / k)))


def _resize(a: np.ndarray, h: int, w: int, area: bool = False) -> np.ndarray:
    """A 2-D map resized to ``h x w`` (linear interpolation, or box averaging with ``area``)."""
    a = np.asarray(a, dtype=np.float32)
    if a.shape == (h, w):
        return a
    rows = _area_rows if area else _linear_rows
    return np.ascontiguousarray(rows(rows(a, h).T, w).T, dtype=np.float32)


def smooth_field(h: int, w: int, rng: RngLike = None) -> np.ndarray:
    """A smooth random field in [-1, 1] (float32, ``h x w``; min -1 and max 1 unless flat -> zeros).

    ``2 * normalise(r * ramp + (1 - r) * noise) - 1`` with ``ramp`` a linear gradient in a uniformly
    random direction, ``noise`` value noise on a random grid of 2-4 cells per side (cubic spline), and
    ``r ~ U[0, 1]``. Random draws, in order: direction, r, grid size (2 ints), grid values.
    """
    if h < 1 or w < 1:
        raise ValueError(f"field size must be positive, got {h}x{w}")
    f = _normalise(_resize(_field01(_as_rng(rng), *_small_size(h, w)), h, w))
    if float(f.max()) <= 0.0:
        return np.zeros((h, w), dtype=np.float32)
    return (2.0 * f - 1.0).astype(np.float32)


def _field01(rng: np.random.Generator, sh: int, sw: int) -> np.ndarray:
    """:func:`smooth_field`'s map at ``sh x sw``, in [0, 1] (its draws, in its order)."""
    angle = rng.uniform(0.0, 2.0 * math.pi)
    r = rng.uniform(0.0, 1.0)
    gh, gw = rng.integers(2, 5, size=2)
    grid = rng.random((int(gh), int(gw)))
    yy = np.linspace(-0.5, 0.5, sh)[:, None]
    xx = np.linspace(-0.5, 0.5, sw)[None, :]
    ramp = yy * math.sin(angle) + xx * math.cos(angle)
    noise = _upsample_smooth(grid, sh, sw)
    return _normalise(r * _normalise(ramp) + (1.0 - r) * _normalise(noise)).astype(np.float32)


def _cue_depth_small(clean: np.ndarray, rng: np.random.Generator, sh: int, sw: int) -> np.ndarray:
    """The cue depth of :func:`cue_depth` at ``sh x sw``, normalised to [0, 1], before its power curve."""
    h, w = clean.shape[:2]
    weights = rng.dirichlet((1.0, 1.0, 1.0))
    sigma = rng.uniform(*DEPTH_CUE_SIGMA) * min(h, w)
    lum = np.clip(clean, 0.0, 1.0) @ _LUMA
    high = np.abs(lum - ndimage.gaussian_filter(lum, 2.0, mode="reflect"))
    s_sigma = sigma * sh / h
    bright = _normalise(ndimage.gaussian_filter(_resize(lum, sh, sw, area=True), s_sigma, mode="reflect"))
    detail = _normalise(ndimage.gaussian_filter(_resize(high, sh, sw, area=True), s_sigma, mode="reflect"))
    height = np.broadcast_to(np.linspace(1.0, 0.0, sh, dtype=np.float32)[:, None], (sh, sw))
    return _normalise(weights[0] * bright + weights[1] * height + weights[2] * (1.0 - detail)).astype(np.float32)


def cue_depth(clean: np.ndarray, rng: RngLike = None) -> np.ndarray:
    """Depth guessed from image cues (float32 ``H x W``, spans [0, 1], mean 0.5 by a power curve).

    ``normalise(w_b * brightness + w_h * height + w_d * (1 - detail))`` with ``(w_b, w_h, w_d) ~
    Dirichlet(1, 1, 1)``: ``brightness`` the luminance smoothed by a Gaussian of sigma ``U[0.02, 0.06]
    * min(H, W)``, ``height`` 1 at the top row and 0 at the bottom, ``detail`` the local mean absolute
    high-pass of the luminance (luminance minus its sigma-2 blur), smoothed the same way; each
    normalised to [0, 1]. Real haze thickens with distance, and distant parts of a photo tend to be
    bright (sky, haze), high up and low in detail (out of focus, low contrast). The smoothed maps are
    computed at ~128 px on the short side and upsampled linearly. Random draws, in order: the
    weights (3 values), sigma.
    """
    clean = np.asarray(clean, dtype=np.float32)
    if clean.ndim != 3 or clean.shape[2] != 3:
        raise ValueError(f"expected an H x W x 3 image, got shape {clean.shape}")
    h, w = clean.shape[:2]
    d = _cue_depth_small(clean, _as_rng(rng), *_small_size(h, w))
    return _mean_half(_normalise(_resize(d, h, w)))


def depth_v2(clean: np.ndarray, rng: RngLike = None, mode: str = "mix") -> tuple[np.ndarray, dict]:
    """A v2 depth map for ``clean`` (float32 ``H x W`` in [0, 1], mean ~0.5) and what was drawn.

    ``mode`` 'smooth' (:func:`smooth_depth`), 'cues' (:func:`cue_depth`) or 'mix' (``m ~ U[0, 1]``:
    ``normalise(m * cues + (1 - m) * smooth)``), its mean set to 0.5 by a power curve; then, with
    probability 0.15, the map is flattened towards 0.5 by a contrast ``c ~ U[0, 0.5]``. The map is
    built at ~128 px on the short side (it is smooth) and upsampled linearly once, then normalised
    to span [0, 1] again (so its mean is 0.5 to within ~0.01). Returns ``(depth, info)`` with info
    keys ``mode``, ``mix`` (the weight of the cue depth: 0, 1 or m) and ``flat_contrast`` (None when
    not flattened). Random draws, in order: m (mode 'mix'), :func:`smooth_depth`'s (modes 'smooth',
    'mix'), :func:`cue_depth`'s (modes 'cues', 'mix'), the flattening probability, its contrast (when
    flattened).
    """
    if mode not in DEPTH_V2_MODES:
        raise ValueError(f"unknown depth mode {mode!r}; choose one of {', '.join(DEPTH_V2_MODES)}")
    clean = np.asarray(clean, dtype=np.float32)
    rng = _as_rng(rng)
    h, w = clean.shape[:2]
    sh, sw = _small_size(h, w)
    if mode == "smooth":
        m, d = 0.0, smooth_depth(sh, sw, rng)
    elif mode == "cues":
        m, d = 1.0, _mean_half(_cue_depth_small(clean, rng, sh, sw))
    else:
        m = float(rng.uniform(*DEPTH_V2_MIX_RANGE))
        smooth = smooth_depth(sh, sw, rng)
        cues = _cue_depth_small(clean, rng, sh, sw)
        d = _mean_half(_normalise(m * cues + (1.0 - m) * smooth).astype(np.float32))
    d = _normalise(_resize(d, h, w))
    flat = None
    if rng.random() < DEPTH_V2_FLAT_PROB:
        flat = float(rng.uniform(*DEPTH_V2_FLAT_CONTRAST))
        d = 0.5 + flat * (d - 0.5)
    d = np.clip(d, 0.0, 1.0).astype(np.float32)
    return d, {"mode": mode, "mix": m, "flat_contrast": flat}


def random_airlight_field(h: int, w: int, rng: RngLike = None, tint: Optional[str] = None,
                          nonuniform: Optional[bool] = None) -> tuple[np.ndarray, dict]:
    """A v2 airlight: float32 ``h x w x 3`` field in [0, 1], and what was drawn.

    ``A(x) = clip(g(x) + s(x) * AIRLIGHT_V2_TINTS[tint] + jitter, 0, 1)``, ranges in the module
    docstring. ``tint`` ('neutral', 'bluish', 'yellowish') and ``nonuniform`` are drawn when None
    (the draws are made either way, so the stream does not depend on them). Returns ``(field,
    info)`` with info keys ``gray``, ``tint``, ``tint_strength``, ``nonuniform``, ``amplitude``,
    ``jitter`` (3,) and ``mean`` (float32 (3,), the field's spatial mean).

    Random draws, in order: gray, tint family, strength, jitter (3 values), non-uniform, amplitude,
    :func:`smooth_field`'s for the gray level, :func:`smooth_field`'s for the strength. The field is
    built at ~128 px on the short side and upsampled linearly (the bounds hold at every pixel).
    """
    if h < 1 or w < 1:
        raise ValueError(f"airlight field size must be positive, got {h}x{w}")
    if tint is not None and tint not in AIRLIGHT_V2_TINTS:
        raise ValueError(f"unknown tint {tint!r}; choose one of {', '.join(AIRLIGHT_V2_TINTS)}")
    rng = _as_rng(rng)
    gray = float(rng.uniform(*AIRLIGHT_V2_GRAY_RANGE))
    names = list(AIRLIGHT_V2_TINT_PROBS)
    drawn_tint = names[int(rng.choice(len(names), p=[AIRLIGHT_V2_TINT_PROBS[n] for n in names]))]
    tint = tint or drawn_tint
    strength = float(rng.uniform(*AIRLIGHT_V2_TINT_STRENGTH))
    jitter = rng.uniform(-AIRLIGHT_V2_JITTER, AIRLIGHT_V2_JITTER, size=3).astype(np.float32)
    drawn_nonuniform = bool(rng.random() < AIRLIGHT_V2_NONUNIFORM_PROB)
    nonuniform = drawn_nonuniform if nonuniform is None else bool(nonuniform)
    amplitude = float(rng.uniform(*AIRLIGHT_V2_FIELD_AMPLITUDE))
    # built at ~128 px on the short side and upsampled linearly: a convex combination of neighbours,
    # so the bounds and the channel order below hold at every pixel of the result too
    sh, sw = _small_size(h, w)
    f_gray = 2.0 * _field01(rng, sh, sw) - 1.0
    f_tint = 2.0 * _field01(rng, sh, sw) - 1.0
    lo, hi = AIRLIGHT_V2_LOCAL_GRAY_CLIP
    direction = np.asarray(AIRLIGHT_V2_TINTS[tint], dtype=np.float32)
    if nonuniform:
        g = np.clip(gray * (1.0 + amplitude * f_gray), lo, hi).astype(np.float32)
        s = np.clip(strength * (1.0 + AIRLIGHT_V2_TINT_VARIATION * f_tint), 0.0, 1.0)
        small = np.clip(g[..., None] + s[..., None] * direction + jitter, 0.0, 1.0)
        field = np.stack([_resize(small[..., c], h, w) for c in range(3)], axis=2)
        g = _resize(g, h, w)
    else:
        amplitude = 0.0
        g0 = min(max(gray, lo), hi)
        color = np.clip(g0 + strength * direction + jitter, 0.0, 1.0).astype(np.float32)
        field = np.broadcast_to(color, (h, w, 3)).copy()
        g = np.full((h, w), g0, dtype=np.float32)
    field = field.astype(np.float32, copy=False)
    info = {"gray": gray, "tint": tint, "tint_strength": strength, "nonuniform": nonuniform,
            "amplitude": amplitude, "jitter": jitter, "local_gray": g.astype(np.float32, copy=False),
            "mean": field.reshape(-1, 3).mean(axis=0).astype(np.float32)}
    return field, info


def add_haze_v2(
    clean: np.ndarray,
    rng: RngLike = None,
    density: str = "moderate",
    *,
    clear_prob: float = 0.0,
    beta: Optional[float] = None,
    airlight=None,
    depth=None,
    depth_mode: str = "mix",
    tint: Optional[str] = None,
) -> tuple[np.ndarray, dict]:
    """Synthetic haze with the variations of real haze: ``I = J*t + A(x)*(1-t)``, ``t = exp(-beta*d)``.

    Args:
        clean: ``H x W x 3`` float array in [0, 1].
        rng: ``numpy.random.Generator`` (or int seed); the same state gives the same output.
        density: 'light', 'moderate' or 'dense' (the range of the drawn beta, ``BETA_RANGES``).
        clear_prob: probability of a haze-free pair (beta = 0: the output equals ``clean``).
        beta: scattering coefficient (overrides the drawn one; 0 gives a haze-free pair).
        airlight: RGB 3-vector, scalar or ``H x W x 3`` field; :func:`random_airlight_field` when None.
        depth: ``H x W`` array or scalar; :func:`depth_v2` with ``depth_mode`` when None.
        depth_mode: 'smooth', 'cues' or 'mix' (see :func:`depth_v2`).
        tint: force the airlight's tint family ('neutral', 'bluish', 'yellowish'); drawn when None.

    Returns:
        ``(hazy, info)``: ``hazy`` float32 ``H x W x 3`` in [0, 1]; ``info`` with ``beta``, ``clear``
        (bool), ``airlight`` (float32 (3,), the field's spatial mean), ``airlight_field`` (float32
        H x W x 3), ``airlight_info`` (the field's draws, or None when given), ``depth``,
        ``depth_info`` (or None when given), ``transmission``, ``mean_transmission`` and ``density``.

    Random draws, in order (each made whatever the outcome of the earlier ones, except those of
    what is given): the haze-free draw (one uniform, always), depth (:func:`depth_v2`), beta, the
    airlight field (:func:`random_airlight_field`).
    """
    clean = np.asarray(clean, dtype=np.float32)
    if clean.ndim != 3 or clean.shape[2] != 3:
        raise ValueError(f"expected an H x W x 3 image, got shape {clean.shape}")
    if density not in BETA_RANGES:
        raise ValueError(f"unknown haze density {density!r}; choose one of {sorted(BETA_RANGES)}")
    if not 0.0 <= float(clear_prob) <= 1.0:
        raise ValueError(f"clear_prob must be in [0, 1], got {clear_prob}")
    h, w = clean.shape[:2]
    gen = _as_rng(rng)
    clear = bool(gen.random() < float(clear_prob))

    depth_info = None
    if depth is None:
        depth, depth_info = depth_v2(clean, gen, depth_mode)
    depth = np.broadcast_to(np.asarray(depth, dtype=np.float32), (h, w)).copy()

    drawn_beta = float(gen.uniform(*BETA_RANGES[density]))
    beta = drawn_beta if beta is None else float(beta)
    if beta < 0:
        raise ValueError(f"beta must be non-negative, got {beta}")
    if clear:
        beta = 0.0

    airlight_info = None
    if airlight is None:
        field, airlight_info = random_airlight_field(h, w, gen, tint=tint)
    else:
        a = np.asarray(airlight, dtype=np.float32)
        field = np.broadcast_to(a if a.ndim == 3 else np.broadcast_to(a, (3,))[None, None, :], (h, w, 3))
        field = np.ascontiguousarray(field, dtype=np.float32)

    t = transmission(depth, beta)
    if beta == 0.0:
        hazy = np.clip(clean, 0.0, 1.0).astype(np.float32, copy=True)
    else:
        t3 = t[..., None]
        hazy = np.clip(clean * t3 + field * (1.0 - t3), 0.0, 1.0).astype(np.float32)
    info = dict(_scatter_info(beta, field.reshape(-1, 3).mean(axis=0).astype(np.float32), depth, t, density),
                clear=beta == 0.0, airlight_field=field, airlight_info=airlight_info, depth_info=depth_info)
    return hazy, info
