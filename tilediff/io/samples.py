"""File samples <-> the float RGB the network sees, and `ImageData`, which holds both.

The network sees one thing: a float32 (H, W, 3) array in [0, 1]. A file holds uint8, uint16 or
float32 samples, grey or colour, maybe with alpha; `split_samples` turns them into network RGB and
`to_samples` turns restored RGB back into the same kind of samples. Alpha is never restored: it is
passed through bit for bit (rescaled only where the output's sample type differs).
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import MAX_EXIF_BYTES, MAX_ICC_BYTES, ImageWarning, Unsupported
from .exif import orientation_reset

if TYPE_CHECKING:
    from .tiff import TiffLayout

__all__ = ['ImageData', 'SAMPLE_TYPES', 'split_samples', 'to_float_rgb', 'to_samples', 'quantize',
           'convert_depth', 'apply_orientation', 'upright', 'float_range_note', 'FloatRange', 'check_metadata']

SAMPLE_TYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32))
"""Sample types read and written; others are refused rather than guessed at."""

_LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601


@dataclasses.dataclass
class ImageData:
    """Pixels for the network plus everything needed to write them back.

    rgb:    float32 array (H, W, 3) in [0, 1]; grey inputs repeated to 3 channels.
    alpha:  the alpha plane (H, W) in the source dtype, or None. Passed through.
    mode:   'gray' or 'rgb', the colour model of the source.
    dtype:  sample type of the source: uint8, uint16 or float32.
    format: 'tiff', 'png' or 'jpeg', from the file's content, not its name.
    icc:    ICC profile bytes or None.
    exif:   EXIF bytes (``b'Exif\\0\\0'`` + TIFF structure) or None.
    tiff:   TiffLayout for TIFF sources, else None.
    path:   the file it was read from.
    """

    rgb: np.ndarray
    alpha: np.ndarray | None
    mode: str
    dtype: np.dtype
    format: str
    icc: bytes | None = None
    exif: bytes | None = None
    tiff: TiffLayout | None = None
    path: Path | None = None

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) of the image."""
        return self.rgb.shape[:2]

    @classmethod
    def from_samples(cls, samples: np.ndarray, *, format: str, icc: bytes | None = None,
                     exif: bytes | None = None, tiff: TiffLayout | None = None,
                     path: Path | None = None) -> ImageData:
        """An ImageData from a file's (H, W, S) samples (see `split_samples`).

        Float samples outside [0, 1] (clipped) or NaN (set to 0) give one `ImageWarning` naming
        `path` (`float_range_note`); an ICC profile or EXIF block over the limits is Unsupported."""
        check_metadata(icc, exif)
        note = float_range_note(samples)
        if note is not None:
            where = f'{os.fspath(path)}: ' if path is not None else ''
            warnings.warn(ImageWarning(where + note), stacklevel=2)
        rgb, alpha, mode = split_samples(samples)
        return cls(rgb=rgb, alpha=alpha, mode=mode, dtype=samples.dtype, format=format, icc=icc,
                   exif=exif, tiff=tiff, path=path)


def check_metadata(icc: bytes | None, exif: bytes | None) -> None:
    """Unsupported when an ICC profile or an EXIF block is larger than the limits
    (`errors.MAX_ICC_BYTES`, `errors.MAX_EXIF_BYTES`): a file that carries one is refused rather
    than copied into its output."""
    if icc is not None and len(icc) > MAX_ICC_BYTES:
        raise Unsupported(f'ICC profile of {len(icc)} bytes (the limit is {MAX_ICC_BYTES >> 20} MiB)')
    if exif is not None and len(exif) > MAX_EXIF_BYTES:
        raise Unsupported(f'EXIF block of {len(exif)} bytes (the limit is {MAX_EXIF_BYTES >> 20} MiB)')


def float_range_note(samples: np.ndarray) -> str | None:
    """For float samples whose colour values are outside [0, 1] or NaN: what `split_samples` does
    to them, in words (the range found, clipped to [0, 1]; NaN set to 0); else None."""
    seen = FloatRange()
    seen.update(samples)
    return seen.note()


class FloatRange:
    """The range of a file's float colour samples, gathered window by window (a region source
    reads an image in pieces): ``update(samples)`` for each window, ``note()`` the one text for the
    whole file (``float_range_note``'s), ``warn(path)`` issues it once as an `ImageWarning`."""

    def __init__(self):
        self.lo, self.hi, self.nans, self.size = np.inf, -np.inf, 0, 0

    def update(self, samples: np.ndarray) -> None:
        if samples.dtype != np.float32:
            return
        colour = samples if samples.ndim == 2 else samples[..., :3] if samples.shape[-1] >= 3 else samples[..., :1]
        nans = int(np.count_nonzero(np.isnan(colour)))
        self.nans += nans
        self.size += colour.size
        if nans < colour.size:
            self.lo = min(self.lo, float(np.nanmin(colour)))
            self.hi = max(self.hi, float(np.nanmax(colour)))

    def note(self) -> str | None:
        if self.size and self.nans == self.size:
            return 'float samples are all NaN; set to 0'
        parts = []
        if self.size and (self.lo < 0.0 or self.hi > 1.0):
            parts.append(f'float samples range from {self.lo:.6g} to {self.hi:.6g}; clipped to [0, 1]')
        if self.nans:
            parts.append(f'{self.nans} NaN samples set to 0')
        return '; '.join(parts) or None

    def warn(self, path) -> None:
        note = self.note()
        if note is not None:
            where = f'{os.fspath(path)}: ' if path is not None else ''
            warnings.warn(ImageWarning(where + note), stacklevel=2)


def split_samples(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, str]:
    """Split source samples (H, W) or (H, W, S) into (rgb, alpha, mode).

    S is 1 (grey), 2 (grey + alpha), 3 (RGB) or 4 (RGBA). rgb is float32 in
    [0, 1] with grey repeated to three channels; integer samples are divided
    by their maximum (255 or 65535); float32 samples are clipped to [0, 1]
    (NaN becomes 0) because that is the range the network was trained on.
    alpha is a copy in the source dtype.
    """
    if samples.ndim == 2:
        samples = samples[:, :, None]
    if samples.ndim != 3 or samples.shape[2] not in (1, 2, 3, 4):
        raise Unsupported(f'unsupported sample layout {samples.shape}')
    dtype = samples.dtype
    if dtype not in SAMPLE_TYPES:
        raise Unsupported(f'unsupported sample type {dtype} (need uint8, uint16 or float32)')
    nchan = samples.shape[2]
    colour = samples[:, :, :3] if nchan >= 3 else samples[:, :, :1]
    rgb = np.empty(samples.shape[:2] + (3,), np.float32)
    if dtype == np.float32:
        np.copyto(rgb, colour)
        np.nan_to_num(rgb, copy=False, nan=0.0)
        np.clip(rgb, 0.0, 1.0, out=rgb)
    else:
        np.divide(colour, np.float32(np.iinfo(dtype).max), out=rgb, dtype=np.float32)
    alpha = samples[:, :, nchan - 1].copy() if nchan in (2, 4) else None
    return rgb, alpha, ('rgb' if nchan >= 3 else 'gray')


def to_float_rgb(image: np.ndarray) -> np.ndarray:
    """An image array as the network's input: float32 (H, W, 3) in [0, 1], a new array.

    image is (H, W) or (H, W, C) with C 1 (grey), 2 (grey + alpha), 3 (RGB) or 4 (RGBA). uint8
    is divided by 255 and uint16 by 65535; any other type is taken as float values. Grey is
    repeated to three channels, alpha dropped, values clipped to [0, 1]. NaN or infinite values
    raise ValueError: unlike a file's float samples (`split_samples` maps NaN to 0), an array handed
    in by a caller with NaN in it is a bug upstream, not data.
    """
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3:
        raise ValueError(f'expected an HxW or HxWxC image, got shape {arr.shape}')
    if arr.shape[2] not in (1, 2, 3, 4):
        raise ValueError(f'expected 1, 2, 3 or 4 channels, got {arr.shape[2]}')
    colour = arr[..., :3] if arr.shape[2] >= 3 else arr[..., :1]
    rgb = np.empty(arr.shape[:2] + (3,), np.float32)
    if arr.dtype in (np.uint8, np.uint16):
        np.divide(colour, np.float32(np.iinfo(arr.dtype).max), out=rgb, dtype=np.float32)
    else:
        np.copyto(rgb, colour, casting='unsafe')
        if not np.isfinite(rgb).all():
            raise ValueError('image holds NaN or infinite values')
    return np.clip(rgb, 0.0, 1.0, out=rgb)


def quantize(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Float [0, 1] to `dtype`: round(x * max) for integers, clipped float32 otherwise."""
    values = np.clip(values, 0.0, 1.0)
    if dtype == np.float32:
        return values.astype(np.float32)
    scale = np.iinfo(dtype).max
    return np.rint(values * scale).astype(dtype)


def convert_depth(plane: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Rescale a plane (e.g. alpha) to another sample type; identity if equal."""
    if plane.dtype == dtype:
        return plane
    if plane.dtype == np.float32:
        unit = plane
    else:
        unit = plane.astype(np.float64) / np.iinfo(plane.dtype).max
    return quantize(unit, dtype)


def to_samples(rgb: np.ndarray, mode: str, dtype: np.dtype,
               alpha: np.ndarray | None) -> np.ndarray:
    """Restored float RGB -> (H, W, S) samples in the output mode and dtype.

    Grey output is ITU-R BT.601 luma (0.299 R + 0.587 G + 0.114 B), computed
    in float64 so a grey input that went through unchanged comes back exactly
    (Pillow's convert('L') uses the same weights but only for 8 bits).
    Works in row blocks so temporaries stay small for very large images.
    """
    height, width = rgb.shape[:2]
    nchan = (1 if mode == 'gray' else 3) + (alpha is not None)
    out = np.empty((height, width, nchan), dtype)
    step = max(1, (1 << 22) // max(1, width * 3))
    luma = np.array(_LUMA, np.float64)
    for y in range(0, height, step):
        block = np.clip(rgb[y:y + step], 0.0, 1.0)
        if mode == 'gray':
            out[y:y + step, :, 0] = quantize(block.astype(np.float64) @ luma, dtype)
        else:
            out[y:y + step, :, :3] = quantize(block, dtype)
    if alpha is not None:
        out[:, :, -1] = convert_depth(alpha, dtype)
    return out


def apply_orientation(samples: np.ndarray, orientation: int) -> np.ndarray:
    """Turn samples (H, W, ...) upright according to an EXIF orientation 1..8.

    numpy views, not Pillow's ImageOps.exif_transpose, which takes only Pillow images (no 16-bit
    colour).
    """
    views = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.swapaxes(0, 1),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: a.swapaxes(0, 1)[::-1, ::-1],
        8: lambda a: np.rot90(a, 1),
    }
    if orientation not in views:
        return samples
    return np.ascontiguousarray(views[orientation](samples))


def upright(samples: np.ndarray, exif: bytes | None) -> tuple[np.ndarray, bytes | None]:
    """(samples turned upright, EXIF now saying orientation 1), so the output shows the same way."""
    if exif is None:
        return samples, None
    orientation, exif = orientation_reset(exif)
    return apply_orientation(samples, orientation), exif
