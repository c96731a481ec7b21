"""JPEG through Pillow: grey or RGB, 8-bit, with ICC and EXIF (see pillow.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .pillow import read_with_pillow, save_with_pillow
from .samples import ImageData

__all__ = ['read_jpeg', 'write_jpeg']


def read_jpeg(path: Path) -> ImageData:
    """A JPEG file, turned upright, with ICC and EXIF."""
    return read_with_pillow(path, 'jpeg')


def write_jpeg(fh, samples: np.ndarray, *, icc: bytes | None, exif: bytes | None,
               quality: int) -> None:
    """8-bit grey or RGB samples (H, W, 1 or 3) as JPEG into fh."""
    if samples.shape[2] not in (1, 3):
        raise ValueError('JPEG holds grey or RGB only')
    save_with_pillow(fh, samples, 'jpeg', icc=icc, exif=exif, quality=int(quality))
