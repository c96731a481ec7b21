"""JPEG through Pillow: grey or RGB, 8-bit, with ICC and EXIF (see pillow.py).

Pillow decodes through libjpeg, which repairs damaged coded data silently (it warns, and Pillow
drops its warnings): garbage in a scan comes out as grey or smeared blocks with no error. So
`check_jpeg` reads the headers first (Pillow's size limit applies before anything is decoded) and
then hands the file to libjxl's JPEG reader (imagecodecs' ``jpegxl_encode_jpeg``, the lossless JPEG
transcoder), which parses every Huffman-coded block strictly: a file it stops on is corrupt. It
reads the baseline, extended and progressive Huffman-coded 8-bit JPEGs that cameras and libraries
write; others (arithmetic coding, 12-bit, lossless) are not checked this way, nor are images above
`STRICT_CHECK_MAX_PIXELS` (the check holds about 20-30 bytes per pixel while it runs).
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from .pillow import bomb_check, read_with_pillow, save_with_pillow
from .samples import ImageData

__all__ = ['read_jpeg', 'write_jpeg', 'check_jpeg', 'STRICT_CHECK_MAX_PIXELS']

STRICT_CHECK_MAX_PIXELS = 24_000_000
"""Images up to this many pixels (6000 x 4000) get libjxl's strict check of their coded data."""

_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_HUFFMAN_8BIT = {0xC0, 0xC1, 0xC2}   # baseline, extended sequential, progressive (Huffman)


def read_jpeg(path: Path) -> ImageData:
    """A JPEG file, turned upright, with ICC and EXIF."""
    return read_with_pillow(path, 'jpeg')


def write_jpeg(fh, samples: np.ndarray, *, icc: bytes | None, exif: bytes | None,
               quality: int) -> None:
    """8-bit grey or RGB samples (H, W, 1 or 3) as JPEG into fh."""
    if samples.shape[2] not in (1, 3):
        raise ValueError('JPEG holds grey or RGB only')
    save_with_pillow(fh, samples, 'jpeg', icc=icc, exif=exif, quality=int(quality))


def check_jpeg(path: Path, size: int) -> None:
    """Raise ValueError for a JPEG whose headers or coded data are damaged, DecompressionBombError
    for one larger than Pillow allows (see the module)."""
    with open(path, 'rb') as fh:
        frame = _frame_header(fh)
    marker, precision, height, width, sampling = frame
    if height:
        bomb_check(width, height)
    if (marker not in _HUFFMAN_8BIT or precision != 8 or len(sampling) not in (1, 3)
            or width * max(height, 1) > STRICT_CHECK_MAX_PIXELS or not _integral(sampling)):
        return
    try:
        import imagecodecs
        if not imagecodecs.JPEGXL.available:
            return
        transcode = imagecodecs.jpegxl_encode_jpeg
    except (ImportError, AttributeError):
        return
    try:
        transcode(path.read_bytes())
    except MemoryError:
        raise
    except Exception as exc:
        raise ValueError(f'its compressed image data is damaged (libjxl\'s strict JPEG reader '
                         f'stops on it: {" ".join(str(exc).split()) or type(exc).__name__})') from None


def _frame_header(fh) -> tuple[int, int, int, int, list[tuple[int, int]]]:
    """(SOF marker, precision, height, width, [(h, v) sampling per component]) from the headers
    before the first scan."""
    if fh.read(2) != b'\xff\xd8':
        raise ValueError('not a JPEG start of image')
    frame = None
    while True:
        byte = fh.read(1)
        if not byte:
            raise ValueError('file is truncated (in its headers)')
        if byte != b'\xff':
            raise ValueError('damaged headers (a marker was expected)')
        marker = fh.read(1)
        while marker == b'\xff':         # fill bytes
            marker = fh.read(1)
        if not marker:
            raise ValueError('file is truncated (in its headers)')
        code = marker[0]
        if code == 0x01 or 0xD0 <= code <= 0xD7:
            continue
        if code == 0xD9:
            raise ValueError('no image data (end of image before any scan)')
        raw = fh.read(2)
        if len(raw) < 2:
            raise ValueError('file is truncated (in its headers)')
        (length,) = struct.unpack('>H', raw)
        if length < 2:
            raise ValueError(f'damaged headers (segment 0x{code:02X} of length {length})')
        if code in _SOF:
            body = fh.read(length - 2)
            if len(body) < 6 or frame is not None:
                raise ValueError('damaged frame header')
            precision, height, width, count = struct.unpack('>BHHB', body[:6])
            if width == 0 or len(body) < 6 + 3 * count:
                raise ValueError('damaged frame header')
            sampling = [(body[7 + 3 * i] >> 4, body[7 + 3 * i] & 15) for i in range(count)]
            frame = (code, precision, height, width, sampling)
            continue
        if code == 0xDA:
            if frame is None:
                raise ValueError('a scan before the frame header')
            return frame
        fh.seek(length - 2, 1)


def _integral(sampling) -> bool:
    hmax = max(h for h, _ in sampling)
    vmax = max(v for _, v in sampling)
    return all(h and v and hmax % h == 0 and vmax % v == 0 for h, v in sampling)
