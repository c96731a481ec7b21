#!/usr/bin/env python
"""Synthetic "dead leaves" training images: overlapping disks with power-law radii.

    python scripts/make_dead_leaves.py OUT_DIR --count 24 --size 384 [--colors PHOTO_DIR] [--seed 0]

Why: the shipped dehazing model was trained on 12 photos and generalises poorly; dead-leaves images
have the occlusion and scale statistics of natural images (radius density ∝ r^-3) and can be drawn
in any number, a known substitute or complement for natural photos when training restoration
networks. Disk colours are sampled from the pixels of one colour photo of PHOTO_DIR per image (natural
colour statistics, a coherent palette; uniform random colours without it); some disks carry a linear shading ramp, the image
gets a light blur (no aliasing) and a little noise. Deterministic for a given seed.
"""
import argparse
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter


def colour_pools(photo_dir, rng, per_image=20000):
    """Per colour photo of a folder, RGB samples (N, 3) in [0, 1] (grey photos are skipped: they
    would make most disks grey)."""
    pools = []
    for path in sorted(Path(photo_dir).iterdir()):
        if path.suffix.lower() not in (".png", ".jpg", ".jpeg", ".tif", ".tiff"):
            continue
        img = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32).reshape(-1, 3) / 255
        if np.abs(img - img.mean(axis=1, keepdims=True)).mean() < 0.02:
            continue
        pools.append(img[rng.integers(0, len(img), min(per_image, len(img)))])
    if not pools:
        raise SystemExit(f"{photo_dir}: no colour images to sample colours from")
    return pools


def dead_leaves(size, rng, colours=None, r_min=4.0, r_max=None, coverage_disks=None):
    """One (size, size, 3) float image: disks drawn front to back until the canvas is covered."""
    r_max = r_max or size
    img = np.zeros((size, size, 3), np.float32)
    covered = np.zeros((size, size), bool)
    yy, xx = np.mgrid[0:size, 0:size]
    for _ in range(coverage_disks or 20000):
        # inverse-CDF sample of p(r) ∝ r^-3 on [r_min, r_max]
        u = rng.random()
        r = 1 / np.sqrt(1 / r_min ** 2 - u * (1 / r_min ** 2 - 1 / r_max ** 2))
        cy, cx = rng.uniform(-r, size + r, 2)
        y0, y1 = int(max(0, cy - r)), int(min(size, cy + r + 1))
        x0, x1 = int(max(0, cx - r)), int(min(size, cx + r + 1))
        if y0 >= y1 or x0 >= x1:
            continue
        sub_y, sub_x = yy[y0:y1, x0:x1], xx[y0:y1, x0:x1]
        disk = (sub_y - cy) ** 2 + (sub_x - cx) ** 2 <= r * r
        new = disk & ~covered[y0:y1, x0:x1]   # front to back: earlier disks occlude later ones
        if not new.any():
            continue
        colour = colours[rng.integers(len(colours))] if colours is not None else rng.random(3)
        if rng.random() < 0.3:   # a shading ramp across the disk
            gy, gx = rng.normal(0, 0.4 / max(r, 1), 2)
            ramp = 1 + gy * (sub_y - cy) + gx * (sub_x - cx)
            patch = np.clip(colour[None, None, :] * ramp[..., None], 0, 1)
            img[y0:y1, x0:x1][new] = patch[new]
        else:
            img[y0:y1, x0:x1][new] = colour
        covered[y0:y1, x0:x1] |= new
        if covered.all():
            break
    img = gaussian_filter(img, sigma=(0.7, 0.7, 0))
    img += rng.normal(0, 0.01, img.shape).astype(np.float32)
    return np.clip(img, 0, 1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--count", type=int, default=24)
    ap.add_argument("--size", type=int, default=384)
    ap.add_argument("--colors", help="folder of photos to sample disk colours from")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    pools = colour_pools(args.colors, rng) if args.colors else None
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for i in range(args.count):
        # each image takes its colours from one photo (a coherent palette)
        img = dead_leaves(args.size, rng, pools[i % len(pools)] if pools else None)
        Image.fromarray((img * 255 + 0.5).astype(np.uint8)).save(out / f"dead_leaves_{i:03d}.png")
    print(f"wrote {args.count} images of {args.size}x{args.size} to {out}")


if __name__ == "__main__":
    main()
