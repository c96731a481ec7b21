"""Haze recomposition: the restored image decides the transmission, the input gives every detail.

A latent model's output loses fine detail in the compressor (its decoder re-synthesises texture
from a 1/8-size latent and the hazy input's skips) and can drift in local tone. Hazy images follow
the atmospheric scattering model ``I = J t + A (1 − t)`` with a smooth transmission ``t`` and one
airlight colour ``A``, so a restored image ``R`` can be turned into an estimate of ``t`` and the
output rebuilt from the input itself::

    t_raw = box(<I − A, R − A>) / box(|R − A|²)       local least squares over (2·ls_radius+1)² windows
    t     = guided_filter(gray(I), t_raw, radius, eps) clipped to [t_min, 1]
    J     = (I − A) / t + A                           clipped to [0, 1]

``A`` comes from the dark-channel airlight estimator (``baselines.estimate_airlight``: the
brightest input pixel among the 0.1 % haziest), the only classic estimate used; the spatially
varying transmission is the model's. The guided filter and its default radius follow the dark
channel prior's refinement step (He et al. 2010).

Images are processed in bands of rows with a halo of ``ls_radius + 2·radius + 1`` rows
(``baselines.by_bands``), so the result equals the whole-image computation while the temporaries
stay a few band-sized planes.
"""
from __future__ import annotations

import numpy as np

from .dcp import _GRAY, BAND_ROWS, airlight_of, box_mean, by_bands, default_radius, guided_filter

LS_RADIUS = 15     # the least-squares window radius (31 × 31 pixels)
EPS = 1e-3         # guided-filter regularisation (the dark channel prior's)
T_MIN = 0.1        # lower bound of the transmission (the dark channel prior's t0)


def transmission_from_pair(hazy, restored, air, ls_radius=LS_RADIUS):
    """Least-squares t per pixel: the t that best explains I − A = t (R − A) over the window."""
    d_in = hazy - air
    d_out = restored - air
    num = box_mean(np.einsum("hwc,hwc->hw", d_in, d_out), ls_radius)
    den = box_mean(np.einsum("hwc,hwc->hw", d_out, d_out), ls_radius)
    return num / np.maximum(den, np.float32(1e-6))


def haze_recompose(hazy, restored, *, air=None, ls_radius=LS_RADIUS, radius=None, eps=EPS, t_min=T_MIN,
                   band_rows=BAND_ROWS, return_info=False):
    """Rebuild the dehazed image from ``hazy`` with the transmission ``restored`` implies (module doc).

    ``hazy`` and ``restored``: H × W × 3 float arrays in [0, 1] of the same size. ``air`` (an RGB
    3-vector) is estimated from ``hazy`` when None; ``radius`` defaults to ``baselines.default_radius`` (the dark channel prior's).
    Returns the float32 H × W × 3 result (and ``{"airlight", "transmission"}`` with ``return_info``).
    """
    hazy = np.asarray(hazy, dtype=np.float32)
    restored = np.asarray(restored, dtype=np.float32)
    if hazy.ndim != 3 or hazy.shape[2] != 3:
        raise ValueError(f"expected an H x W x 3 image, got shape {hazy.shape}")
    if restored.shape != hazy.shape:
        raise ValueError(f"the restored image's shape {restored.shape} differs from the input's {hazy.shape}")
    h, w = hazy.shape[:2]
    if radius is None:
        radius = default_radius(h, w)
    air = (airlight_of(hazy, band_rows=band_rows) if air is None else np.asarray(air)).astype(np.float32).reshape(3)
    gray_weights = _GRAY.astype(np.float32)

    def band(a0, a1):
        sub = hazy[a0:a1]
        t = transmission_from_pair(sub, restored[a0:a1], air, ls_radius)
        t = guided_filter(sub @ gray_weights, t, radius, eps)
        np.clip(t, t_min, 1.0, out=t)
        out = (sub - air) / t[..., None] + air
        np.clip(out, 0.0, 1.0, out=out)
        return np.concatenate([out, t[..., None]], axis=2) if return_info else out

    halo = ls_radius + 2 * radius + 1
    result = by_bands(h, halo, band_rows, band, np.empty((h, w, 4 if return_info else 3), np.float32))
    if return_info:
        return result[..., :3].copy(), {"airlight": air, "transmission": result[..., 3].copy()}
    return result
