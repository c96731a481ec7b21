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

    Options for large photos and real haze (all off by default, and then the random stream and the
    stored description are exactly those of earlier runs):

    * ``scale_range=(lo, hi)``: each window is cut at a random scale ``s`` (log-uniform in [lo, hi],
      at most 1, and at least what keeps 2×crop pixels on the image's short side): a region of
      window/s pixels is box-downscaled by ``s`` (``downscale_window``). Photos of 2048 px then give
      both whole-scene views and full-resolution detail.
    * ``haze_v2``: haze with ``haze.add_haze_v2`` (tinted, spatially varying airlight; depth from
      smooth random fields and from image cues) instead of ``haze.add_haze``.
    * ``clear_fraction``: that fraction of the windows stays haze-free (LQ = GT, beta = 0), so the
      network learns to leave a clear photo alone.
    """

    def __init__(self, clean_dir, density="moderate", pool=32, refresh_per_step=2, window=512,
                 permute_channels=True, augment=False, scale_range=None, haze_v2=False, clear_fraction=0.0):
        self.files = list_images(clean_dir)
        self.images = [read_image(p).rgb for p in self.files]
        self.densities = parse_densities(density)
        self.density, self.pool_size, self.refresh_per_step = density, pool, refresh_per_step
        self.window, self.permute_channels, self.augment = window, permute_channels, augment
        self.scale_range = parse_scale_range(scale_range)
        self.haze_v2 = bool(haze_v2)
        if not 0.0 <= float(clear_fraction) <= 1.0:
            raise ValueError(f"clear_fraction must be in [0, 1], got {clear_fraction}")
        self.clear_fraction = float(clear_fraction)
        self.pool = []
        self.crop = None
        self.description = {"kind": "synthetic haze", "clean": str(clean_dir),
                            "images": [p.name for p in self.files], "density": density,
                            "haze": "tilediff.tasks.dehaze.haze.add_haze (atmospheric scattering, smooth random depth)",
                            "channel_permutation": permute_channels,
                            "augment": AUGMENT_TEXT if augment else None}
        if self.haze_v2:
            self.description["haze"] = HAZE_V2_TEXT
        if self.scale_range is not None:
            self.description["scale_range"] = list(self.scale_range)
        if self.clear_fraction:
            self.description["clear_fraction"] = self.clear_fraction

    def _window(self, rng, crop):
        img = self.images[int(rng.integers(len(self.images)))]
        perm = None
        if self.permute_channels and rng.random() < 0.5:
            perm = rng.permutation(3)
            if self.augment:     # augment_clean sees the permuted image, as it always has
                img, perm = img[..., perm], None
        # otherwise the window is permuted once cut: the same values, without copying a large photo
        if self.augment:
            img = augment_clean(img, rng, crop)
        img = _pad_to(img, crop)
        h, w = img.shape[:2]
        scale = 1.0
        if self.scale_range is not None:
            scale = _draw_scale(rng, self.scale_range, min(h, w), 2 * crop)
        sh, sw = max(1, int(h * scale)), max(1, int(w * scale))   # the image's size at that scale
        lo = min(2 * crop, sh, sw)
        wh = int(rng.integers(lo, max(lo, min(sh, self.window)) + 1))
        ww = int(rng.integers(lo, max(lo, min(sw, self.window)) + 1))
        if scale < 1.0:
            rh, rw = min(h, round(wh / scale)), min(w, round(ww / scale))
            y, x = int(rng.integers(0, h - rh + 1)), int(rng.integers(0, w - rw + 1))
            clean = downscale_window(img[y:y + rh, x:x + rw], wh, ww)
        else:
            y, x = int(rng.integers(0, h - wh + 1)), int(rng.integers(0, w - ww + 1))
            clean = np.ascontiguousarray(img[y:y + wh, x:x + ww])
        if perm is not None:
            clean = np.ascontiguousarray(clean[..., perm])
        # one density draws nothing, so single-density runs keep their random stream
        density = self.densities[0]
        if len(self.densities) > 1:
            density = self.densities[int(rng.integers(len(self.densities)))]
        if self.haze_v2:
            hazy, _ = haze.add_haze_v2(clean, rng, density=density, clear_prob=self.clear_fraction)
            return hazy, clean
        if self.clear_fraction and rng.random() < self.clear_fraction:
            return clean.copy(), clean
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


HAZE_V2_TEXT = ("tilediff.tasks.dehaze.haze.add_haze_v2 (atmospheric scattering; tinted, spatially varying "
                "airlight; depth from smooth random fields mixed with image cues)")


def parse_scale_range(scale_range):
    """None, or (lo, hi) with 0 < lo <= hi <= 1 from a pair or a text such as '0.25,1'."""
    if scale_range is None or scale_range == "":
        return None
    if isinstance(scale_range, str):
        try:
            values = [float(v) for v in scale_range.replace(" ", "").split(",") if v]
        except ValueError:
            values = []
    else:
        values = [float(v) for v in scale_range]
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or not 0 < values[0] <= values[1] <= 1:
        raise ValueError(f"scale range {scale_range!r}: give LO,HI with 0 < LO <= HI <= 1 (e.g. 0.25,1)")
    return values[0], values[1]


def _draw_scale(rng, scale_range, short_side, need):
    """A log-uniform scale in ``scale_range``, raised so that ``short_side * scale >= need``, at most 1."""
    lo, hi = scale_range
    s = float(np.exp(rng.uniform(np.log(lo), np.log(hi)))) if hi > lo else lo
    return min(1.0, max(s, need / short_side))


def downscale_window(region, h, w):
    """Box-downscale (torch ``area``) an HxWx3 region to ``h x w``; float32, contiguous."""
    if region.shape[:2] == (h, w):
        return np.ascontiguousarray(region, dtype=np.float32)
    t = torch.from_numpy(np.ascontiguousarray(region.transpose(2, 0, 1), dtype=np.float32))[None]
    out = torch.nn.functional.interpolate(t, size=(h, w), mode="area")[0].numpy().transpose(1, 2, 0)
    return np.ascontiguousarray(np.clip(out, 0, 1), dtype=np.float32)


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
                augment=False, scale_range=None, haze_v2=False, clear_fraction=0.0):
    """A ``HazeSource`` over ``clean`` or a ``PairedSource`` over ``lq`` and ``gt`` (exactly one of the two).

    ``scale_range``, ``haze_v2`` and ``clear_fraction`` are ``HazeSource`` options (synthetic haze only)."""
    if clean is not None and (lq is not None or gt is not None):
        raise ValueError("give either clean images (synthetic haze) or --lq and --gt folders, not both")
    if clean is not None:
        return HazeSource(clean, density=density, permute_channels=permute_channels, refresh_per_step=haze_refresh,
                          augment=augment, scale_range=scale_range, haze_v2=haze_v2, clear_fraction=clear_fraction)
    if lq is None or gt is None:
        raise ValueError("give clean images (--clean) or both --lq and --gt folders")
    if haze_v2 or clear_fraction or scale_range is not None:
        raise ValueError("--haze-v2, --clear-fraction and --scale-range apply to --clean (synthetic haze) only")
    return PairedSource(lq, gt)


def source_for(cfg):
    """The training source a TrainConfig describes (clean images hazed on the fly, or LQ/GT pairs)."""
    return make_source(cfg.clean, cfg.lq, cfg.gt, cfg.density, cfg.permute_channels, cfg.haze_refresh, cfg.augment,
                       scale_range=cfg.scale_range, haze_v2=cfg.haze_v2, clear_fraction=cfg.clear_fraction)


def batch(source, rng, size, crop):
    """(lq, gt) tensors of shape (size, 3, crop, crop)."""
    source.refresh(rng)
    pairs = [source.sample(rng, crop) for _ in range(size)]
    lq = torch.from_numpy(np.stack([np.ascontiguousarray(p[0].transpose(2, 0, 1)) for p in pairs]))
    gt = torch.from_numpy(np.stack([np.ascontiguousarray(p[1].transpose(2, 0, 1)) for p in pairs]))
    return lq, gt
