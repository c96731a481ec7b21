"""Random numbers keyed by (seed, step, global position).

The sampler needs fresh Gaussian noise for the whole canvas at every step. Drawing it from one
generator in call order would make the result depend on how the canvas is cut into tiles; instead
each value is a function of (seed, stream, batch index, step, channel, y, x): a counter-based
generator (Philox-4x32-10, ``counter_rng``) in plain torch integer ops, drawn on the canvas's own
device, the same bits on CPU and CUDA. Any region of the canvas can then be produced on its own, and
the same seed gives the same numbers whatever the tile size, batch or device.
"""
import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import torch

from .counter_rng import normal_region

BLOCK = 64  # rows of a PrefetchingNoise band are multiples of this
START_STEP = 0  # key for the noise of x_T = μ + λz; sampler steps use their time step t ≥ 1


def region_noise(seed, step, channels, y0, y1, x0, x1, stream=0, batch_index=0):
    """Standard normal noise (channels, y1−y0, x1−x0) for a region of the canvas, float32 on CPU.

    ``stream`` separates independent canvases of one run (e.g. the two views of a stereo pair).
    """
    return normal_region(seed, stream, step, channels, y0, y1, x0, x1, "cpu", batch_index)


class PositionalNoise:
    """A noise source for ``sde.sample``: noise(t, like) gives the whole canvas's z for step t, drawn
    on ``like``'s device; ``region`` draws part of it on the CPU."""

    def __init__(self, seed, stream=0):
        self.seed = int(seed)
        self.stream = stream

    def __call__(self, t, like):
        b, c, h, w = like.shape
        z = torch.stack([normal_region(self.seed, self.stream, t, c, 0, h, 0, w, like.device, i) for i in range(b)])
        return z.to(dtype=like.dtype)

    def region(self, t, channels, y0, y1, x0, x1, batch_index=0):
        return region_noise(self.seed, t, channels, y0, y1, x0, x1, self.stream, batch_index)


class PrefetchingNoise:
    """A PositionalNoise whose next step is drawn on a worker thread while the device works.

    The sampler asks for steps T, T−1, …, 1 in order. After serving step t this starts drawing step
    t−1 (into pinned memory on CUDA, so the copy to the device does not block the host), which takes
    the drawing of random numbers off the sampler's critical path. The values are the wrapped
    source's; a step asked for out of order is drawn on the spot.
    """

    def __init__(self, source, device, workers=None):
        self.source = source
        self.pin = torch.device(device).type == "cuda"
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tilediff-noise")
        # bands of cell rows drawn in parallel (torch releases the GIL while it fills a cell)
        self.workers = workers or max(1, min(4, (os.cpu_count() or 1) - 1))
        self.band_pool = ThreadPoolExecutor(self.workers, thread_name_prefix="tilediff-noise-band")
        self.pending = None   # (t, shape, future)

    def _draw(self, t, shape):
        b, c, h, w = shape
        z = torch.empty(shape, pin_memory=self.pin)
        rows_per_band = BLOCK * max(1, -(-h // (BLOCK * self.workers)))
        bands = [(i, y, min(h, y + rows_per_band)) for i in range(b) for y in range(0, h, rows_per_band)]

        def fill(band):
            i, y0, y1 = band
            z[i, :, y0:y1] = self.source.region(t, c, y0, y1, 0, w, batch_index=i)
        list(self.band_pool.map(fill, bands))
        return z

    def __call__(self, t, like):
        shape = tuple(like.shape)
        if self.pending is not None and self.pending[:2] == (t, shape):
            z = self.pending[2].result()
        else:
            z = self._draw(t, shape)
        self.pending = (t - 1, shape, self.pool.submit(self._draw, t - 1, shape)) if t > 1 else None
        return z.to(device=like.device, dtype=like.dtype, non_blocking=self.pin)

    def close(self):
        self.pending = None
        self.pool.shutdown(wait=True)
        self.band_pool.shutdown(wait=True)


@contextmanager
def run_noise(seed, stream, device, prefetch=False):
    """The noise source of one reverse run, ``PositionalNoise(seed, stream)``; with ``prefetch``
    a ``PrefetchingNoise`` on ``device`` around it, whose worker threads are stopped on exit. On CUDA
    ``prefetch`` is ignored: ``PositionalNoise`` draws on the device itself, with no host draw and
    no copy to wait for."""
    noise = PositionalNoise(seed, stream=stream)
    if not prefetch or torch.device(device).type == "cuda":
        yield noise
        return
    noise = PrefetchingNoise(noise, device)
    try:
        yield noise
    finally:
        noise.close()
