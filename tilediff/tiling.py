"""Tile grids and blend windows (pure functions; no torch modules).

Tiles are spread evenly along each axis with the first flush with the start and the last flush
with the end, so there are no sliver tiles and every tile has the same size (where the canvas is at
least one tile long). Blend windows are raised-cosine ramps across the overlaps, 1 elsewhere and at
the canvas edges; callers normalise by the per-pixel sum of weights.
"""
import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Tile:
    y0: int
    y1: int
    x0: int
    x1: int

    @property
    def shape(self):
        return self.y1 - self.y0, self.x1 - self.x0

    def grow(self, halo, height, width):
        """This tile grown by ``halo`` on every side, clipped to the canvas."""
        return Tile(max(0, self.y0 - halo), min(height, self.y1 + halo),
                    max(0, self.x0 - halo), min(width, self.x1 + halo))

    def scaled(self, factor):
        """The same region in units ``factor`` times finer (factor may be a fraction 1/2^k)."""
        return Tile(*(int(round(v * factor)) for v in (self.y0, self.y1, self.x0, self.x1)))

    def relative_to(self, outer):
        """Slices that cut this tile out of a tensor holding the region ``outer``."""
        return (slice(self.y0 - outer.y0, self.y1 - outer.y0), slice(self.x0 - outer.x0, self.x1 - outer.x0))

    @property
    def slices(self):
        return slice(self.y0, self.y1), slice(self.x0, self.x1)


def tile_starts(length, tile, overlap=0, align=1):
    """Start offsets of tiles of size ``tile`` covering [0, length) with at least ``overlap``.

    Starts are multiples of ``align`` (the last one is flush with the end, so ``length`` should be a
    multiple of ``align`` when alignment matters). A canvas shorter than a tile gets one tile.
    """
    if tile <= 0:
        raise ValueError(f"tile size must be positive, got {tile}")
    if length <= tile:
        return [0]
    overlap = min(overlap, tile - align)
    stride = tile - overlap
    count = math.ceil((length - tile) / stride) + 1
    last = length - tile
    starts = []
    for i in range(count):
        s = round(i * last / (count - 1))
        s = min(last, (s // align) * align) if i < count - 1 else last
        starts.append(s)
    return sorted(set(starts))


def grid(height, width, tile, overlap=0, align=1):
    """Overlapping equal-size tiles covering a height×width canvas, row-major."""
    th, tw = min(tile, height), min(tile, width)
    return [Tile(y, y + th, x, x + tw)
            for y in tile_starts(height, th, overlap, align)
            for x in tile_starts(width, tw, overlap, align)]


def even_cuts(length, tile, start=0):
    """Cut points start = c0 < c1 < … < cn = start + length: ⌈length / tile⌉ parts whose sizes
    differ by at most one, none longer than ``tile``."""
    if length <= 0:
        return [start]
    n = -(-length // tile)
    return [start + i * length // n for i in range(n + 1)]


def partition(height, width, tile):
    """Non-overlapping tiles (cores) covering the canvas, row-major: for exact halo-based tiling.

    As many tiles along each axis as ``tile`` needs, all about the same size (no narrow last
    column): a tile's tensors then come in one size, which the host allocator's reused blocks fit
    (``engine.host_memory.heap_reuse``)."""
    ys, xs = even_cuts(height, tile), even_cuts(width, tile)
    return [Tile(y0, y1, x0, x1) for y0, y1 in zip(ys, ys[1:]) for x0, x1 in zip(xs, xs[1:])]


def _ramp(n, lo_overlap, hi_overlap):
    """1-D weights: raised-cosine rise over the first lo_overlap samples, fall over the last hi_overlap."""
    w = torch.ones(n, dtype=torch.float64)
    for k in range(lo_overlap):
        w[k] = min(w[k], 0.5 - 0.5 * math.cos(math.pi * (k + 0.5) / lo_overlap))
    for k in range(hi_overlap):
        w[n - 1 - k] = min(w[n - 1 - k], 0.5 - 0.5 * math.cos(math.pi * (k + 0.5) / hi_overlap))
    return w


def blend_window(tile, tiles, height, width):
    """Weights (h, w) for ``tile``: ramps only where a neighbouring tile overlaps it."""
    top = max((t.y1 - tile.y0 for t in tiles if t.y0 < tile.y0 < t.y1 and _cols_meet(t, tile)), default=0)
    bottom = max((tile.y1 - t.y0 for t in tiles if t.y0 < tile.y1 < t.y1 and _cols_meet(t, tile)), default=0)
    left = max((t.x1 - tile.x0 for t in tiles if t.x0 < tile.x0 < t.x1 and _rows_meet(t, tile)), default=0)
    right = max((tile.x1 - t.x0 for t in tiles if t.x0 < tile.x1 < t.x1 and _rows_meet(t, tile)), default=0)
    h, w = tile.shape
    wy = _ramp(h, min(top, h), min(bottom, h))
    wx = _ramp(w, min(left, w), min(right, w))
    return (wy[:, None] * wx[None, :]).float()


def _cols_meet(a, b):
    return a.x0 < b.x1 and b.x0 < a.x1


def _rows_meet(a, b):
    return a.y0 < b.y1 and b.y0 < a.y1
