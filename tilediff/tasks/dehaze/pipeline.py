"""Dehazing around the engine: the dark channel prior start before it, the recomposition after it.

diffusers-style, a task that needs more than the engine is a small pipeline: ``prepare`` says
what the reverse runs start from (``Start.prior``) and what is done to the engine's output before
it is written (``Start.finish``). The engine knows no task; ``Restorer`` calls ``prepare`` for a
task whose registry entry names this module. Both work on the input as a region source (``io.sources``), never on a whole
float copy of it:

- prior 'dcp' (``DehazeOptions.prior``): each reverse run starts at step round(prior_t · T) from the
  forward process around the latent of the dark channel prior's output (SDEdit-style), so the
  network refines the classic estimate over those steps instead of starting from noise. The
  estimate is itself a region source (``DarkChannelPriorSource``): computed as the encoder asks
  for it, from the input's rows with their halo, with the whole image's airlight.
- recompose: the output is rebuilt from the input with the transmission the restored image implies
  (``recompose.haze_recompose``: the model decides the haze, the input gives every detail), band by
  band in front of the writer (``Finish``: the band function and its halo).
The airlight, the one global quantity of both, is computed first from the input in bands
(``airlight_of_source``). On a GPU both run on the whole image in torch (``torch_ops``).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from .dcp import BAND_ROWS, dark_channel, dark_channel_prior, default_radius
from .recompose import LS_RADIUS, haze_recompose

PATCH = 15                # the dark channel's patch (dcp.dark_channel_prior's default)
TOP_FRACTION = 0.001      # of the dark channel's pixels considered for the airlight
COLUMN_TILE = 1024        # the banded filters run over column tiles of this width (+ their halo)


@dataclass
class Finish:
    """Post-processing of the engine's output, band by band: ``fn(a0, a1, rows)`` gives rows a0..a1
    of the result from the restored rows a0..a1; exact for bands grown by ``halo`` rows each side
    (``engine.bands.map_bands``). ``seconds`` counts the time spent in it; ``held_bytes`` what a
    band of ``rows`` rows holds."""

    halo: int
    fn: Callable
    held_bytes: Callable = lambda rows: 0
    seconds: float = 0.0


@dataclass
class Start:
    """Where the reverse runs start (an estimate of the restored image as a region source, and the
    step), and what is done to their output (``finish``, or None); ``seconds``: the time it took."""

    prior: object | None = None
    start_step: int | None = None
    finish: Finish | None = None
    seconds: float = 0.0


def airlight_of_source(source, patch=PATCH, top_fraction=TOP_FRACTION, band_rows=BAND_ROWS):
    """``dcp.airlight_of`` of a region source, in bands of rows: the brightest (R+G+B) input pixel
    among the ``top_fraction`` of the pixels with the highest dark channel, holding one band and
    those candidates. Where pixels tie at the cut any of them may be taken into the set, as in
    ``dcp.estimate_airlight``; otherwise the same pixel."""
    h, w = source.shape
    n = max(1, int(round(h * w * top_fraction)))
    halo = patch // 2 + 1
    darks, colours = np.empty(0, np.float32), np.empty((0, 3), np.float32)
    for r0 in range(0, h, band_rows):
        r1 = min(h, r0 + band_rows)
        a0, a1 = max(0, r0 - halo), min(h, r1 + halo)
        rows = np.ascontiguousarray(source.region(a0, a1, 0, w).transpose(1, 2, 0))
        darks = np.concatenate([darks, dark_channel(rows, patch)[r0 - a0:r1 - a0].ravel()])
        colours = np.concatenate([colours, rows[r0 - a0:r1 - a0].reshape(-1, 3)])
        if darks.size > n:
            keep = np.argpartition(darks, darks.size - n)[darks.size - n:]
            darks, colours = darks[keep], colours[keep]
    candidates = colours.astype(np.float64)
    return candidates[np.argmax(candidates.sum(axis=1))].copy()


def _column_tiles(fn, width, halo, *planes):
    """``fn(*planes)`` computed over column tiles of ``COLUMN_TILE`` grown by ``halo`` columns
    each side and put together: the same as on the whole planes for a function whose value at a
    pixel depends on the columns within ``halo`` of it, with temporaries a tile wide."""
    if width <= COLUMN_TILE + 2 * halo:
        return fn(*planes)
    out = None
    for x0 in range(0, width, COLUMN_TILE):
        x1 = min(width, x0 + COLUMN_TILE)
        b0, b1 = max(0, x0 - halo), min(width, x1 + halo)
        part = fn(*(p[:, b0:b1] for p in planes))
        if out is None:
            out = np.empty(part.shape[:1] + (width,) + part.shape[2:], part.dtype)
        out[:, x0:x1] = part[:, x0 - b0:x1 - b0]
    return out


class DarkChannelPriorSource:
    """The dark channel prior's estimate of a region source, as a region source itself.

    Rows are computed as they are first asked for, in chunks of rows (each from the input's rows
    grown by the prior's halo, over column tiles), and held from the top of the last request
    down: the encoder reads its tiles in raster order, so each row is computed about once while a
    band of rows as tall as a row of tiles is held. The airlight and the guided filter's radius
    are the whole image's, so a region's values equal the whole-image computation's.
    """

    channels = 3

    def __init__(self, source, airlight, chunk_rows=512):
        self.source = source
        self.height, self.width = source.shape
        self.airlight = np.asarray(airlight, np.float32)
        self.radius = default_radius(self.height, self.width)
        self.halo = PATCH // 2 + 2 * self.radius + 1
        self.chunk_rows = int(chunk_rows)
        self.top, self.rows = 0, np.empty((0, self.width, 3), np.float32)   # held output rows top..

    def held_bytes(self, rows):
        """Bytes held while the encoder reads bands of ``rows`` rows."""
        planes = 12   # the estimate and the filters' temporaries over a column tile
        return (12 * self.width * (rows + self.chunk_rows)
                + 4 * planes * (self.chunk_rows + 2 * self.halo) * (COLUMN_TILE + 2 * self.halo))

    def region(self, y0, y1, x0, x1):
        if y0 < self.top:                                   # out of raster order: start again
            self.top, self.rows = y0, np.empty((0, self.width, 3), np.float32)
        if y0 > self.top:                                   # rows no later request needs
            drop = min(y0 - self.top, self.rows.shape[0])
            self.top, self.rows = self.top + drop, self.rows[drop:]
        while self.top + self.rows.shape[0] < y1:
            start = self.top + self.rows.shape[0]
            stop = min(self.height, max(y1, start + self.chunk_rows))
            self.rows = np.concatenate([self.rows, self._compute(start, stop)])
        rows = self.rows[y0 - self.top:y1 - self.top, x0:x1]
        return np.ascontiguousarray(rows.transpose(2, 0, 1))

    def _compute(self, r0, r1):
        a0, a1 = max(0, r0 - self.halo), min(self.height, r1 + self.halo)
        hazy = np.ascontiguousarray(self.source.region(a0, a1, 0, self.width).transpose(1, 2, 0))
        dehazed = _column_tiles(lambda img: dark_channel_prior(img, radius=self.radius, airlight=self.airlight),
                                self.width, self.halo, hazy)
        return dehazed[r0 - a0:r1 - a0]


def _whole_rgb(source):
    return np.ascontiguousarray(source.region(0, source.height, 0, source.width).transpose(1, 2, 0))


def _gpu_estimate(source, device):
    """The dark channel prior of the whole image in torch on the GPU, as an array source."""
    from ...io.sources import ArraySource
    from . import torch_ops
    estimate = torch_ops.dark_channel_prior(torch_ops.to_device_rgb(_whole_rgb(source), device)).cpu().numpy()
    return ArraySource(estimate)


def prepare(source, options, schedule_steps: int, device: torch.device) -> Start:
    """What the reverse runs start from, and what is done to their output, for the input (a
    region source) under resolved ``options``.

    ``schedule_steps`` is T of the schedule the sampler runs on; the runs start at
    round(prior_t · T), at least step 1. The airlight is computed once for both parts.
    """
    opts = options.task_options
    if opts is None or (opts.prior_name is None and not opts.recompose):
        return Start()
    begin = time.perf_counter()
    air = None if device.type == "cuda" else airlight_of_source(source)
    start = Start(finish=_recomposition(source, air, device) if opts.recompose else None)
    if opts.prior_name is not None:
        start.prior = _gpu_estimate(source, device) if device.type == "cuda" else DarkChannelPriorSource(source, air)
        start.start_step = max(1, min(schedule_steps, round(opts.prior_t * schedule_steps)))
    start.seconds = time.perf_counter() - begin
    return start


def _recomposition(source, air, device) -> Finish:
    """``recompose.haze_recompose`` as a band function over the input, with the whole image's
    airlight and radius (on a GPU: the whole image at once in torch, a halo as tall as the image)."""
    h, w = source.shape
    if device.type == "cuda":
        from . import torch_ops

        def whole(a0, a1, restored):
            return torch_ops.haze_recompose(torch_ops.to_device_rgb(_whole_rgb(source), device),
                                            torch_ops.to_device_rgb(restored, device)).cpu().numpy()
        return Finish(h, whole, lambda rows: 24 * h * w)
    radius = default_radius(h, w)
    halo = LS_RADIUS + 2 * radius + 1

    def band(a0, a1, restored):
        hazy = np.ascontiguousarray(source.region(a0, a1, 0, w).transpose(1, 2, 0))
        return _column_tiles(lambda i, r: haze_recompose(i, r, air=air, radius=radius), w, halo, hazy, restored)

    def held(rows):   # the band with its halo (input, restored, output) and a column tile's temporaries
        return 36 * w * (rows + 2 * halo) + 48 * (rows + 2 * halo) * (COLUMN_TILE + 2 * halo)
    return Finish(halo, band, held)
