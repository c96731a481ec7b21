"""Band sinks: restored rows written to their file as they are decoded, in raster order.

The engine gives its output as bands of rows, (y0, rows) with ``rows`` float32 (h, W, 3) in
[0, 1]. A sink turns each band into the output's samples (`to_samples`: the source's mode, sample
type and alpha plane, read from the source band by band) and writes it:

- TIFF (`tiff.write_tiff_bands`): a row of tiles or one strip at a time, in the source's layout,
  compression and predictor, BigTIFF past 4 GB (planar layouts go through a temporary file first);
- PNG: rows are filtered (the adaptive per-row choice libpng and Pillow make) and go through one
  zlib stream into IDAT chunks as they come; IHDR, iCCP, eXIf and IEND are written here;
- JPEG: no library here writes JPEG incrementally, so its 8-bit samples are assembled (one byte
  per sample, not float) and written whole at the end.

`FileSink` checks everything it can before the engine starts (format, PNG level, JPEG and alpha)
and writes atomically (`atomic.atomic_write`: a temporary file renamed into place, removed on any
error and on Ctrl-C). Errors of its own are ImageWriteError naming the file; an error raised by the
bands (the engine's) goes through unchanged. `ArraySink` collects the bands into one array (the
whole-array `Restorer.restore`).
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np

from .errors import ImageWriteError, describe
from .samples import to_samples

__all__ = ['ArraySink', 'FileSink', 'open_sink']

_PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
_IDAT_BYTES = 1 << 20      # compressed bytes per IDAT chunk at most (about)
_FILTER_ROWS = 32          # PNG rows filtered at once (their five candidate filterings are held)


class ArraySink:
    """Collects the bands into one float32 (H, W, C) array: `write` returns it."""

    def __init__(self, height: int, width: int, channels: int = 3):
        self.array = np.empty((height, width, channels), np.float32)
        self.held_bytes = self.array.nbytes

    def write(self, bands) -> np.ndarray:
        for y0, rows in bands:
            self.array[y0:y0 + rows.shape[0]] = rows
        return self.array


class _Like:
    """What the writer keeps from the input: a region source, an `ImageData`, or nothing."""

    def __init__(self, like, height, width):
        self.format = getattr(like, 'format', None)
        self.icc = getattr(like, 'icc', None)
        self.exif = getattr(like, 'exif', None)
        self.tiff = getattr(like, 'tiff', None)
        self.mode = getattr(like, 'mode', 'rgb') if like is not None else 'rgb'
        self.dtype = np.dtype(like.dtype) if like is not None else np.dtype(np.uint8)
        self.height, self.width = (like.shape if like is not None else (height, width))
        plane = getattr(like, 'alpha', None)
        if callable(plane):                      # a region source: read band by band
            self.has_alpha = bool(like.has_alpha)
            self.alpha = lambda y0, y1: plane(y0, y1)
        else:                                    # ImageData: the whole plane, or None
            self.has_alpha = plane is not None
            self.alpha = lambda y0, y1: plane[y0:y1] if plane is not None else None


class FileSink:
    """Writes bands to ``path`` atomically, shaped like the input ``like`` (see `write_image`).

    ``like``: a region source or an `ImageData` (mode, sample type, alpha, ICC, EXIF, TIFF layout
    are kept), or None with ``height`` and ``width`` (8-bit RGB). ``format``, ``jpeg_quality``,
    ``compression`` and ``bigtiff`` as `write_image` takes them. ``scratch_dir``: where a planar
    TIFF's temporary file goes (default: the output's folder).
    """

    def __init__(self, path, like=None, *, format: str | None = None, jpeg_quality: int = 95,
                 compression: str | int | None = None, bigtiff: bool | None = None,
                 height: int | None = None, width: int | None = None, scratch_dir=None):
        from . import _output_format
        from .tiff import tiff_compression
        self.path = Path(path)
        try:
            self.like = _Like(like, height, width)
            self.format = _output_format(self.path, format, like)
            if self.format == 'png' and compression is not None and not (
                    isinstance(compression, int) and 0 <= compression <= 9):
                raise ValueError(f'PNG compression is a zlib level 0-9, not {compression!r}')
            dtype = self.like.dtype
            if self.format == 'png' and dtype == np.float32:
                dtype = np.dtype(np.uint16)
            if self.format == 'jpeg':
                dtype = np.dtype(np.uint8)
                if self.like.has_alpha:
                    raise ValueError('JPEG cannot store the alpha channel; write PNG or TIFF')
            if dtype not in (np.uint8, np.uint16, np.float32):
                dtype = np.dtype(np.uint8)   # a caller's array of another type: 8-bit, as write_image
            self.dtype = dtype
            self.samples = (1 if self.like.mode == 'gray' else 3) + self.like.has_alpha
            if self.format == 'tiff':
                tiff_compression(self.like.tiff, compression, dtype)   # an unknown codec name fails now
        except Exception as exc:
            raise ImageWriteError(self.path, describe(exc)) from exc
        self.jpeg_quality, self.compression, self.bigtiff = int(jpeg_quality), compression, bigtiff
        self.scratch_dir = scratch_dir if scratch_dir is not None else self.path.parent

    @property
    def shape(self):
        return self.like.height, self.like.width, self.samples

    @property
    def held_bytes(self) -> int:
        """About how much the writer holds while it writes (for the engine's plan)."""
        h, w, s = self.shape
        row = w * s * self.dtype.itemsize
        if self.format == 'jpeg':
            return h * row
        if self.format == 'png':
            return row * _FILTER_ROWS * 12
        layout = self.like.tiff
        rows = (layout.tile[0] if layout is not None and layout.tile else
                (layout.rowsperstrip if layout is not None and layout.rowsperstrip else 256))
        return 3 * row * min(h, rows) + (8 << 20)

    def write(self, bands) -> Path:
        """Write the bands ((y0, float32 rows) in raster order); returns the path written."""
        from .atomic import atomic_write
        upstream = []
        samples = self._samples(bands, upstream)
        try:
            return atomic_write(self.path, lambda fh: self._write(fh, samples))
        except Exception as exc:  # KeyboardInterrupt, SystemExit keep their meaning
            if upstream and exc is upstream[0]:
                raise                                  # the engine's error, not the writer's
            raise ImageWriteError(self.path, f'cannot write ({describe(exc)})') from exc

    def _samples(self, bands, upstream):
        """The output's samples band by band; an exception of the bands is noted in ``upstream``."""
        bands = iter(bands)
        while True:
            try:
                y0, rows = next(bands)
            except StopIteration:
                return
            except BaseException as exc:
                upstream.append(exc)
                raise
            alpha = self.like.alpha(y0, y0 + rows.shape[0]) if self.like.has_alpha else None
            yield to_samples(rows, self.like.mode, self.dtype, alpha)

    def _write(self, fh, samples):
        like = self.like
        if self.format == 'tiff':
            from .tiff import write_tiff_bands
            write_tiff_bands(fh, self.shape, self.dtype, samples, layout=like.tiff, icc=like.icc,
                             exif=like.exif, compression=self.compression, bigtiff=self.bigtiff,
                             scratch_dir=self.scratch_dir)
        elif self.format == 'png':
            write_png_rows(fh, samples, self.shape, self.dtype, icc=like.icc, exif=like.exif,
                           level=6 if self.compression is None else int(self.compression))
        else:
            from .jpeg import write_jpeg
            whole = np.empty(self.shape, np.uint8)
            done = 0
            for block in samples:
                whole[done:done + block.shape[0]] = block
                done += block.shape[0]
            write_jpeg(fh, whole, icc=like.icc, exif=like.exif, quality=self.jpeg_quality)


def open_sink(path: os.PathLike | str, like=None, **options) -> FileSink:
    """A `FileSink` for ``path`` (keywords as `FileSink` takes them); checks the options now."""
    return FileSink(path, like, **options)


# --------------------------------------------------------------------------
# PNG, streamed


def write_png_rows(fh, blocks, shape, dtype, *, icc: bytes | None, exif: bytes | None, level: int) -> None:
    """PNG from blocks of (rows, W, S) uint8 or uint16 samples in raster order, into fh.

    One zlib stream (level ``level``) over the filtered rows, cut into IDAT chunks as it grows;
    each row gets the filter (of the five PNG filters) whose output has the smallest sum of
    absolute values as signed bytes, the heuristic libpng and Pillow use.
    """
    height, width, nchan = shape
    dtype = np.dtype(dtype)
    depth = 16 if dtype == np.uint16 else 8
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[nchan]
    fh.write(_PNG_SIGNATURE)
    fh.write(_chunk(b'IHDR', struct.pack('>IIBBBBB', width, height, depth, colour_type, 0, 0, 0)))
    if icc:
        fh.write(_chunk(b'iCCP', b'ICC profile\x00\x00' + zlib.compress(icc)))
    if exif:
        fh.write(_chunk(b'eXIf', exif[6:] if exif.startswith(b'Exif\x00\x00') else exif))
    bpp = nchan * depth // 8
    stream = zlib.compressobj(level)
    previous = np.zeros(width * bpp, np.uint8)
    pending, written = [], 0
    for block in blocks:
        raw = np.ascontiguousarray(block, '>u2' if depth == 16 else np.uint8).view(np.uint8)
        raw = raw.reshape(block.shape[0], width * bpp)
        for r in range(0, raw.shape[0], _FILTER_ROWS):
            rows = raw[r:r + _FILTER_ROWS]
            pending.append(stream.compress(_filtered(rows, previous, bpp).tobytes()))
            previous = rows[-1]
            if sum(map(len, pending)) >= _IDAT_BYTES:
                fh.write(_chunk(b'IDAT', b''.join(pending)))
                pending = []
        written += block.shape[0]
    if written != height:
        raise ValueError(f'the bands held {written} rows of {height}')
    pending.append(stream.flush())
    fh.write(_chunk(b'IDAT', b''.join(pending)))
    fh.write(_chunk(b'IEND', b''))


def _filtered(rows: np.ndarray, previous: np.ndarray, bpp: int) -> np.ndarray:
    """Rows (r, n) of raw bytes → (r, 1 + n): each row's filter type and its filtered bytes."""
    x = rows.astype(np.int16)
    b = np.empty_like(x)
    b[0] = previous
    b[1:] = x[:-1]
    a = np.zeros_like(x)
    a[:, bpp:] = x[:, :-bpp]
    c = np.zeros_like(x)
    c[:, bpp:] = b[:, :-bpp]
    pa, pb, pc = np.abs(b - c), np.abs(a - c), np.abs(a + b - 2 * c)
    paeth = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))
    candidates = np.stack([x, x - a, x - b, x - ((a + b) >> 1), x - paeth]).astype(np.uint8)  # mod 256
    cost = np.abs(candidates.view(np.int8).astype(np.int32)).sum(axis=2)       # (5, r)
    best = cost.argmin(axis=0)
    out = np.empty((rows.shape[0], rows.shape[1] + 1), np.uint8)
    out[:, 0] = best
    out[:, 1:] = candidates[best, np.arange(rows.shape[0])]
    return out


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack('>I', len(payload)) + kind + payload + struct.pack('>I', zlib.crc32(kind + payload))
