"""Training data: (LQ, GT) crops from paired folders, or from clean photos hazed on the fly.

A source has ``sample(rng, crop) -> (lq, gt)`` (HxWx3 float32 crops, the same random crop and flip
for both), ``refresh(rng)`` (called once per step) and ``description`` (stored in the model file's
training metadata). Every random draw goes through the generator it is given, so a run is
reproducible from its seed and a resumed run from its saved generator state.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..io import SUPPORTED_EXTENSIONS, read_image
from ..tasks.dehaze import haze

IMAGE_SUFFIXES = SUPPORTED_EXTENSIONS   # what io.read_image reads


def list_images(folder):
    """The image files of a folder, sorted by name (so a run sees them in the same order everywhere)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder}: not a folder")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise ValueError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def _flip(arrays, rng):
    """The same random horizontal/vertical flip and transpose (8 dihedral variants) for all arrays."""
    k = int(rng.integers(0, 8))
    out = []
    for a in arrays:
        if k & 1:
            a = a[:, ::-1]
        if k & 2:
            a = a[::-1]
        if k & 4:
            a = a.transpose(1, 0, 2)
        out.append(a)
    return out


def _pad_to(a, size):
    """Reflect-pad an HxWxC array so that both sides are at least ``size``."""
    h, w = a.shape[:2]
    if h >= size and w >= size:
        return a
    ph, pw = max(0, size - h), max(0, size - w)
    return np.pad(a, ((0, ph), (0, pw), (0, 0)), mode="reflect" if min(h, w) > max(ph, pw) else "edge")


class PairedSource:
    """LQ/GT images from two folders, paired by file name stem."""

    def __init__(self, lq_dir, gt_dir):
        lq = {p.stem: p for p in list_images(lq_dir)}
        gt = {p.stem: p for p in list_images(gt_dir)}
        names = sorted(set(lq) & set(gt))
        if not names:
            raise ValueError(f"no file names in common between {lq_dir} and {gt_dir}")
        self.names = names
        self.pairs = []
        for n in names:
            a, b = read_image(lq[n]).rgb, read_image(gt[n]).rgb
            if a.shape != b.shape:
                raise ValueError(f"{n}: LQ {a.shape} and GT {b.shape} differ in size")
            self.pairs.append((a, b))
        self.description = {"kind": "paired", "lq": str(lq_dir), "gt": str(gt_dir), "images": names}

    def refresh(self, rng):
        pass

    def sample(self, rng, crop):
        lq, gt = self.pairs[int(rng.integers(len(self.pairs)))]
        lq, gt = _pad_to(lq, crop), _pad_to(gt, crop)
        y = int(rng.integers(0, lq.shape[0] - crop + 1))
        x = int(rng.integers(0, lq.shape[1] - crop + 1))
        return _flip([lq[y:y + crop, x:x + crop], gt[y:y + crop, x:x + crop]], rng)


class HazeSource:
    """Clean images hazed on the fly with ``tasks.dehaze.haze.add_haze``.

    Hazing a whole window (not just the crop) keeps the depth map as smooth across a crop as it is
    across a test image. Hazing costs ~50 ms per window, so crops come from a pool of ``pool`` hazed
    windows of which ``refresh_per_step`` are replaced at every step. A window is a random region
    between 2×crop and ``window`` pixels a side; with ``permute_channels`` the clean image's RGB
    channels are randomly permuted first (more colours from few photos); with ``augment`` the clean
    image is also rescaled and its tones jittered (``augment_clean``).

    The pool is not part of a checkpoint: a resumed run rebuilds it from the restored generator, so it
    is deterministic but not bit-identical to an uninterrupted run.
    """

    def __init__(self, clean_dir, density="moderate", pool=32, refresh_per_step=2, window=512,
                 permute_channels=True, augment=False):
        self.files = list_images(clean_dir)
        self.images = [read_image(p).rgb for p in self.files]
        self.densities = parse_densities(density)
        self.density, self.pool_size, self.refresh_per_step = density, pool, refresh_per_step
        self.window, self.permute_channels, self.augment = window, permute_channels, augment
        self.pool = []
        self.crop = None
        self.description = {"kind": "synthetic haze", "clean": str(clean_dir),
                            "images": [p.name for p in self.files], "density": density,
                            "haze": "tilediff.tasks.dehaze.haze.add_haze (atmospheric scattering, smooth random depth)",
                            "channel_permutation": permute_channels,
                            "augment": AUGMENT_TEXT if augment else None}

    def _window(self, rng, crop):
        img = self.images[int(rng.integers(len(self.images)))]
        if self.permute_channels and rng.random() < 0.5:
            img = img[..., rng.permutation(3)]
        if self.augment:
            img = augment_clean(img, rng, crop)
        img = _pad_to(img, crop)
        h, w = img.shape[:2]
        lo = min(2 * crop, h, w)
        wh = int(rng.integers(lo, max(lo, min(h, self.window)) + 1))
        ww = int(rng.integers(lo, max(lo, min(w, self.window)) + 1))
        y, x = int(rng.integers(0, h - wh + 1)), int(rng.integers(0, w - ww + 1))
        clean = np.ascontiguousarray(img[y:y + wh, x:x + ww])
        # one density draws nothing, so single-density runs keep their random stream
        density = self.densities[0]
        if len(self.densities) > 1:
            density = self.densities[int(rng.integers(len(self.densities)))]
        hazy, _ = haze.add_haze(clean, rng, density=density)
        return hazy, clean

    def refresh(self, rng):
        if self.crop is None:
            return
        for _ in range(self.refresh_per_step):
            self.pool[int(rng.integers(len(self.pool)))] = self._window(rng, self.crop)

    def sample(self, rng, crop):
        if crop != self.crop:
            self.crop = crop
            self.pool = [self._window(rng, crop) for _ in range(self.pool_size)]
        lq, gt = self.pool[int(rng.integers(len(self.pool)))]
        y = int(rng.integers(0, lq.shape[0] - crop + 1))
        x = int(rng.integers(0, lq.shape[1] - crop + 1))
        return _flip([lq[y:y + crop, x:x + crop], gt[y:y + crop, x:x + crop]], rng)


AUGMENT_TEXT = ("downscale 0.5-1x (area, at least the crop), gamma 0.7-1.4, saturation 0.6-1.3, "
                "brightness 0.8-1.1, before hazing")


def augment_clean(img, rng, crop):
    """More scenes from few photos: a random downscale (objects at other sizes) and tone jitter.

    Ranges in ``AUGMENT_TEXT``; applied to the clean image before hazing, so the haze model is unchanged.
    """
    h, w = img.shape[:2]
    low = max(0.5, min(1.0, crop / min(h, w)))
    scale = rng.uniform(low, 1.0)
    if scale < 0.98:
        t = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))[None]
        size = (max(crop, round(h * scale)), max(crop, round(w * scale)))
        img = torch.nn.functional.interpolate(t, size=size, mode="area")[0].numpy().transpose(1, 2, 0)
    img = np.clip(img, 0, 1) ** rng.uniform(0.7, 1.4)
    gray = img.mean(axis=2, keepdims=True)
    img = gray + (img - gray) * rng.uniform(0.6, 1.3)
    img = img * rng.uniform(0.8, 1.1)
    return np.clip(img, 0, 1).astype(np.float32)


def parse_densities(density):
    """'moderate' or a comma-separated mix such as 'light,moderate,dense' (each window draws one uniformly)."""
    names = [d.strip() for d in str(density).split(",") if d.strip()]
    bad = [d for d in names if d not in haze.BETA_RANGES]
    if not names or bad:
        raise ValueError(f"unknown haze density {density!r}; use {', '.join(haze.BETA_RANGES)} "
                         "or a comma-separated mix")
    return names


def make_source(clean=None, lq=None, gt=None, density="moderate", permute_channels=True, haze_refresh=2,
                augment=False):
    """A ``HazeSource`` over ``clean`` or a ``PairedSource`` over ``lq`` and ``gt`` (exactly one of the two)."""
    if clean is not None and (lq is not None or gt is not None):
        raise ValueError("give either clean images (synthetic haze) or --lq and --gt folders, not both")
    if clean is not None:
        return HazeSource(clean, density=density, permute_channels=permute_channels, refresh_per_step=haze_refresh,
                          augment=augment)
    if lq is None or gt is None:
        raise ValueError("give clean images (--clean) or both --lq and --gt folders")
    return PairedSource(lq, gt)


def source_for(cfg):
    """The training source a TrainConfig describes (clean images hazed on the fly, or LQ/GT pairs)."""
    return make_source(cfg.clean, cfg.lq, cfg.gt, cfg.density, cfg.permute_channels, cfg.haze_refresh, cfg.augment)


def batch(source, rng, size, crop):
    """(lq, gt) tensors of shape (size, 3, crop, crop)."""
    source.refresh(rng)
    pairs = [source.sample(rng, crop) for _ in range(size)]
    lq = torch.from_numpy(np.stack([np.ascontiguousarray(p[0].transpose(2, 0, 1)) for p in pairs]))
    gt = torch.from_numpy(np.stack([np.ascontiguousarray(p[1].transpose(2, 0, 1)) for p in pairs]))
    return lq, gt
