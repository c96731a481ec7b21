"""The dark channel prior and the haze recomposition with torch, for restorations on a GPU.

The same algorithms as ``baselines.dark_channel_prior`` and ``recompose.haze_recompose`` (numpy, the
reference and the CPU path), on (H, W, 3) float32 tensors on the restoration's device: on a GPU they
take milliseconds where the host needs seconds for a 6000 × 4000 image. Box means use cumulative
sums (float32: ~1e-5 from the numpy results); the dark channel's minimum filter is a max-pool of the
negated image. Bands of rows with halos (``baselines.by_bands``) bound the device memory.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .dcp import _GRAY, BAND_ROWS, by_bands, default_radius
from .recompose import EPS, LS_RADIUS, T_MIN


def box_mean(x: torch.Tensor, r: int) -> torch.Tensor:
    """Mean over the (2r+1)² window clipped to the image of an (H, W) tensor (``baselines.box_mean``)."""
    for dim in (0, 1):
        n = x.shape[dim]
        sums = torch.cumsum(x, dim)
        sums = F.pad(sums, (0, 0, 1, 0) if dim == 0 else (1, 0))
        idx = torch.arange(n, device=x.device)
        hi, lo = (idx + r + 1).clamp(max=n), (idx - r).clamp(min=0)
        count = (hi - lo).to(x.dtype)
        x = (sums.index_select(dim, hi) - sums.index_select(dim, lo)) / (count[:, None] if dim == 0 else count)
    return x


def guided_filter(guide, src, r, eps):
    """Gray-guide guided filter (``baselines.guided_filter``)."""
    mean_i, mean_p = box_mean(guide, r), box_mean(src, r)
    a = (box_mean(guide * src, r) - mean_i * mean_p) / (box_mean(guide * guide, r) - mean_i * mean_i + eps)
    b = mean_p - a * mean_i
    return box_mean(a, r) * guide + box_mean(b, r)


def dark_channel(img, patch=15):
    """Per-pixel channel minimum, then a patch × patch minimum filter (windows clipped to the image)."""
    low = img.amin(dim=-1)[None, None]
    return -F.max_pool2d(-low, patch, stride=1, padding=patch // 2)[0, 0]


def airlight(img, patch=15, top_fraction=0.001, band_rows=BAND_ROWS):
    """``baselines.estimate_airlight`` over the banded dark channel: the brightest input pixel among
    the haziest 0.1 % (ties at the cut may pick another pixel of the same dark value than numpy)."""
    h = img.shape[0]
    dark = by_bands(h, patch // 2 + 1, band_rows, lambda a0, a1: dark_channel(img[a0:a1], patch),
                    torch.empty(img.shape[:2], dtype=img.dtype, device=img.device))
    flat = dark.reshape(-1)
    n = max(1, int(round(flat.numel() * top_fraction)))
    candidates = img.reshape(-1, 3)[torch.topk(flat, n).indices]
    return candidates[torch.argmax(candidates.sum(dim=1))]


def _gray(img):
    return img @ torch.as_tensor(_GRAY, dtype=img.dtype, device=img.device)


def dark_channel_prior(hazy, patch=15, omega=0.95, t0=0.1, radius=None, eps=1e-3, band_rows=BAND_ROWS):
    """``baselines.dark_channel_prior`` of an (H, W, 3) tensor; returns an (H, W, 3) tensor."""
    h, w = hazy.shape[:2]
    radius = default_radius(h, w) if radius is None else radius
    air = airlight(hazy, patch, band_rows=band_rows)
    safe = air.clamp(min=1e-6)

    def band(a0, a1):
        sub = hazy[a0:a1]
        t = guided_filter(_gray(sub), 1.0 - omega * dark_channel(sub / safe, patch), radius, eps)
        return ((sub - air) / t.clamp(min=t0)[..., None] + air).clamp_(0, 1)
    return by_bands(h, patch // 2 + 2 * radius + 1, band_rows, band, torch.empty_like(hazy))


def haze_recompose(hazy, restored, ls_radius=LS_RADIUS, radius=None, eps=EPS, t_min=T_MIN, band_rows=BAND_ROWS):
    """``recompose.haze_recompose`` of (H, W, 3) tensors; returns an (H, W, 3) tensor."""
    if restored.shape != hazy.shape:
        raise ValueError(f"the restored image's shape {tuple(restored.shape)} differs from the input's "
                         f"{tuple(hazy.shape)}")
    h, w = hazy.shape[:2]
    radius = default_radius(h, w) if radius is None else radius
    air = airlight(hazy, band_rows=band_rows)

    def band(a0, a1):
        d_in, d_out = hazy[a0:a1] - air, restored[a0:a1] - air
        t = box_mean((d_in * d_out).sum(-1), ls_radius) / box_mean((d_out * d_out).sum(-1), ls_radius).clamp(min=1e-6)
        t = guided_filter(_gray(hazy[a0:a1]), t, radius, eps).clamp_(t_min, 1.0)
        return (d_in / t[..., None] + air).clamp_(0, 1)
    return by_bands(h, ls_radius + 2 * radius + 1, band_rows, band, torch.empty_like(hazy))


def to_device_rgb(rgb: np.ndarray, device) -> torch.Tensor:
    """An HxWx3 array as a float32 tensor on ``device`` (what the functions above take)."""
    return torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32)).to(device)
