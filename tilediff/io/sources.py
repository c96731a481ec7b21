"""Region sources: an input image read by windows, converted to the network's float RGB window by window.

The engine never holds a whole-image float copy of its input. It asks a source for the regions it
needs (each encode tile with its halo, each skip recompute at decode time) and converts only that
region to float32. A source says what the writer needs to rebuild the file: the sample type, grey or
colour, whether there is an alpha plane (read band by band like the colour), the ICC profile, EXIF
and, for TIFF, the layout.

- `TiffSource`: a TIFF's first page held open (`tiff.TiffWindows`): each region decodes only the
  strips or tiles it touches, with a cache of decoded segments about one band of tiles deep.
- `ArraySource`: samples in memory in their own dtype (uint8, uint16 or float32): PNG and JPEG,
  which no library here decodes by windows, are decoded once into one (`open_source`); an array
  handed to `Restorer.restore` is wrapped in one without a copy.

`region(y0, y1, x0, x1)` returns float32 (3, h, w) in [0, 1], grey repeated to three channels:
integer samples divided by their maximum, float samples clipped (NaN: 0 for a file's samples, as
`split_samples` does; an error for a caller's array, as `to_float_rgb` does).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .errors import ImageReadError, Unsupported
from .samples import SAMPLE_TYPES, upright

__all__ = ['RegionSource', 'ArraySource', 'TiffSource', 'open_source']


class RegionSource:
    """An image the engine reads by regions. Attributes (set by the subclasses):

    height, width   the image size; ``shape`` is (height, width)
    samples         samples per pixel in the source (1 grey, 2 grey+alpha, 3 RGB, 4 RGBA)
    dtype           the source's sample type (uint8, uint16, float32; anything for arrays)
    mode            'gray' or 'rgb'; ``has_alpha``: whether the last sample is an alpha plane
    format, icc, exif, tiff, path   what the writer keeps (format: 'tiff', 'png', 'jpeg' or None)
    """

    channels = 3          # what the network sees: RGB
    format = None
    icc = exif = tiff = path = None
    nan_is_error = False  # True for a caller's array (``to_float_rgb``), False for file samples

    @property
    def shape(self) -> tuple[int, int]:
        return self.height, self.width

    @property
    def has_alpha(self) -> bool:
        return self.samples in (2, 4)

    @property
    def mode(self) -> str:
        return 'rgb' if self.samples >= 3 else 'gray'

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """The source's samples (h, w, S) of a window, in its own dtype."""
        raise NotImplementedError

    def region(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """The network's float32 RGB (3, h, w) in [0, 1] of a window."""
        return self.to_network(self.read(y0, y1, x0, x1))

    def alpha(self, y0: int, y1: int, x0: int = 0, x1: int | None = None) -> np.ndarray | None:
        """The alpha plane (h, w) of a window in the source's dtype, or None without alpha."""
        if not self.has_alpha:
            return None
        return self.read(y0, y1, x0, self.width if x1 is None else x1)[:, :, -1].copy()

    def to_network(self, samples: np.ndarray) -> np.ndarray:
        """Samples (h, w, S) of this source as float32 RGB (3, h, w) in [0, 1]."""
        colour = samples[:, :, :3] if samples.shape[2] >= 3 else samples[:, :, :1]
        colour = colour.transpose(2, 0, 1)
        out = np.empty((3,) + samples.shape[:2], np.float32)
        if samples.dtype in (np.uint8, np.uint16):
            np.divide(colour, np.float32(np.iinfo(samples.dtype).max), out=out, dtype=np.float32,
                      casting='unsafe')
            return out
        np.copyto(out, colour, casting='unsafe')
        if self.nan_is_error:
            if not np.isfinite(out).all():
                raise ValueError('image holds NaN or infinite values')
        else:
            np.nan_to_num(out, copy=False, nan=0.0)
        return np.clip(out, 0.0, 1.0, out=out)

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ArraySource(RegionSource):
    """Samples (H, W) or (H, W, S) held in memory, read by windows without a copy of the whole.

    ``samples``: the source's own samples (a decoded PNG or JPEG), or an image array handed in by a
    caller (``nan_is_error=True``: its NaN or infinite values are an error, see ``to_float_rgb``;
    any dtype is taken as float values unless uint8 or uint16).
    """

    def __init__(self, samples: np.ndarray, *, format: str | None = None, icc: bytes | None = None,
                 exif: bytes | None = None, path: Path | None = None, nan_is_error: bool = False):
        samples = np.asarray(samples)
        if samples.ndim == 2:
            samples = samples[:, :, None]
        if samples.ndim != 3 or samples.shape[2] not in (1, 2, 3, 4):
            raise ValueError(f'expected an HxW or HxWxC image with 1, 2, 3 or 4 channels, got shape '
                             f'{samples.shape}')
        if samples.shape[0] < 1 or samples.shape[1] < 1:
            raise ValueError(f'empty image ({samples.shape[1]}x{samples.shape[0]})')
        self.data = samples
        self.height, self.width, self.samples = samples.shape
        self.dtype = samples.dtype
        self.format, self.icc, self.exif, self.path = format, icc, exif, path
        self.nan_is_error = nan_is_error

    def read(self, y0, y1, x0, x1):
        return self.data[y0:y1, x0:x1]


class TiffSource(RegionSource):
    """A TIFF's first page read by windows (``tiff.TiffWindows``); read errors name the file."""

    format = 'tiff'

    def __init__(self, path: os.PathLike | str, filesize: int, *, cache_bytes: int = 64 << 20):
        from . import tiff
        self.path = Path(path)
        self._tif = tiff.TiffWindows(self.path, filesize, cache_bytes=cache_bytes)
        self.height, self.width = self._tif.height, self._tif.width
        self.samples, self.dtype = self._tif.samples, self._tif.dtype
        self.icc, self.exif, self.tiff = self._tif.icc, self._tif.exif, self._tif.layout

    def band_bytes(self, rows: int) -> int:
        """Bytes of decoded segments a band of ``rows`` rows touches (``TiffWindows.band_bytes``)."""
        return self._tif.band_bytes(rows)

    def set_cache(self, nbytes: int) -> None:
        """Keep up to ``nbytes`` of decoded segments (the engine sizes it to one band of tiles)."""
        self._tif.cache_bytes = int(nbytes)

    def read(self, y0, y1, x0, x1):
        from . import _as_read_error   # io/__init__ imports this module
        return _as_read_error(self.path, 'tiff', lambda: self._tif.read(y0, y1, x0, x1))

    def close(self):
        self._tif.close()


def open_source(path: os.PathLike | str) -> RegionSource:
    """Open a TIFF, PNG or JPEG file as a region source (the streaming counterpart of `read_image`).

    The format is taken from the file's content. A TIFF is read by windows and never loaded whole
    (`TiffSource`); PNG and JPEG are decoded once and held in their own sample type
    (`ArraySource`), turned upright by their EXIF orientation as `read_image` does. The same files
    are accepted and refused as by `read_image`, with the same one-line ImageReadError.
    """
    from . import _as_read_error, _open_checks, _sniff_format   # io/__init__ imports this module
    path = Path(path)
    size, head = _open_checks(path, 16)
    fmt = _sniff_format(head)
    if fmt is None:
        raise ImageReadError(path, 'not a valid image file (cannot identify image format)')
    if fmt == 'tiff':
        source = _as_read_error(path, fmt, lambda: TiffSource(path, size))
        if source.dtype == np.float32:
            _warn_float_range(source)
        return source
    return _as_read_error(path, fmt, lambda: _decoded(path, fmt, head))


def _warn_float_range(source: TiffSource, band_rows: int = 256) -> None:
    """Say once what a float TIFF's conversion will clip, as `read_image` does: its range gathered
    over one pass of bands (the engine's regions overlap, so they cannot count NaN samples)."""
    from .samples import FloatRange
    seen = FloatRange()
    for y0 in range(0, source.height, band_rows):
        seen.update(source.read(y0, min(source.height, y0 + band_rows), 0, source.width))
    seen.warn(source.path)


def _decoded(path: Path, fmt: str, head: bytes) -> ArraySource:
    """A PNG or JPEG decoded once into its own samples, with its ICC profile and EXIF."""
    from . import png, pillow
    if fmt == 'png' and png._is_16bit_colour(head, path):
        samples, icc, exif = _png16_samples(path)
    else:
        from PIL import Image
        with Image.open(path, formats=[fmt.upper()]) as im:
            im.load()
            icc = im.info.get('icc_profile') or None
            exif = im.info.get('exif') or None
            samples = pillow._pillow_samples(im)
        if exif is not None and not exif.startswith(b'Exif\x00\x00'):
            exif = b'Exif\x00\x00' + exif
    samples, exif = upright(samples, exif)
    if samples.dtype not in SAMPLE_TYPES:
        raise Unsupported(f'unsupported sample type {samples.dtype} (need uint8, uint16 or float32)')
    return ArraySource(samples, format=fmt, icc=icc, exif=exif, path=path)


def _png16_samples(path: Path):
    """(samples, icc, exif) of a 16-bit colour PNG, the way `png._read_png16` reads it."""
    import imagecodecs
    import struct
    import zlib
    from . import png
    data = memoryview(path.read_bytes())
    chunks = list(png._chunks(data))
    kind, start, end = chunks[0] if chunks else (None, 0, 0)
    if kind != b'IHDR' or end - start != 25:
        raise ValueError('missing IHDR chunk')
    width, height, _, _, _, _, interlace = struct.unpack('>IIBBBBB', data[start + 8:end - 4])
    if interlace:
        raise Unsupported('interlaced (Adam7) 16-bit colour PNG; save it non-interlaced')
    if width == 0 or height == 0:
        raise ValueError('image has zero size')
    icc = exif = None
    pixels = [png.PNG_SIGNATURE, data[start:end]]
    for kind, start, end in chunks[1:]:
        if kind in (b'IDAT', b'IEND'):
            pixels.append(data[start:end])
        elif kind == b'iCCP':
            payload = bytes(data[start + 8:end - 4])
            icc = zlib.decompress(payload[payload.index(b'\x00') + 2:])
        elif kind == b'eXIf':
            exif = b'Exif\x00\x00' + bytes(data[start + 8:end - 4])
    del data, chunks
    samples = imagecodecs.png_decode(b''.join(pixels))
    if samples.shape[:2] != (height, width) or samples.dtype != np.uint16:
        raise ValueError('image data does not match its header')
    return samples, icc, exif
