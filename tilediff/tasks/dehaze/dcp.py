"""Classic, non-learned restoration baselines (numpy / scipy).

Dark channel prior dehazing (He, Sun, Tang, "Single image haze removal using dark channel prior",
CVPR 2009 / TPAMI 2011), with the transmission refined by the guided filter (He, Sun, Tang,
"Guided image filtering", ECCV 2010) instead of soft matting:

1. dark channel ``dark(I)(x) = min_{y in patch(x)} min_c I_c(y)`` with a 15 x 15 patch;
2. airlight ``A``: among the brightest 0.1 % pixels of the dark channel, the input colour of the
   pixel with the highest intensity (R+G+B), as in the paper;
3. transmission ``t = 1 - omega * dark(I / A)`` with ``omega = 0.95``;
4. refined by a guided filter on the grayscale input (radius 60 for ~600 px images, scaled with the
   image size by default, ``eps = 1e-3``);
5. ``J = (I - A) / max(t, t0) + A`` with ``t0 = 0.1``, clipped to [0, 1].

Images are ``H x W x 3`` float arrays in [0, 1]; outputs are float32. Every step but the airlight is
local, so steps 3-5 (and the dark channel for step 2) run over bands of rows with a halo as wide as
their combined filter radius (``by_bands``): the result equals the whole-image computation and the
temporaries stay band-sized (a 6000 x 4000 image needs ~0.4 GB beyond its input and output).
"""
from __future__ import annotations

from typing import Optional

import numpy as np
from scipy import ndimage

__all__ = [
    "dark_channel",
    "estimate_airlight",
    "box_mean",
    "guided_filter",
    "dark_channel_prior",
    "by_bands",
    "airlight_of",
    "default_radius",
]

BAND_ROWS = 512   # rows per band for the banded computations (plus their halo above and below)

_GRAY = np.array([0.299, 0.587, 0.114])


def _float(x):
    """``x`` as a float array: float32 / float64 kept, anything else as float64."""
    x = np.asarray(x)
    return x if x.dtype in (np.float32, np.float64) else x.astype(np.float64)


def dark_channel(img: np.ndarray, patch: int = 15) -> np.ndarray:
    """Dark channel: per-pixel minimum over channels, then a ``patch x patch`` minimum filter."""
    return ndimage.minimum_filter(_float(img).min(axis=2), size=patch, mode="nearest")


def estimate_airlight(img: np.ndarray, dark: np.ndarray, top_fraction: float = 0.001) -> np.ndarray:
    """Airlight colour: the brightest (R+G+B) input pixel among the top ``top_fraction`` of the
    dark channel (at least one pixel)."""
    img = np.asarray(img)
    flat_dark = dark.ravel()
    n = max(1, int(round(flat_dark.size * top_fraction)))
    idx = np.argpartition(flat_dark, flat_dark.size - n)[flat_dark.size - n:]
    cand = img.reshape(-1, img.shape[2])[idx].astype(np.float64)
    return cand[np.argmax(cand.sum(axis=1))].copy()


def box_mean(x: np.ndarray, r: int) -> np.ndarray:
    """Mean over the ``(2r+1) x (2r+1)`` window clipped to the image, in ``x``'s float precision.

    At the borders the window is truncated and the sum divided by the number of pixels actually
    covered, as in the reference guided-filter code. Separable running sums (``uniform_filter``,
    double accumulators) with zeros outside the image, rescaled by the covered count: no
    summed-area table, so float32 images stay float32 (a 6000 x 4000 plane is 96 MB).
    """
    x = _float(x)
    h, w = x.shape
    size = 2 * r + 1
    out = ndimage.uniform_filter(x, size=size, mode="constant", cval=0.0)
    rows = np.minimum(np.arange(h) + r + 1, h) - np.maximum(np.arange(h) - r, 0)
    cols = np.minimum(np.arange(w) + r + 1, w) - np.maximum(np.arange(w) - r, 0)
    out *= size * size
    out /= rows[:, None].astype(x.dtype)
    out /= cols[None, :].astype(x.dtype)
    return out


def guided_filter(guide: np.ndarray, src: np.ndarray, r: int, eps: float) -> np.ndarray:
    """Gray-guide guided filter (He et al. 2010, Algorithm 1), in the inputs' float precision."""
    guide, src = _float(guide), _float(src)
    mean_i = box_mean(guide, r)
    mean_p = box_mean(src, r)
    a = box_mean(guide * src, r) - mean_i * mean_p      # cov(I, p)
    a /= box_mean(guide * guide, r) - mean_i * mean_i + eps
    b = mean_p - a * mean_i
    del mean_i, mean_p
    out = box_mean(a, r) * guide
    out += box_mean(b, r)
    return out


def default_radius(h: int, w: int) -> int:
    """The guided-filter radius for an h x w image: the paper's 60 for ~600 px images, min(h, w)/10
    in [4, 60]."""
    return int(np.clip(round(min(h, w) / 10.0), 4, 60))


def by_bands(h: int, halo: int, band_rows: int, compute, out: np.ndarray) -> np.ndarray:
    """Fill ``out[r0:r1]`` band by band with ``compute(a0, a1)[r0 - a0 : r1 - a0]``, where rows a0..a1
    are the band grown by ``halo`` rows each side (clipped to the image). Exact for any computation
    whose value at a pixel depends only on rows within ``halo`` of it: each box / minimum filter
    truncated at the band's edge only changes rows inside the halo."""
    for r0 in range(0, h, max(1, int(band_rows))):
        r1 = min(h, r0 + band_rows)
        a0, a1 = max(0, r0 - halo), min(h, r1 + halo)
        out[r0:r1] = compute(a0, a1)[r0 - a0:r1 - a0]
    return out


def airlight_of(img: np.ndarray, patch: int = 15, top_fraction: float = 0.001,
                band_rows: int = BAND_ROWS) -> np.ndarray:
    """``estimate_airlight`` of ``img`` with its dark channel computed in bands (same result)."""
    dark = by_bands(img.shape[0], patch // 2 + 1, band_rows, lambda a0, a1: dark_channel(img[a0:a1], patch),
                    np.empty(img.shape[:2], np.float32 if img.dtype == np.float32 else np.float64))
    return estimate_airlight(img, dark, top_fraction)


def dark_channel_prior(
    hazy: np.ndarray,
    patch: int = 15,
    omega: float = 0.95,
    t0: float = 0.1,
    radius: Optional[int] = None,
    eps: float = 1e-3,
    top_fraction: float = 0.001,
    return_info: bool = False,
    band_rows: int = BAND_ROWS,
    airlight: Optional[np.ndarray] = None,
):
    """Dehaze ``hazy`` (``H x W x 3`` in [0, 1]) with the dark channel prior.

    Args:
        patch: dark-channel minimum-filter size (15).
        omega: fraction of haze removed (0.95; keeps some haze for depth perception).
        t0: lower bound of the transmission (0.1).
        radius: guided-filter radius; default ``clip(round(min(H, W) / 10), 4, 60)``, i.e. the
            paper's 60 for ~600 px images, scaled down for smaller ones.
        eps: guided-filter regularisation (1e-3).
        top_fraction: fraction of dark-channel pixels considered for the airlight (0.1 %).
        return_info: also return a dict with ``airlight``, ``transmission`` (refined, unclipped),
            ``transmission_raw`` and ``dark``.
        band_rows: rows per band (the result does not depend on it).
        airlight: the airlight colour to use instead of estimating it from ``hazy`` (a window of a
            larger image uses the whole image's, so that it gets the whole image's result).

    Returns:
        the dehazed float32 ``H x W x 3`` image in [0, 1] (and the info dict if requested).
    """
    img = np.asarray(hazy, dtype=np.float32)   # float32 throughout, in bands of rows (module doc)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an H x W x 3 image, got shape {img.shape}")
    h, w = img.shape[:2]
    if radius is None:
        radius = default_radius(h, w)

    if airlight is None:
        airlight = airlight_of(img, patch, top_fraction, band_rows)
    a32 = np.asarray(airlight).astype(np.float32).reshape(3)
    safe_a = np.maximum(a32, 1e-6)
    gray_weights = _GRAY.astype(np.float32)

    def band(a0, a1):
        sub = img[a0:a1]
        t_raw = 1.0 - np.float32(omega) * dark_channel(sub / safe_a[None, None, :], patch)
        t = guided_filter(sub @ gray_weights, t_raw, radius, eps)
        out = sub - a32[None, None, :]
        out /= np.maximum(t, np.float32(t0))[..., None]
        out += a32[None, None, :]
        np.clip(out, 0.0, 1.0, out=out)
        if not return_info:
            return out
        return np.concatenate([out, t[..., None], t_raw[..., None], dark_channel(sub, patch)[..., None]], axis=2)

    halo = patch // 2 + 2 * radius + 1
    result = by_bands(h, halo, band_rows, band, np.empty((h, w, 6 if return_info else 3), np.float32))
    if return_info:
        return result[..., :3].copy(), {
            "airlight": a32,
            "transmission": result[..., 3].copy(),
            "transmission_raw": result[..., 4].copy(),
            "dark": result[..., 5].copy(),
        }
    return result
