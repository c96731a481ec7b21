"""Full-reference image quality metrics (numpy / scipy): PSNR and SSIM.

Inputs are ``H x W x C`` (or ``H x W``) float arrays, normally in [0, 1] (``data_range=1``).
All arithmetic is done in float64.

SSIM follows Wang, Bovik, Sheikh, Simoncelli, "Image quality assessment: from error visibility to
structural similarity", IEEE TIP 2004: an 11-tap Gaussian window with sigma 1.5 (normalised to sum
1), K1 = 0.01, K2 = 0.03, local statistics with population (biased) covariance, the SSIM map
averaged over the "valid" region (pixels whose whole window lies inside the image, i.e. a 5-pixel
border is excluded), computed per channel and averaged over channels. This matches
``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, channel_axis=-1, data_range=...)``.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

__all__ = ["psnr", "ssim", "ssim_map", "gaussian_window"]

_SSIM_SIGMA = 1.5
_SSIM_TAPS = 11
_K1 = 0.01
_K2 = 0.03


def _pair(a, b) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: {a.shape} vs {b.shape}")
    return a, b


def psnr(a, b, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB: ``10 log10(data_range**2 / MSE)``.

    MSE is taken over all pixels and channels. Identical inputs give ``inf``.
    """
    a, b = _pair(a, b)
    mse = float(np.mean((a - b) ** 2))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(float(data_range) ** 2 / mse)


def gaussian_window(taps: int = _SSIM_TAPS, sigma: float = _SSIM_SIGMA) -> np.ndarray:
    """1-D normalised Gaussian window (the 2-D SSIM window is its outer product)."""
    x = np.arange(taps, dtype=np.float64) - (taps - 1) / 2.0
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def _filter2(x: np.ndarray, k: np.ndarray) -> np.ndarray:
    # Separable correlation; the border mode is irrelevant because the border is cropped afterwards.
    y = ndimage.correlate1d(x, k, axis=0, mode="reflect")
    return ndimage.correlate1d(y, k, axis=1, mode="reflect")


def ssim_map(a, b, data_range: float = 1.0) -> np.ndarray:
    """SSIM map of two 2-D arrays over the valid region (``(H-10) x (W-10)``)."""
    a, b = _pair(a, b)
    if a.ndim != 2:
        raise ValueError(f"ssim_map expects 2-D arrays, got shape {a.shape}")
    if min(a.shape) < _SSIM_TAPS:
        raise ValueError(f"images must be at least {_SSIM_TAPS}x{_SSIM_TAPS} for SSIM, got {a.shape}")
    k = gaussian_window()
    c1 = (_K1 * data_range) ** 2
    c2 = (_K2 * data_range) ** 2
    mu_a = _filter2(a, k)
    mu_b = _filter2(b, k)
    var_a = _filter2(a * a, k) - mu_a * mu_a
    var_b = _filter2(b * b, k) - mu_b * mu_b
    cov = _filter2(a * b, k) - mu_a * mu_b
    num = (2.0 * mu_a * mu_b + c1) * (2.0 * cov + c2)
    den = (mu_a * mu_a + mu_b * mu_b + c1) * (var_a + var_b + c2)
    s = num / den
    pad = (_SSIM_TAPS - 1) // 2
    return s[pad:-pad, pad:-pad]


def ssim(a, b, data_range: float = 1.0) -> float:
    """Mean structural similarity (Wang et al. 2004), per channel then averaged over channels.

    ``a``, ``b``: ``H x W x C`` or ``H x W`` arrays, ``H, W >= 11``. Identical inputs give 1.
    """
    a, b = _pair(a, b)
    if a.ndim == 2:
        return float(ssim_map(a, b, data_range).mean())
    if a.ndim != 3:
        raise ValueError(f"expected H x W or H x W x C arrays, got shape {a.shape}")
    vals = [ssim_map(a[..., c], b[..., c], data_range).mean() for c in range(a.shape[2])]
    return float(np.mean(vals))
