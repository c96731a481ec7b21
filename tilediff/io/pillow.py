"""PNG and JPEG through Pillow: every PNG except 16-bit colour (see png.py), and all JPEG.

EXIF orientation is applied on read and the stored EXIF then says orientation 1, so the written
file shows the same way as the input.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image as PILImage

from .errors import Unsupported
from .exif import EXIF_HEADER
from .samples import ImageData, upright

__all__ = ['read_with_pillow', 'save_with_pillow', 'pillow_size', 'bomb_check', 'DecompressionBombError']

DecompressionBombError = PILImage.DecompressionBombError
_TAG_ORIENTATION = 274


def bomb_check(width: int, height: int) -> None:
    """Pillow's decompression-bomb rule for an image of this size, also where Pillow does not decode
    it (16-bit colour PNG, the JPEG check): above ``PIL.Image.MAX_IMAGE_PIXELS`` a
    DecompressionBombWarning, above twice that a DecompressionBombError."""
    limit = PILImage.MAX_IMAGE_PIXELS
    if limit is None:
        return
    pixels = max(1, width) * max(1, height)
    if pixels > 2 * limit:
        raise DecompressionBombError(f'Image size ({pixels} pixels) exceeds limit of {2 * limit} pixels, '
                                     'could be decompression bomb DOS attack.')
    if pixels > limit:
        import warnings
        warnings.warn(f'Image size ({pixels} pixels) exceeds limit of {limit} pixels, could be '
                      'decompression bomb DOS attack.', PILImage.DecompressionBombWarning, stacklevel=2)


def read_with_pillow(path: Path, fmt: str) -> ImageData:
    """A PNG or JPEG file (`fmt` 'png' or 'jpeg'), turned upright, with ICC and EXIF."""
    with PILImage.open(path, formats=[fmt.upper()]) as im:
        im.load()
        icc = im.info.get('icc_profile') or None
        exif = im.info.get('exif') or None
        samples = _pillow_samples(im)
    if exif is not None and not exif.startswith(EXIF_HEADER):
        exif = EXIF_HEADER + exif
    samples, exif = upright(samples, exif)
    return ImageData.from_samples(samples, format=fmt, icc=icc, exif=exif, path=path)


def pillow_size(path: Path) -> tuple[int, int]:
    """(height, width) of a PNG or JPEG as shown upright, from its header (no pixel decoding)."""
    with PILImage.open(path) as im:
        if im.format not in ('PNG', 'JPEG'):
            raise ValueError(f'{im.format} is not supported (TIFF, PNG, JPEG)')
        width, height = im.size
        if im.getexif().get(_TAG_ORIENTATION, 1) in (5, 6, 7, 8):  # a quarter turn
            width, height = height, width
        return height, width


def save_with_pillow(fh, samples: np.ndarray, fmt: str, *, icc: bytes | None,
                     exif: bytes | None, **params) -> None:
    """(H, W, S) uint8 samples, or (H, W, 1) uint16 for PNG, into fh with ICC and EXIF."""
    if samples.dtype == np.uint16:
        im = PILImage.fromarray(samples[:, :, 0].astype('<u2'))  # mode 'I;16'
    else:
        im = PILImage.fromarray(samples[:, :, 0] if samples.shape[2] == 1 else samples)
    if icc:
        params['icc_profile'] = icc
    if exif:
        params['exif'] = exif
    im.save(fh, format=fmt.upper(), **params)


def _pillow_samples(im) -> np.ndarray:
    """(H, W, S) samples from a loaded Pillow image, widening palette and 1-bit modes."""
    mode = im.mode
    if mode == 'P' or mode == 'PA':
        im = im.convert('RGBA' if (mode == 'PA' or 'transparency' in im.info) else 'RGB')
    elif mode == '1':
        im = im.convert('L')
    elif mode in ('I;16', 'I;16B', 'I;16L'):
        return np.asarray(im).astype(np.uint16)[:, :, None]
    elif mode == 'I':
        values = np.asarray(im)
        if values.min() < 0 or values.max() > 65535:
            raise Unsupported('32-bit integer samples')
        return values.astype(np.uint16)[:, :, None]
    elif mode not in ('L', 'LA', 'RGB', 'RGBA'):
        raise Unsupported(f'Pillow mode {mode!r} (need grey or RGB, with or without alpha)')
    samples = np.asarray(im)
    return samples[:, :, None] if samples.ndim == 2 else samples
