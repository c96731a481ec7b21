"""Read and write images for restoration: TIFF (tifffile), PNG (Pillow, imagecodecs), JPEG (Pillow).

The network sees one thing: a float32 RGB array in [0, 1]. Everything else an input file carries
must come back out unchanged, so `read_image` returns an `ImageData` that holds, beside the pixels,
what `write_image` needs to rebuild the file: the alpha plane (never restored, passed through bit
for bit), the sample type (uint8, uint16, float32), grey or colour, the ICC profile, the EXIF block
and, for TIFF, the layout (tiles or strips, compression, predictor, planar configuration).

The modules, in reading order:

- ``errors``: `ImageReadError`, `ImageWriteError`, both printed as one line naming the file;
  `ImageWarning` for what a reader or writer changed without failing; the limits on inputs.
- ``samples``: `ImageData`; file samples <-> network RGB (`split_samples`, `to_float_rgb`).
- ``tiff``, ``png``, ``jpeg`` (``pillow`` holds what PNG and JPEG share): one format each.
- ``exif``: the TIFF-structure EXIF handling no library does (tifffile cannot write it).
- ``atomic``: the one atomic write every file tilediff writes goes through, and `check_output`,
  which every command asks before it writes.

Inputs must be regular files (a FIFO, a device or a socket is refused without being opened, so a
FIFO never blocks a run); a file is checked before it is decoded (`_open_checks`): PNG chunk by
chunk (`png.check_png`), JPEG's headers and coded data (`jpeg.check_jpeg`), TIFF's page against
its file (`tiff._page_checks`).

EXIF is held as bytes in the JPEG APP1 form (``b'Exif\\0\\0'`` + a small TIFF structure). EXIF
orientation is applied on read (PNG/JPEG) and then reset to 1. No module state: every function
takes what it needs as arguments.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from . import jpeg, png, tiff
from .atomic import atomic_write, check_output, new_file_mode
from .errors import (ImageReadError, ImageWarning, ImageWriteError, Unsupported, describe, file_kind,
                     one_line)
from .pillow import DecompressionBombError, pillow_size
from .samples import ImageData, split_samples, to_float_rgb, to_samples
from .tiff import TiffLayout, needs_bigtiff
from .sources import ArraySource, RegionSource, TiffSource, open_source  # region sources (streamed input)
from .sinks import ArraySink, FileSink, open_sink  # band sinks (streamed output)

__all__ = [
    'SUPPORTED_EXTENSIONS',
    'ImageData',
    'TiffLayout',
    'ImageReadError',
    'ImageWriteError',
    'ImageWarning',
    'check_output',
    'check_compression',
    'read_image',
    'read_size',
    'read_tiff_region',
    'split_samples',
    'to_float_rgb',
    'write_image',
    'needs_bigtiff',
    'output_path',
    'is_image_file',
    'format_for_path',
    'new_file_mode',
]

__all__ += ['RegionSource', 'ArraySource', 'TiffSource', 'open_source', 'ArraySink', 'FileSink', 'open_sink']

SUPPORTED_EXTENSIONS = ('.tif', '.tiff', '.png', '.jpg', '.jpeg')
"""File name extensions tilediff reads and writes (compared lower-case)."""

_FORMAT_BY_EXTENSION = {'.tif': 'tiff', '.tiff': 'tiff', '.png': 'png', '.jpg': 'jpeg', '.jpeg': 'jpeg'}
_FORMAT_ALIASES = {'tif': 'tiff', 'tiff': 'tiff', 'png': 'png', 'jpg': 'jpeg', 'jpeg': 'jpeg'}
_TIFF_MAGIC = (b'II*\x00', b'MM\x00*', b'II+\x00', b'MM\x00+')  # classic and BigTIFF, both orders


# --------------------------------------------------------------------------
# Names and formats


def is_image_file(path: os.PathLike | str) -> bool:
    """True if the name ends in a supported extension (case-insensitive)."""
    return Path(path).suffix.lower() in SUPPORTED_EXTENSIONS


def format_for_path(path: os.PathLike | str) -> str | None:
    """'tiff', 'png' or 'jpeg' from the file name's extension, else None."""
    return _FORMAT_BY_EXTENSION.get(Path(path).suffix.lower())


def output_path(input_path: os.PathLike | str, task: str,
                out_dir: os.PathLike | str | None = None, *,
                ext: str | None = None) -> Path:
    """Where the result for `input_path` goes: ``NAME_TASK.EXT``.

    Beside the input unless `out_dir` is given; EXT is the input's extension
    unless `ext` ('png' or '.png') is given.
    """
    src = Path(input_path)
    suffix = src.suffix if ext is None else ('.' + ext.lstrip('.'))
    return (Path(out_dir) if out_dir is not None else src.parent) / f'{src.stem}_{task}{suffix}'


def _sniff_format(head: bytes) -> str | None:
    """Format from the file's first bytes; the extension may lie."""
    if head[:4] in _TIFF_MAGIC:
        return 'tiff'
    if head[:8] == png.PNG_SIGNATURE:
        return 'png'
    if head[:3] == b'\xff\xd8\xff':
        return 'jpeg'
    return None


# --------------------------------------------------------------------------
# Reading


def read_image(path: os.PathLike | str) -> ImageData:
    """Read a TIFF, PNG or JPEG file for restoration.

    The format is taken from the file's content. TIFF: the first page only;
    uint8, uint16 or float32 samples; grey, grey+alpha, RGB, RGBA; strips or
    tiles, contiguous or planar; classic or BigTIFF; any compression tifffile
    can decode (with imagecodecs: LZW, zstd, JPEG, WebP, ...). PNG: 1-16 bit
    grey, grey+alpha, RGB, RGBA, palette (expanded to RGB/RGBA, 8-bit); 16-bit
    colour must not be interlaced. JPEG: grey or RGB.

    Refused: a multi-page TIFF (reduced-resolution pages such as thumbnails aside) and an animated
    PNG, which would lose pages or frames; data that fails its checks (CRCs, a JPEG's coded data, a
    declared size that the compressed data cannot hold, see `_open_checks`). Warned about
    (`ImageWarning`): float samples outside [0, 1], which are clipped, and NaN, set to 0.

    Raises ImageReadError (one line naming the file) for anything that cannot
    be read; no other exception escapes.
    """
    path = Path(path)
    size, head = _open_checks(path, 16)
    fmt = _sniff_format(head)

    def read():
        if fmt == 'tiff':
            return tiff.read_tiff(path, size)
        if fmt == 'png':
            return png.read_png(path, head)
        return jpeg.read_jpeg(path)
    return _as_read_error(path, fmt, read)


def _as_read_error(path: Path, fmt: str, read):
    """``read()``, with whatever it raises as the one-line ImageReadError naming the file."""
    try:
        return read()
    except ImageReadError:
        raise
    except Unsupported as exc:
        raise ImageReadError(path, f'unsupported {fmt.upper()}: {exc}') from exc
    except DecompressionBombError as exc:
        raise ImageReadError(path, f'larger than Pillow allows ({one_line(exc)}); raise '
                             'PIL.Image.MAX_IMAGE_PIXELS to read it') from exc
    except ImportError as exc:
        raise ImageReadError(path, f'cannot decode this {fmt.upper()}: a codec is not installed '
                             f'({describe(exc)}); pip install imagecodecs') from exc
    except MemoryError:
        raise
    except Exception as exc:
        raise ImageReadError(path, f'corrupt or unreadable {fmt.upper()} ({describe(exc)})') from exc


def read_size(path: os.PathLike | str) -> tuple[int, int]:
    """(height, width) of an image from its file header only, without decoding pixels.

    The size `read_image` would give: for PNG and JPEG an EXIF orientation that turns the image a
    quarter turn swaps width and height; for TIFF the first page's size. Raises ImageReadError
    (one line naming the file), also for files that Pillow opens but tilediff does not read.
    """
    path = Path(path)
    _, head = _open_checks(path, 4, deep=False)
    try:
        if head in _TIFF_MAGIC:
            return tiff.tiff_size(path)
        return pillow_size(path)
    except Exception as exc:
        text = one_line(exc) if str(exc) else type(exc).__name__
        raise ImageReadError(path, f'not a readable image ({text})') from exc


def read_tiff_region(path: os.PathLike | str, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """Samples of rows y0:y1, columns x0:x1 of a TIFF's first page, without reading the rest.

    Returns (y1 - y0, x1 - x0, S) in the source dtype; pass it to
    `split_samples` for network input. Only the strips or tiles that touch
    the window are read and decoded (each through tifffile's own segment
    decoder, so every compression and predictor tifffile decodes works, for
    strips and tiles, contiguous or planar, classic or BigTIFF). Memory is
    the window plus one segment. Raises ImageReadError like `read_image`.
    """
    path = Path(path)
    try:
        filesize = _regular_size(path)
        return tiff.read_region(path, filesize, y0, y1, x0, x1)
    except ImageReadError:
        raise
    except Unsupported as exc:
        raise ImageReadError(path, f'unsupported TIFF: {exc}') from exc
    except Exception as exc:
        raise ImageReadError(path, f'corrupt or unreadable TIFF ({describe(exc)})') from exc


def _regular_size(path: Path) -> int:
    """The size of a regular, non-empty file; ImageReadError for a folder, a FIFO, a device, a
    socket (never opened: a FIFO would block), an empty or a missing file."""
    try:
        st = os.stat(path)
    except (OSError, ValueError) as exc:
        raise ImageReadError(path, f'cannot open ({describe(exc)})') from exc
    kind = file_kind(st.st_mode)
    if kind == 'a folder':
        raise ImageReadError(path, 'is a directory, not an image file')
    if kind is not None:
        raise ImageReadError(path, f'not a regular file ({kind[2:] if kind.startswith("a ") else kind})')
    if st.st_size == 0:
        raise ImageReadError(path, 'empty file (0 bytes)')
    return st.st_size


def _open_checks(path: Path, nbytes: int, deep: bool = True) -> tuple[int, bytes]:
    """(file size, first `nbytes` bytes), or ImageReadError for a folder, a special file, an empty or
    missing file, an unknown format and, with `deep`, a PNG or JPEG that fails its checks before
    decoding (`png.check_png`, `jpeg.check_jpeg`: CRCs, animation, metadata sizes, declared sizes
    against the data, the coded data of a JPEG). Every reader (`read_image`, `sources.open_source`)
    starts here; `read_size` with ``deep=False`` (headers only)."""
    size = _regular_size(path)
    try:
        with open(path, 'rb') as fh:
            head = fh.read(max(nbytes, 16))
    except (OSError, ValueError) as exc:
        raise ImageReadError(path, f'cannot open ({describe(exc)})') from exc
    if deep:
        fmt = _sniff_format(head)
        if fmt is None:
            raise ImageReadError(path, 'not a valid image file (cannot identify image format)')
        if fmt == 'png':
            _as_read_error(path, fmt, lambda: png.check_png(path, size))
        elif fmt == 'jpeg':
            _as_read_error(path, fmt, lambda: jpeg.check_jpeg(path, size))
    return size, head[:nbytes]


# --------------------------------------------------------------------------
# Writing


def write_image(path: os.PathLike | str, rgb: np.ndarray, like: ImageData | None = None, *,
                format: str | None = None, jpeg_quality: int = 95,
                compression: str | int | None = None, bigtiff: bool | None = None) -> Path:
    """Write restored RGB to `path` atomically, shaped like the input `like`.

    rgb: float32 (H, W, 3), clipped to [0, 1]. With `like` the file gets the
    source's grey/colour mode (grey as BT.601 luma), sample type, alpha plane
    (unchanged), ICC profile, EXIF and, for TIFF, tile/strip layout,
    compression and predictor. Without it: 8-bit RGB. The format is `format`
    ('tiff', 'png', 'jpeg'), else the extension, else like.format. Where the
    format cannot hold the source's samples they are converted: PNG stores
    float32 as uint16, JPEG stores 8-bit and refuses alpha.

    compression: for TIFF a tifffile compression name or code (default: the
    source's; zlib when there is no TIFF source; a codec tifffile cannot
    encode here falls back to zlib with a warning); for PNG a zlib level 0-9.
    bigtiff: True/False forces; None keeps a BigTIFF source BigTIFF and
    otherwise switches on past ~4 GiB (`needs_bigtiff`).

    The file is written to a hidden temporary file in the same folder,
    flushed to disk and renamed over `path` (`atomic.atomic_write`), so a
    crash or a full disk never leaves a partial image and never harms an
    existing file. Failures raise ImageWriteError (one line naming the file);
    KeyboardInterrupt is re-raised as is after the clean-up. Returns the path
    written.
    """
    path = Path(path)
    try:
        fmt = _output_format(path, format, like)
        if fmt == 'png' and compression is not None and not (
                isinstance(compression, int) and 0 <= compression <= 9):
            raise ValueError(f'PNG compression is a zlib level 0-9, not {compression!r}')
        samples = _output_samples(rgb, like, fmt)
        icc = like.icc if like is not None else None
        exif = like.exif if like is not None else None
    except Exception as exc:
        raise ImageWriteError(path, describe(exc)) from exc

    def write(fh):
        if fmt == 'tiff':
            tiff.write_tiff(fh, samples, layout=like.tiff if like is not None else None, icc=icc,
                            exif=exif, compression=compression, bigtiff=bigtiff)
        elif fmt == 'png':
            png.write_png(fh, samples, icc=icc, exif=exif,
                          level=6 if compression is None else int(compression))
        else:
            jpeg.write_jpeg(fh, samples, icc=icc, exif=exif, quality=jpeg_quality)

    try:
        return atomic_write(path, write)
    except Exception as exc:  # KeyboardInterrupt, SystemExit keep their meaning
        raise ImageWriteError(path, f'cannot write ({describe(exc)})') from exc


def _output_format(path: Path, format: str | None, like: ImageData | None) -> str:
    if format is not None:
        fmt = _FORMAT_ALIASES.get(format.lower().lstrip('.'))
        if fmt is None:
            raise ValueError(f'unknown format {format!r} (use tiff, png or jpeg)')
        return fmt
    fmt = format_for_path(path)
    if fmt is None:   # never write one format's bytes under another's name (x.bmp, x)
        raise ValueError(f'unsupported output extension {path.suffix or "(none)"}: name the output '
                         f'{" ".join(SUPPORTED_EXTENSIONS)} (or give format=)')
    return fmt


def check_compression(compression: str | int | None) -> None:
    """Raise ValueError (one line) unless outputs can be written with `compression` here: a PNG
    zlib level 0-9, or a TIFF codec name that tifffile can encode in this installation (checked by
    writing a small TIFF with it). For the command line, before any work."""
    if compression is None:
        return
    if isinstance(compression, int) or str(compression).strip().isdigit():
        if not 0 <= int(compression) <= 9:
            raise ValueError(f'a PNG zlib level is 0-9, not {compression}')
        return
    import io as _io

    import tifffile
    name = str(compression).strip()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        code, _ = tiff.tiff_compression(None, name, np.dtype(np.uint8))   # ValueError: unknown name
    if any(issubclass(w.category, UserWarning) for w in caught):
        try:
            tifffile.TIFF.COMPRESSORS[int(tifffile.COMPRESSION[name.upper()])]
            why = 'no encoder here'
        except KeyError as exc:
            why = ('tifffile needs the imagecodecs package for it: pip install imagecodecs'
                   if 'imagecodecs' in str(exc) else 'tifffile can read it but not write it')
        except Exception:
            why = 'no encoder here'
        raise ValueError(f'TIFF compression {name} cannot be written ({why}); zlib and none always can')
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('error', UserWarning)
            tifffile.imwrite(_io.BytesIO(), np.zeros((8, 8, 3), np.uint8), photometric='rgb',
                             compression=code, metadata=None)
    except Exception as exc:
        hint = '; pip install imagecodecs' if isinstance(exc, ImportError) or 'imagecodecs' in str(exc) else ''
        raise ValueError(f'TIFF compression {name} cannot be written here ({describe(exc)}){hint}') from None


def _output_samples(rgb: np.ndarray, like: ImageData | None, fmt: str) -> np.ndarray:
    """Restored RGB -> the (H, W, S) samples the output file will hold."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ValueError(f'expected an (H, W, 3) RGB array, got shape {rgb.shape}')
    if like is None:
        return to_samples(rgb, 'rgb', np.dtype(np.uint8), None)
    dtype = np.dtype(like.dtype)
    if fmt == 'png' and dtype == np.float32:
        dtype = np.dtype(np.uint16)
    if fmt == 'jpeg':
        dtype = np.dtype(np.uint8)
        if like.alpha is not None:
            raise ValueError('JPEG cannot store the alpha channel; write PNG or TIFF')
    alpha = like.alpha
    if alpha is not None and alpha.shape != rgb.shape[:2]:
        raise ValueError(f'restored image is {rgb.shape[0]}x{rgb.shape[1]} but the alpha plane '
                         f'is {alpha.shape[0]}x{alpha.shape[1]}')
    return to_samples(rgb, like.mode, dtype, alpha)
