"""Bands of output rows: the engine's output arrives as (y0, rows) bands in raster order; a task's
post-processing that looks at neighbouring rows (dehazing's recomposition: box filters of a known
radius) runs band by band in front of the writer with ``map_bands``, holding one band and its halo."""
import numpy as np

__all__ = ["map_bands"]


def map_bands(bands, height, halo, fn):
    """``bands``: (y0, rows) in raster order covering rows 0..height. Yields (r0, out) for the same
    bands, where out = fn(a0, a1, rows a0..a1)[r0 − a0 : r1 − a0] and a0..a1 is the band r0..r1
    grown by ``halo`` rows each side (clipped to the image): exact for any ``fn`` whose value at a
    row depends only on the rows within ``halo`` of it. Each band is given out once the rows
    ``halo`` below it have come in; rows no later band needs are let go."""
    held, top = [], 0            # rows held (a list of arrays), the image row of the first
    pending = []                 # (r0, r1) bands not yet given out
    for y0, rows in bands:
        held.append(rows)
        pending.append((y0, y0 + rows.shape[0]))
        bottom = y0 + rows.shape[0]
        while pending and (pending[0][1] + halo <= bottom or bottom >= height):
            r0, r1 = pending.pop(0)
            a0, a1 = max(0, r0 - halo), min(height, r1 + halo, bottom)
            block = np.concatenate(held) if len(held) > 1 else held[0]
            held, start = [block], top
            out = fn(a0, a1, block[a0 - start:a1 - start])
            yield r0, out[r0 - a0:r1 - a0]
            keep_from = max(0, (pending[0][0] if pending else r1) - halo)   # rows the next bands need
            if keep_from > top:
                held, top = [block[keep_from - start:]], keep_from
