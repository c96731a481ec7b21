"""Random numbers keyed by (seed, step, global position).

The sampler needs fresh Gaussian noise for the whole canvas at every step. Drawing it from one
generator in call order would make the result depend on how the canvas is cut into tiles; instead
the canvas is divided into fixed BLOCK×BLOCK cells and each cell's numbers come from a generator
seeded with a hash of (seed, step, cell row, cell column). Any region of the canvas can then be
produced on its own, and the same seed gives the same numbers whatever the tile size or batch.
"""
import hashlib

import torch

BLOCK = 64
START_STEP = 0  # key for the noise of x_T = μ + λz; sampler steps use their time step t ≥ 1


def _cell_seed(seed, step, row, col, stream):
    key = f"{seed}/{stream}/{step}/{row}/{col}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") & ((1 << 63) - 1)


def region_noise(seed, step, channels, y0, y1, x0, x1, stream=0, batch_index=0):
    """Standard normal noise (channels, y1−y0, x1−x0) for a region of the canvas, float32 on CPU.

    ``stream`` separates independent canvases of one run (e.g. the two views of a stereo pair).
    """
    out = torch.empty(channels, y1 - y0, x1 - x0)
    gen = torch.Generator()
    for row in range(y0 // BLOCK, (y1 - 1) // BLOCK + 1):
        for col in range(x0 // BLOCK, (x1 - 1) // BLOCK + 1):
            gen.manual_seed(_cell_seed(seed, step, row, col, f"{stream}.{batch_index}"))
            cell = torch.randn(channels, BLOCK, BLOCK, generator=gen)
            cy0, cx0 = row * BLOCK, col * BLOCK
            ys, ye = max(y0, cy0), min(y1, cy0 + BLOCK)
            xs, xe = max(x0, cx0), min(x1, cx0 + BLOCK)
            out[:, ys - y0:ye - y0, xs - x0:xe - x0] = cell[:, ys - cy0:ye - cy0, xs - cx0:xe - cx0]
    return out


class PositionalNoise:
    """A noise source for ``sde.sample``: noise(t, like) gives the whole canvas's z for step t."""

    def __init__(self, seed, stream=0):
        self.seed = int(seed)
        self.stream = stream

    def __call__(self, t, like):
        b, c, h, w = like.shape
        z = torch.stack([region_noise(self.seed, t, c, 0, h, 0, w, self.stream, i) for i in range(b)])
        return z.to(device=like.device, dtype=like.dtype)

    def region(self, t, channels, y0, y1, x0, x1, batch_index=0):
        return region_noise(self.seed, t, channels, y0, y1, x0, x1, self.stream, batch_index)
