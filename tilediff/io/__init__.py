"""Read and write images for restoration: TIFF (tifffile), PNG and JPEG (Pillow).

The network sees one thing: a float32 RGB array in [0, 1]. Everything else an
input file carries must come back out unchanged, so `read_image` returns an
`ImageData` that holds, beside the pixels, what `write_image` needs to rebuild
the file: the alpha plane (never restored, passed through bit for bit), the
sample type (uint8, uint16, float32), grey or colour, the ICC profile, the
EXIF block and, for TIFF, the layout (tiles or strips, compression, predictor,
planar configuration).

Conventions
-----------
- EXIF is held as bytes in the JPEG APP1 form: ``b'Exif\\0\\0'`` followed by a
  small TIFF structure (IFD0 plus the Exif and GPS sub-IFDs). PNG and JPEG
  carry it as is; for TIFF it is copied from and into the file's own Exif/GPS
  IFDs together with a few descriptive IFD0 tags (Make, Model, DateTime,
  Artist, Copyright).
- EXIF orientation is applied on read (PNG/JPEG), and the stored EXIF then
  says orientation 1, so the written file shows the same way as the input.
  TIFF orientation tags are ignored, as most TIFF readers do.
- Pillow 13 reads 16-bit colour PNG (RGB, RGBA, grey+alpha) as 8 bits per
  sample (it keeps only the high byte) and cannot write them. tilediff reads
  and writes those with its own small PNG codec (`_read_png16`,
  `_write_png16`, numpy + zlib). 16-bit grey PNG goes through Pillow
  (mode 'I;16'), which keeps all 16 bits.
- Errors: reading raises `ImageReadError`, writing `ImageWriteError`; both
  print as one line that names the file.
- No module state: every function takes what it needs as arguments.
"""

from __future__ import annotations

import dataclasses
import errno
import io
import math
import os
import struct
import tempfile
import warnings
import zlib
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image as PILImage

__all__ = [
    'SUPPORTED_EXTENSIONS',
    'ImageData',
    'TiffLayout',
    'ImageReadError',
    'ImageWriteError',
    'read_image',
    'read_tiff_region',
    'split_samples',
    'write_image',
    'needs_bigtiff',
    'output_path',
    'is_image_file',
    'format_for_path',
]

SUPPORTED_EXTENSIONS = ('.tif', '.tiff', '.png', '.jpg', '.jpeg')
"""File name extensions tilediff reads and writes (compared lower-case)."""

_FORMAT_BY_EXTENSION = {
    '.tif': 'tiff',
    '.tiff': 'tiff',
    '.png': 'png',
    '.jpg': 'jpeg',
    '.jpeg': 'jpeg',
}
_FORMAT_ALIASES = {'tif': 'tiff', 'tiff': 'tiff', 'png': 'png', 'jpg': 'jpeg', 'jpeg': 'jpeg'}
_SAMPLE_TYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32))

# Classic TIFF refuses offsets past 4 GiB; keep a margin for tags, ICC, EXIF.
_BIGTIFF_LIMIT = 2**32 - 2**25

_EXIF_HEADER = b'Exif\x00\x00'
_TAG_ORIENTATION = 274
_TAG_EXIF_IFD = 34665
_TAG_GPS_IFD = 34853
_TAG_INTEROP_IFD = 40965
_TAG_ICC = 34675
# Descriptive IFD0 tags copied between TIFF files and EXIF blocks (all ASCII).
_IFD0_TEXT_TAGS = (271, 272, 306, 315, 33432)  # Make, Model, DateTime, Artist, Copyright
# TIFF field type -> bytes per value; rationals swap as two 4-byte halves.
_TIFF_TYPE_SIZE = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4,
                   10: 8, 11: 4, 12: 8, 13: 4, 16: 8, 17: 8, 18: 8}
_TIFF_POINTER_TYPES = (13, 18)

_PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
_PNG_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}  # colour type -> samples per pixel
_PNG_COLOR_TYPE = {1: 0, 2: 4, 3: 2, 4: 6}  # samples per pixel -> colour type


# --------------------------------------------------------------------------
# Data and errors


@dataclasses.dataclass(frozen=True)
class TiffLayout:
    """How a TIFF stores its pixels, so the output can be written the same way.

    `tile` is (rows, columns) for tiled files and None for strips, where
    `rowsperstrip` applies. Codes are tifffile's enums (ints).
    """

    tile: tuple[int, int] | None
    rowsperstrip: int | None
    compression: int
    predictor: int
    photometric: int
    planarconfig: int
    extrasamples: tuple[int, ...]
    bigtiff: bool

    @property
    def tiled(self) -> bool:
        return self.tile is not None


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


def _one_line(text: object) -> str:
    """Collapse a message to a single line, since errors are printed per file."""
    return ' '.join(str(text).split()) or 'unknown error'


class ImageReadError(ValueError):
    """An input file that cannot be read: missing, empty, corrupt or unsupported."""

    def __init__(self, path: os.PathLike | str, problem: str):
        self.path = Path(path)
        self.problem = _one_line(problem)
        super().__init__(f'{os.fspath(path)}: {self.problem}')


class ImageWriteError(OSError):
    """An output file that could not be written; nothing was left behind."""

    def __init__(self, path: os.PathLike | str, problem: str):
        self.path = Path(path)
        self.problem = _one_line(problem)
        super().__init__(f'{os.fspath(path)}: {self.problem}')

    def __str__(self) -> str:
        return f'{os.fspath(self.path)}: {self.problem}'


class _Unsupported(Exception):
    """Internal: a valid file tilediff does not handle; message is user-facing."""


def _describe(exc: BaseException) -> str:
    """A short, one-line description of an exception from a library or the OS."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return 'disk full (no space left on device)'
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = _one_line(exc) if str(exc) else type(exc).__name__
    return text


# --------------------------------------------------------------------------
# Names and formats


def is_image_file(path: os.PathLike | str) -> bool:
    """True if the name ends in a supported extension (case-insensitive)."""
    return Path(path).suffix.lower() in SUPPORTED_EXTENSIONS


def format_for_path(path: os.PathLike | str) -> str | None:
    """'tiff', 'png' or 'jpeg' from the file name's extension, else None."""
    return _FORMAT_BY_EXTENSION.get(Path(path).suffix.lower())


def output_path(input_path: os.PathLike | str, task: str,
                out_dir: os.PathLike | str | None = None,
                ext: str | None = None) -> Path:
    """Where the result for `input_path` goes: ``NAME_TASK.EXT``.

    Beside the input unless `out_dir` is given; EXT is the input's extension
    unless `ext` ('png' or '.png') is given.
    """
    src = Path(input_path)
    suffix = src.suffix if ext is None else ('.' + ext.lstrip('.'))
    name = f'{src.stem}_{task}{suffix}'
    return (Path(out_dir) if out_dir is not None else src.parent) / name


def _sniff_format(head: bytes) -> str | None:
    """Format from the file's first bytes; the extension may lie."""
    if head[:4] in (b'II*\x00', b'MM\x00*', b'II+\x00', b'MM\x00+'):
        return 'tiff'
    if head[:8] == _PNG_SIGNATURE:
        return 'png'
    if head[:3] == b'\xff\xd8\xff':
        return 'jpeg'
    return None


# --------------------------------------------------------------------------
# Samples <-> network RGB


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
        raise _Unsupported(f'unsupported sample layout {samples.shape}')
    dtype = samples.dtype
    if dtype not in _SAMPLE_TYPES:
        raise _Unsupported(f'unsupported sample type {dtype} (need uint8, uint16 or float32)')
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


def _quantize(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Float [0, 1] to `dtype`: round(x * max) for integers, clipped float32 otherwise."""
    values = np.clip(values, 0.0, 1.0)
    if dtype == np.float32:
        return values.astype(np.float32)
    scale = np.iinfo(dtype).max
    return np.rint(values * scale).astype(dtype)


def _convert_depth(plane: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Rescale a plane (e.g. alpha) to another sample type; identity if equal."""
    if plane.dtype == dtype:
        return plane
    if plane.dtype == np.float32:
        unit = plane
    else:
        unit = plane.astype(np.float64) / np.iinfo(plane.dtype).max
    return _quantize(unit, dtype)


def _to_samples(rgb: np.ndarray, mode: str, dtype: np.dtype,
                alpha: np.ndarray | None) -> np.ndarray:
    """Restored float RGB -> (H, W, S) samples in the output mode and dtype.

    Grey output is ITU-R BT.601 luma (0.299 R + 0.587 G + 0.114 B), computed
    in float64 so a grey input that went through unchanged comes back exactly.
    Works in row blocks so temporaries stay small for very large images.
    """
    height, width = rgb.shape[:2]
    nchan = (1 if mode == 'gray' else 3) + (alpha is not None)
    out = np.empty((height, width, nchan), dtype)
    step = max(1, (1 << 22) // max(1, width * 3))
    luma = np.array([0.299, 0.587, 0.114], np.float64)
    for y in range(0, height, step):
        block = np.clip(rgb[y:y + step], 0.0, 1.0)
        if mode == 'gray':
            out[y:y + step, :, 0] = _quantize(block.astype(np.float64) @ luma, dtype)
        else:
            out[y:y + step, :, :3] = _quantize(block, dtype)
    if alpha is not None:
        out[:, :, -1] = _convert_depth(alpha, dtype)
    return out


def _apply_orientation(samples: np.ndarray, orientation: int) -> np.ndarray:
    """Turn samples (H, W, ...) upright according to an EXIF orientation 1..8."""
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


# --------------------------------------------------------------------------
# Minimal TIFF IFD handling, for EXIF (tifffile parses it but cannot write it)


def _read_ifd(fh, offset: int, byteorder: str, bigtiff: bool) -> list[tuple]:
    """Entries of the IFD at `offset` as (code, type, count, value bytes, entry position).

    Values stay raw bytes in the file's byte order, so unknown tags copy
    unchanged. Entries of unknown type or whose value lies outside the file are
    skipped rather than failing the whole image.
    """
    count_fmt, entry_fmt, entry_size, inline = (
        ('Q', 'HHQ', 20, 8) if bigtiff else ('H', 'HHI', 12, 4))
    fh.seek(offset)
    head = fh.read(struct.calcsize(count_fmt))
    if len(head) != struct.calcsize(count_fmt):
        raise ValueError('IFD offset past end of file')
    (n,) = struct.unpack(byteorder + count_fmt, head)
    if n > 4096:
        raise ValueError(f'implausible IFD with {n} entries')
    table = fh.read(n * entry_size)
    if len(table) != n * entry_size:
        raise ValueError('IFD runs past end of file')
    entries = []
    for k in range(n):
        raw = table[k * entry_size:(k + 1) * entry_size]
        code, typ, count = struct.unpack(byteorder + entry_fmt, raw[:entry_size - inline])
        field = raw[entry_size - inline:]
        size = _TIFF_TYPE_SIZE.get(typ)
        if size is None or count * size > 1 << 26:
            continue
        nbytes = count * size
        if nbytes <= inline:
            value = field[:nbytes]
        else:
            (pointer,) = struct.unpack(byteorder + ('Q' if bigtiff else 'I'), field)
            fh.seek(pointer)
            value = fh.read(nbytes)
            if len(value) != nbytes:
                continue
        position = offset + struct.calcsize(count_fmt) + k * entry_size
        entries.append((code, typ, count, value, position))
    return entries


def _pack_ifd(entries: list[tuple], offset: int, byteorder: str, bigtiff: bool) -> bytes:
    """Serialize (code, type, count, value bytes) entries as an IFD placed at `offset`.

    Values too long for the entry follow the IFD; the next-IFD link is 0.
    """
    entries = sorted(entries, key=lambda e: e[0])
    count_fmt, entry_fmt, ptr_fmt, inline = (
        ('Q', 'HHQ', 'Q', 8) if bigtiff else ('H', 'HHI', 'I', 4))
    table_size = (struct.calcsize(count_fmt) + len(entries) * struct.calcsize(entry_fmt + ptr_fmt)
                  + struct.calcsize(ptr_fmt))
    values_at = offset + table_size
    table = bytearray(struct.pack(byteorder + count_fmt, len(entries)))
    values = bytearray()
    for code, typ, count, value in (e[:4] for e in entries):
        table += struct.pack(byteorder + entry_fmt, code, typ, count)
        if len(value) <= inline:
            table += value.ljust(inline, b'\x00')
        else:
            table += struct.pack(byteorder + ptr_fmt, values_at + len(values))
            values += value
            if len(values) % 2:
                values += b'\x00'
    table += struct.pack(byteorder + ptr_fmt, 0)
    return bytes(table + values)


def _swap_value(value: bytes, typ: int) -> bytes:
    """Byte-swap a raw TIFF value of type `typ` (to change the file's byte order)."""
    size = 4 if typ in (5, 10) else _TIFF_TYPE_SIZE[typ]
    if size == 1:
        return value
    return np.frombuffer(value, dtype=f'u{size}').byteswap().tobytes()


def _pointer_value(entry: tuple, byteorder: str) -> int:
    """The offset held by a one-value LONG/IFD/LONG8/IFD8 entry."""
    code, typ, count, value = entry[:4]
    fmt = {4: 'I', 13: 'I', 16: 'Q', 18: 'Q'}.get(typ)
    if fmt is None or count != 1:
        raise ValueError(f'tag {code} is not an IFD pointer')
    return struct.unpack(byteorder + fmt, value)[0]


def _sub_ifd_entries(fh, entry: tuple, byteorder: str, bigtiff: bool) -> list[tuple]:
    """Plain entries of the Exif or GPS IFD an IFD0 pointer entry refers to.

    Nested pointers (Interop IFD) are dropped: their offsets would dangle.
    Types only BigTIFF allows are dropped too, since EXIF blocks are classic.
    """
    entries = _read_ifd(fh, _pointer_value(entry, byteorder), byteorder, bigtiff)
    return [e[:4] for e in entries
            if e[1] not in _TIFF_POINTER_TYPES and e[1] not in (16, 17)
            and e[0] not in (_TAG_INTEROP_IFD, _TAG_EXIF_IFD, _TAG_GPS_IFD)]


def _parse_ifd0_metadata(fh, offset: int, byteorder: str, bigtiff: bool):
    """(text entries, {Exif/GPS pointer code: entries}) from the IFD0 at `offset`."""
    text, subs = [], {}
    for entry in _read_ifd(fh, offset, byteorder, bigtiff):
        if entry[0] in _IFD0_TEXT_TAGS and entry[1] == 2:
            text.append(entry[:4])
        elif entry[0] in (_TAG_EXIF_IFD, _TAG_GPS_IFD):
            try:
                subs[entry[0]] = _sub_ifd_entries(fh, entry, byteorder, bigtiff)
            except ValueError:
                continue
    return text, subs


def _build_exif(text: list[tuple], subs: dict[int, list[tuple]], byteorder: str) -> bytes | None:
    """An EXIF block (APP1 form) from IFD0 text entries and Exif/GPS IFD entries."""
    subs = {code: entries for code, entries in subs.items() if entries}
    if not text and not subs:
        return None
    header = (b'II*\x00' if byteorder == '<' else b'MM\x00*') + struct.pack(byteorder + 'I', 8)
    placeholders = [(code, 4, 1, b'\x00' * 4) for code in subs]
    ifd0_size = len(_pack_ifd(text + placeholders, 8, byteorder, False))
    at = 8 + ifd0_size
    pointers, blobs = [], []
    for code, entries in sorted(subs.items()):
        blob = _pack_ifd(entries, at, byteorder, False)
        pointers.append((code, 4, 1, struct.pack(byteorder + 'I', at)))
        blobs.append(blob)
        at += len(blob)
    return _EXIF_HEADER + header + _pack_ifd(text + pointers, 8, byteorder, False) + b''.join(blobs)


def _exif_stream(exif: bytes):
    """(file-like over the TIFF part, byte order, bigtiff, first IFD offset) of an EXIF block."""
    body = exif[len(_EXIF_HEADER):] if exif.startswith(_EXIF_HEADER) else exif
    byteorder = {b'II': '<', b'MM': '>'}.get(body[:2])
    if byteorder is None or len(body) < 8:
        raise ValueError('not an EXIF block')
    (magic,) = struct.unpack(byteorder + 'H', body[2:4])
    if magic == 43:
        (first,) = struct.unpack(byteorder + 'Q', body[8:16])
        return io.BytesIO(body), byteorder, True, first
    (first,) = struct.unpack(byteorder + 'I', body[4:8])
    return io.BytesIO(body), byteorder, False, first


def _exif_orientation_reset(exif: bytes) -> tuple[int, bytes]:
    """(orientation, EXIF with orientation set to 1), patching the value in place.

    Everything else stays byte-identical, including maker notes whose
    internal offsets a full re-serialization would break. A malformed block
    is returned unchanged with orientation 1.
    """
    try:
        fh, byteorder, bigtiff, first = _exif_stream(exif)
        for code, typ, count, value, position in _read_ifd(fh, first, byteorder, bigtiff):
            if code == _TAG_ORIENTATION and typ == 3 and count == 1:
                (orientation,) = struct.unpack(byteorder + 'H', value)
                start = len(exif) - len(fh.getvalue()) + position + (12 if bigtiff else 8)
                patched = exif[:start] + struct.pack(byteorder + 'H', 1) + exif[start + 2:]
                return orientation, patched
    except (ValueError, struct.error):
        pass
    return 1, exif


def _read_tiff_exif(fh, page_offset: int, byteorder: str, bigtiff: bool) -> bytes | None:
    """EXIF block built from a TIFF page's Exif/GPS IFDs and IFD0 text tags."""
    try:
        text, subs = _parse_ifd0_metadata(fh, page_offset, byteorder, bigtiff)
    except (ValueError, struct.error):
        return None
    return _build_exif(text, subs, byteorder)


def _add_exif_to_tiff(fh, exif: bytes, bigtiff: bool) -> None:
    """Add the EXIF block's IFD0 text tags and Exif/GPS IFDs to a written TIFF.

    tifffile refuses to write the Exif pointer tag, so the first IFD is copied
    to the end of the file with the extra entries, the sub-IFDs are appended,
    and the header is pointed at the new IFD. The old IFD stays as dead bytes.
    The file must be little-endian and hold one page.
    """
    try:
        src, src_order, src_big, first = _exif_stream(exif)
        text, subs = _parse_ifd0_metadata(src, first, src_order, src_big)
    except (ValueError, struct.error):
        return  # an unreadable EXIF block is dropped, not fatal
    if src_order != '<':
        text = [(c, t, n, _swap_value(v, t)) for c, t, n, v in text]
        subs = {k: [(c, t, n, _swap_value(v, t)) for c, t, n, v in e] for k, e in subs.items()}
    subs = {code: entries for code, entries in subs.items() if entries}
    if not text and not subs:
        return
    ptr_fmt, ptr_type = ('<Q', 16) if bigtiff else ('<I', 4)
    fh.seek(8 if bigtiff else 4)
    (ifd0_at,) = struct.unpack(ptr_fmt, fh.read(struct.calcsize(ptr_fmt)))
    ifd0 = [e[:4] for e in _read_ifd(fh, ifd0_at, '<', bigtiff)]
    at = _align(fh.seek(0, os.SEEK_END), 8)
    added = {code: (code, typ, count, value) for code, typ, count, value in text}
    for code, entries in sorted(subs.items()):
        blob = _pack_ifd(entries, at, '<', bigtiff)
        fh.seek(at)
        fh.write(blob)
        added[code] = (code, ptr_type, 1, struct.pack(ptr_fmt, at))
        at = _align(at + len(blob), 8)
    merged = [e for e in ifd0 if e[0] not in added] + list(added.values())
    fh.seek(at)
    fh.write(_pack_ifd(merged, at, '<', bigtiff))
    fh.seek(8 if bigtiff else 4)
    fh.write(struct.pack(ptr_fmt, at))


def _align(offset: int, to: int) -> int:
    return (offset + to - 1) // to * to


# --------------------------------------------------------------------------
# Reading


def read_image(path: os.PathLike | str) -> ImageData:
    """Read a TIFF, PNG or JPEG file for restoration.

    The format is taken from the file's content. TIFF: the first page only;
    uint8, uint16 or float32 samples; grey, grey+alpha, RGB, RGBA; strips or
    tiles, contiguous or planar; classic or BigTIFF; any compression tifffile
    can decode here. PNG: 1-16 bit grey, grey+alpha, RGB, RGBA, palette
    (expanded to RGB/RGBA, 8-bit). JPEG: grey or RGB.

    Raises ImageReadError (one line naming the file) for anything that cannot
    be read; no other exception escapes.
    """
    path = Path(path)
    try:
        if path.is_dir():
            raise ImageReadError(path, 'is a directory, not an image file')
        size = path.stat().st_size
        if size == 0:
            raise ImageReadError(path, 'empty file (0 bytes)')
        with open(path, 'rb') as fh:
            head = fh.read(16)
    except ImageReadError:
        raise
    except (OSError, ValueError) as exc:
        raise ImageReadError(path, f'cannot open ({_describe(exc)})') from exc
    fmt = _sniff_format(head)
    if fmt is None:
        raise ImageReadError(path, 'not a valid image file (cannot identify image format)')
    try:
        if fmt == 'tiff':
            return _read_tiff(path, size)
        if fmt == 'png' and _png_is_16bit_colour(head, path):
            return _read_png16(path)
        return _read_with_pillow(path, fmt)
    except ImageReadError:
        raise
    except _Unsupported as exc:
        raise ImageReadError(path, f'unsupported {fmt.upper()}: {exc}') from exc
    except PILImage.DecompressionBombError as exc:
        raise ImageReadError(path, f'larger than Pillow allows ({exc}); raise '
                             'PIL.Image.MAX_IMAGE_PIXELS to read it') from exc
    except Exception as exc:
        raise ImageReadError(path, f'corrupt or unreadable {fmt.upper()} ({_describe(exc)})') from exc


def _tiff_page_checks(page, filesize: int) -> None:
    """Refuse pages tilediff cannot restore faithfully, and truncated files.

    tifffile fills missing segments with zeros; a restored image full of
    black tiles is worse than an error, so segment extents are checked
    against the file size before decoding.
    """
    if page.imagedepth > 1:
        raise _Unsupported('volumetric (3-D) images')
    if page.dtype not in _SAMPLE_TYPES:
        raise _Unsupported(f'sample type {page.dtype} (need uint8, uint16 or float32)')
    photometric = int(page.photometric)
    samples = page.samplesperpixel
    colour = {1: 1, 2: 3}.get(photometric)
    if colour is None:
        raise _Unsupported(f'photometric {page.photometric.name} (need MINISBLACK or RGB)')
    if samples not in (colour, colour + 1):
        raise _Unsupported(f'{samples} samples per pixel with {page.photometric.name}')
    try:
        tifffile.TIFF.DECOMPRESSORS[int(page.compression)]
    except KeyError:
        raise _Unsupported(f'compression {page.compression.name} needs the imagecodecs package') from None
    offsets, counts = page.dataoffsets, page.databytecounts
    if not offsets or len(offsets) != len(counts):
        raise ValueError('no image data')
    for k, (offset, count) in enumerate(zip(offsets, counts)):
        if count == 0 or offset == 0:
            raise ValueError(f'file is truncated or incomplete (segment {k} has no data)')
        if offset + count > filesize:
            raise ValueError(f'file is truncated (segment {k} ends at byte {offset + count}, '
                             f'file has {filesize})')
    if int(page.compression) == 1:
        for k, (count, need) in enumerate(zip(counts, _tiff_segment_sizes(page))):
            if count < need:
                raise ValueError(f'file is truncated (segment {k} holds {count} of {need} bytes)')


def _tiff_segment_sizes(page) -> list[int]:
    """Bytes each uncompressed segment must hold, in segment order."""
    height, width = page.imagelength, page.imagewidth
    separate = int(page.planarconfig) == 2
    per_pixel = (1 if separate else page.samplesperpixel) * page.dtype.itemsize
    planes = page.samplesperpixel if separate else 1
    if page.is_tiled:
        n = math.ceil(height / page.tilelength) * math.ceil(width / page.tilewidth)
        return [page.tilelength * page.tilewidth * per_pixel] * (n * planes)
    rps = min(page.rowsperstrip or height, height)
    rows = [min(rps, height - y) for y in range(0, height, rps)]
    return [r * width * per_pixel for r in rows] * planes


def _tiff_layout(page, bigtiff: bool) -> TiffLayout:
    tile = (int(page.tilelength), int(page.tilewidth)) if page.is_tiled else None
    return TiffLayout(
        tile=tile,
        rowsperstrip=None if tile else min(page.rowsperstrip or page.imagelength, page.imagelength),
        compression=page.compression,
        predictor=page.predictor,
        photometric=page.photometric,
        planarconfig=page.planarconfig,
        extrasamples=tuple(page.extrasamples),
        bigtiff=bool(bigtiff),
    )


def _tiff_samples_last(array: np.ndarray, axes: str) -> np.ndarray:
    """Page array to (H, W) or (H, W, S): planar pages come as (S, H, W)."""
    if axes.startswith('S'):
        array = np.moveaxis(array, 0, -1)
    return array


def _read_tiff(path: Path, filesize: int) -> ImageData:
    with tifffile.TiffFile(path) as tif:
        page = tif.pages.first
        _tiff_page_checks(page, filesize)
        samples = _tiff_samples_last(page.asarray(), page.axes)
        icc_tag = page.tags.get(_TAG_ICC)
        icc = bytes(icc_tag.value) if icc_tag is not None else None
        exif = _read_tiff_exif(tif.filehandle, page.offset, tif.byteorder, tif.is_bigtiff)
        layout = _tiff_layout(page, tif.is_bigtiff)
    rgb, alpha, mode = split_samples(samples)
    return ImageData(rgb=rgb, alpha=alpha, mode=mode, dtype=samples.dtype, format='tiff',
                     icc=icc, exif=exif, tiff=layout, path=path)


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
        filesize = path.stat().st_size
        if filesize == 0:
            raise ImageReadError(path, 'empty file (0 bytes)')
        with tifffile.TiffFile(path) as tif:
            page = tif.pages.first
            _tiff_page_checks(page, filesize)
            height, width = page.imagelength, page.imagewidth
            if not (0 <= y0 < y1 <= height and 0 <= x0 < x1 <= width):
                raise ImageReadError(path, f'window rows {y0}:{y1}, columns {x0}:{x1} is outside '
                                     f'the {height}x{width} image')
            return _read_tiff_window(tif.filehandle, page, y0, y1, x0, x1)
    except ImageReadError:
        raise
    except _Unsupported as exc:
        raise ImageReadError(path, f'unsupported TIFF: {exc}') from exc
    except Exception as exc:
        raise ImageReadError(path, f'corrupt or unreadable TIFF ({_describe(exc)})') from exc


def _read_tiff_window(fh, page, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    height, width = page.imagelength, page.imagewidth
    nsamples = page.samplesperpixel
    separate = int(page.planarconfig) == 2 and nsamples > 1
    if page.is_tiled:
        seg_h, seg_w = page.tilelength, page.tilewidth
    else:
        seg_h, seg_w = min(page.rowsperstrip or height, height), width
    across = math.ceil(width / seg_w)
    per_plane = math.ceil(height / seg_h) * across
    out = np.empty((y1 - y0, x1 - x0, nsamples), page.dtype)
    decode = page.decode
    for plane in (range(nsamples) if separate else (0,)):
        for ty in range(y0 // seg_h, (y1 - 1) // seg_h + 1):
            for tx in range(x0 // seg_w, (x1 - 1) // seg_w + 1):
                index = plane * per_plane + ty * across + tx
                fh.seek(page.dataoffsets[index])
                data = fh.read(page.databytecounts[index])
                segment = decode(data, index, jpegtables=page.jpegtables)[0]
                segment = segment.reshape(segment.shape[-3:])  # (rows, cols, samples)
                top, left = ty * seg_h, tx * seg_w
                sy0, sy1 = max(y0, top) - top, min(y1, top + seg_h) - top
                sx0, sx1 = max(x0, left) - left, min(x1, left + seg_w) - left
                target = out[top + sy0 - y0:top + sy1 - y0, left + sx0 - x0:left + sx1 - x0]
                if separate:
                    target[:, :, plane] = segment[sy0:sy1, sx0:sx1, 0]
                else:
                    target[...] = segment[sy0:sy1, sx0:sx1]
    return out


def _read_with_pillow(path: Path, fmt: str) -> ImageData:
    """PNG (except 16-bit colour) and JPEG through Pillow."""
    with PILImage.open(path, formats=[fmt.upper()]) as im:
        im.load()
        icc = im.info.get('icc_profile') or None
        exif = im.info.get('exif') or None
        samples = _pillow_samples(im)
    if exif is not None and not exif.startswith(_EXIF_HEADER):
        exif = _EXIF_HEADER + exif
    return _finish_oriented(path, fmt, samples, icc, exif)


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
            raise _Unsupported('32-bit integer samples')
        return values.astype(np.uint16)[:, :, None]
    elif mode not in ('L', 'LA', 'RGB', 'RGBA'):
        raise _Unsupported(f'Pillow mode {mode!r} (need grey or RGB, with or without alpha)')
    samples = np.asarray(im)
    return samples[:, :, None] if samples.ndim == 2 else samples


def _finish_oriented(path: Path, fmt: str, samples: np.ndarray, icc, exif) -> ImageData:
    """Apply EXIF orientation, reset it in the stored EXIF, split the samples."""
    if exif is not None:
        orientation, exif = _exif_orientation_reset(exif)
        samples = _apply_orientation(samples, orientation)
    rgb, alpha, mode = split_samples(samples)
    return ImageData(rgb=rgb, alpha=alpha, mode=mode, dtype=samples.dtype, format=fmt,
                     icc=icc, exif=exif, tiff=None, path=path)


def _png_is_16bit_colour(head: bytes, path: Path) -> bool:
    """True for 16-bit RGB, RGBA or grey+alpha PNG, which Pillow reduces to 8 bits."""
    if len(head) < 16 or head[12:16] != b'IHDR':
        return False
    with open(path, 'rb') as fh:
        ihdr = fh.read(29)
    return len(ihdr) == 29 and ihdr[24] == 16 and ihdr[25] in (2, 4, 6)


def _png_chunks(data: bytes):
    """Yield (type, payload) of each PNG chunk, checking lengths and CRCs, up to IEND."""
    pos = len(_PNG_SIGNATURE)
    while pos + 8 <= len(data):
        length, ctype = struct.unpack('>I4s', data[pos:pos + 8])
        end = pos + 12 + length
        if end > len(data):
            raise ValueError(f'file is truncated (chunk {ctype.decode("latin-1")} runs past the end)')
        payload = data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack('>I', data[end - 4:end])
        if zlib.crc32(ctype + payload) != crc:
            raise ValueError(f'CRC error in chunk {ctype.decode("latin-1")}')
        yield ctype, payload
        if ctype == b'IEND':
            return
        pos = end
    raise ValueError('file is truncated (no IEND chunk)')


def _read_png16(path: Path) -> ImageData:
    """16-bit colour PNG with tilediff's own decoder (Pillow keeps only 8 bits).

    Non-interlaced only; all five filter types; iCCP and eXIf kept.
    """
    data = path.read_bytes()
    chunks = list(_png_chunks(data))
    if not chunks or chunks[0][0] != b'IHDR' or len(chunks[0][1]) != 13:
        raise ValueError('missing IHDR chunk')
    width, height, depth, ctype, _, _, interlace = struct.unpack('>IIBBBBB', chunks[0][1])
    if interlace:
        raise _Unsupported('interlaced (Adam7) 16-bit colour PNG; save it non-interlaced')
    if width == 0 or height == 0:
        raise ValueError('image has zero size')
    nchan = _PNG_CHANNELS[ctype]
    icc = exif = None
    inflate = zlib.decompressobj()
    parts = []
    for kind, payload in chunks:
        if kind == b'IDAT':
            parts.append(inflate.decompress(payload))
        elif kind == b'iCCP':
            name_end = payload.index(b'\x00')
            icc = zlib.decompress(payload[name_end + 2:])
        elif kind == b'eXIf':
            exif = _EXIF_HEADER + payload
    parts.append(inflate.flush())
    raw = b''.join(parts)
    bpp = 2 * nchan
    if not inflate.eof or len(raw) != height * (1 + width * bpp):
        raise ValueError('image data is truncated or has the wrong size')
    rows = np.frombuffer(raw, np.uint8).reshape(height, 1 + width * bpp)
    filters = rows[:, 0]
    if filters.max() > 4:
        raise ValueError('invalid PNG filter type')
    pixels = _png_unfilter(filters, rows[:, 1:].reshape(height, width, bpp))
    samples = pixels.view('>u2').astype(np.uint16)
    return _finish_oriented(path, 'png', samples, icc, exif)


def _png_unfilter(filters: np.ndarray, filtered: np.ndarray) -> np.ndarray:
    """Undo PNG row filters on bytes (H, W, bytes per pixel).

    None/Sub/Up rows are vectorized per row. Average and Paeth depend on the
    byte to the left, so images using them are reconstructed along
    anti-diagonals (every pixel on one needs only earlier ones): H + W numpy
    steps instead of H * W Python ones.
    """
    height, width, bpp = filtered.shape
    if not np.isin(filters, (3, 4)).any():
        out = np.empty_like(filtered)
        prev = np.zeros((width, bpp), np.uint8)
        for y in range(height):
            row, kind = filtered[y], filters[y]
            if kind == 1:
                row = np.cumsum(row, axis=0, dtype=np.uint8)
            elif kind == 2:
                row = row + prev
            out[y] = row
            prev = out[y]
        return out
    recon = np.zeros((height + 1, width + 1, bpp), np.int16)  # zero border: row 0, column 0
    source = filtered.astype(np.int16)
    kinds = filters.astype(np.int16)
    for d in range(height + width - 1):
        r = np.arange(max(0, d - width + 1), min(height - 1, d) + 1)
        c = d - r
        a, b, ul = recon[r + 1, c], recon[r, c + 1], recon[r, c]
        p = a + b - ul
        pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - ul)
        paeth = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, ul))
        t = kinds[r][:, None]
        pred = np.select([t == 1, t == 2, t == 3, t == 4], [a, b, (a + b) >> 1, paeth], 0)
        recon[r + 1, c + 1] = (source[r, c] + pred) & 0xFF
    return recon[1:, 1:].astype(np.uint8)


# --------------------------------------------------------------------------
# Writing


def needs_bigtiff(nbytes: int) -> bool:
    """True if a TIFF holding `nbytes` of samples could pass classic TIFF's 4 GiB.

    Uses the uncompressed size: compression can also expand data, and the
    choice must be made before writing starts.
    """
    return nbytes > _BIGTIFF_LIMIT


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
    source's; zlib when there is no TIFF source; a codec that needs the
    missing imagecodecs package falls back to zlib with a warning); for PNG a
    zlib level 0-9. bigtiff: True/False forces; None keeps a BigTIFF source
    BigTIFF and otherwise switches on past ~4 GiB (`needs_bigtiff`).

    The file is written to a hidden temporary file in the same folder,
    flushed to disk and renamed over `path`, so a crash or a full disk never
    leaves a partial image and never harms an existing file. Failures raise
    ImageWriteError (one line naming the file); KeyboardInterrupt is re-raised
    as is after the clean-up. Returns the path written.
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
        raise ImageWriteError(path, _describe(exc)) from exc

    def write(fh):
        if fmt == 'tiff':
            _write_tiff(fh, samples, layout=like.tiff if like is not None else None, icc=icc,
                        exif=exif, compression=compression, bigtiff=bigtiff)
        elif fmt == 'png':
            _write_png(fh, samples, icc=icc, exif=exif,
                       level=6 if compression is None else int(compression))
        else:
            _write_jpeg(fh, samples, icc=icc, exif=exif, quality=jpeg_quality)

    _atomic_write(path, write)
    return path


def _output_format(path: Path, format: str | None, like: ImageData | None) -> str:
    if format is not None:
        fmt = _FORMAT_ALIASES.get(format.lower().lstrip('.'))
        if fmt is None:
            raise ValueError(f'unknown format {format!r} (use tiff, png or jpeg)')
        return fmt
    fmt = format_for_path(path)
    if fmt is None:
        if like is None:
            raise ValueError(f'unknown extension {path.suffix!r}; name the format')
        fmt = like.format
    return fmt


def _output_samples(rgb: np.ndarray, like: ImageData | None, fmt: str) -> np.ndarray:
    """Restored RGB -> the (H, W, S) samples the output file will hold."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ValueError(f'expected an (H, W, 3) RGB array, got shape {rgb.shape}')
    if like is None:
        return _to_samples(rgb, 'rgb', np.dtype(np.uint8), None)
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
    return _to_samples(rgb, like.mode, dtype, alpha)


def new_file_mode(path: Path) -> int:
    """Permissions for the output: the replaced file's, else 0o666 minus the umask.

    mkstemp creates files readable by the owner only; a rename would keep that.
    The umask is read from /proc (Linux) because os.umask can only be queried
    by changing it, which would race with other threads.
    """
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        pass
    umask = 0o022
    try:
        with open('/proc/self/status') as status:
            for line in status:
                if line.startswith('Umask:'):
                    umask = int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o666 & ~umask


def _atomic_write(path: Path, write) -> None:
    """Run write(fh) on a temporary file beside `path`, then rename it over `path`."""
    directory = path.parent
    tmp = None
    try:
        mode = new_file_mode(path)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f'.{path.name}.', suffix='.tmp')
        os.close(fd)  # reopen by name: tifffile wants a file object with a real name
        with open(tmp, 'r+b') as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
        tmp = None
    except BaseException as exc:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        if not isinstance(exc, Exception):
            raise  # KeyboardInterrupt, SystemExit: keep their meaning
        raise ImageWriteError(path, f'cannot write ({_describe(exc)})') from exc
    try:  # make the rename itself durable; not all systems allow it
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def _tiff_codec_available(compression: int, predictor: int) -> bool:
    """Whether tifffile can encode this compression/predictor without imagecodecs."""
    try:
        tifffile.TIFF.COMPRESSORS[int(compression)]
        if int(predictor) > 1:
            tifffile.TIFF.PREDICTORS[int(predictor)]
    except (KeyError, ValueError, TypeError):
        return False
    return True


def _tiff_compression(layout: TiffLayout | None, compression, dtype) -> tuple[int, int]:
    """(compression, predictor) for the output TIFF."""
    if compression is not None:
        code = compression
        if isinstance(code, str):
            code = {'zlib': 8, 'deflate': 8, 'none': 1}.get(code.lower(), code)
        try:
            code = tifffile.COMPRESSION[code.upper()] if isinstance(code, str) else code
            code, predictor = int(tifffile.COMPRESSION(int(code))), 1
        except (KeyError, ValueError, TypeError):
            raise ValueError(f'unknown TIFF compression {compression!r}') from None
    elif layout is not None:
        code, predictor = int(layout.compression), int(layout.predictor)
    else:
        code, predictor = 8, 1
    if not _tiff_codec_available(code, predictor):
        fallback_predictor = 2 if dtype != np.float32 and predictor > 1 else 1
        warnings.warn(f'TIFF compression {tifffile.COMPRESSION(code).name} with predictor '
                      f'{predictor} needs imagecodecs; writing ADOBE_DEFLATE (zlib) instead',
                      stacklevel=4)
        code, predictor = 8, fallback_predictor
    if code == 1:
        predictor = 1
    return code, predictor


def _write_tiff(fh, samples: np.ndarray, *, layout: TiffLayout | None, icc: bytes | None,
                exif: bytes | None, compression, bigtiff: bool | None) -> None:
    """Samples (H, W, S) as a one-page little-endian TIFF into fh (at offset 0)."""
    nchan = samples.shape[2]
    colour = 3 if nchan >= 3 else 1
    extra = nchan - colour
    extrasamples = None
    if extra:
        kept = layout.extrasamples if layout is not None else ()
        extrasamples = tuple(kept) if len(kept) == extra else (2,)  # 2 = unassociated alpha
    code, predictor = _tiff_compression(layout, compression, samples.dtype)
    if bigtiff is None:
        extra_bytes = len(icc or b'') + len(exif or b'')
        bigtiff = (layout is not None and layout.bigtiff) or needs_bigtiff(samples.nbytes + extra_bytes)
    separate = layout is not None and int(layout.planarconfig) == 2 and nchan > 1
    if nchan == 1:
        data, planar = samples[:, :, 0], None
    elif separate:
        data, planar = np.moveaxis(samples, -1, 0), 'separate'
    else:
        data, planar = samples, 'contig'
    options = dict(
        photometric='rgb' if colour == 3 else 'minisblack',
        planarconfig=planar,
        extrasamples=extrasamples,
        compression=code,
        predictor=predictor if predictor > 1 else None,
        iccprofile=icc,
        metadata=None,
        software='tilediff',
    )
    if layout is not None and layout.tile is not None:
        options['tile'] = layout.tile
    elif layout is not None and layout.rowsperstrip:
        options['rowsperstrip'] = layout.rowsperstrip
    with tifffile.TiffWriter(fh, bigtiff=bool(bigtiff), byteorder='<') as tw:
        tw.write(data, **options)
    if exif:
        _add_exif_to_tiff(fh, exif, bool(bigtiff))


def _write_png(fh, samples: np.ndarray, *, icc: bytes | None, exif: bytes | None, level: int) -> None:
    """Samples (H, W, S) as PNG into fh: Pillow, or tilediff's encoder for 16-bit colour."""
    nchan = samples.shape[2]
    if samples.dtype == np.uint16 and nchan > 1:
        _write_png16(fh, samples, icc=icc, exif=exif, level=level)
        return
    if samples.dtype == np.uint16:
        im = PILImage.fromarray(samples[:, :, 0].astype('<u2'))  # mode 'I;16'
    else:
        im = PILImage.fromarray(samples[:, :, 0] if nchan == 1 else samples)
    params = {'compress_level': level}
    if icc:
        params['icc_profile'] = icc
    if exif:
        params['exif'] = exif
    im.save(fh, format='PNG', **params)


def _png_chunk(fh, kind: bytes, payload: bytes) -> None:
    fh.write(struct.pack('>I', len(payload)) + kind + payload
             + struct.pack('>I', zlib.crc32(kind + payload)))


def _png_filter_paeth(rows: np.ndarray, above: np.ndarray) -> np.ndarray:
    """Paeth-filter rows of bytes (h, W, bpp) given the row above them (W, bpp)."""
    x = rows.astype(np.int16)
    b = np.concatenate([above[None].astype(np.int16), x[:-1]], axis=0)
    a = np.zeros_like(x)
    a[:, 1:] = x[:, :-1]
    c = np.zeros_like(x)
    c[:, 1:] = b[:, :-1]
    p = a + b - c
    pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
    pred = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))
    return ((x - pred) & 0xFF).astype(np.uint8)


def _write_png16(fh, samples: np.ndarray, *, icc: bytes | None, exif: bytes | None,
                 level: int) -> None:
    """16-bit PNG (grey+alpha, RGB, RGBA) with Paeth-filtered rows, since Pillow cannot."""
    height, width, nchan = samples.shape
    fh.write(_PNG_SIGNATURE)
    _png_chunk(fh, b'IHDR', struct.pack('>IIBBBBB', width, height, 16,
                                        _PNG_COLOR_TYPE[nchan], 0, 0, 0))
    if icc:
        _png_chunk(fh, b'iCCP', b'ICC profile\x00\x00' + zlib.compress(icc))
    if exif:
        _png_chunk(fh, b'eXIf', exif[len(_EXIF_HEADER):] if exif.startswith(_EXIF_HEADER) else exif)
    deflate = zlib.compressobj(level)
    bpp = 2 * nchan
    above = np.zeros((width, bpp), np.uint8)
    step = max(1, (1 << 21) // (width * bpp))
    for y in range(0, height, step):
        rows = samples[y:y + step].astype('>u2').view(np.uint8).reshape(-1, width, bpp)
        filtered = _png_filter_paeth(rows, above)
        above = rows[-1]
        lines = np.empty((rows.shape[0], 1 + width * bpp), np.uint8)
        lines[:, 0] = 4
        lines[:, 1:] = filtered.reshape(rows.shape[0], -1)
        chunk = deflate.compress(lines.tobytes())
        if chunk:
            _png_chunk(fh, b'IDAT', chunk)
    _png_chunk(fh, b'IDAT', deflate.flush())
    _png_chunk(fh, b'IEND', b'')


def _write_jpeg(fh, samples: np.ndarray, *, icc: bytes | None, exif: bytes | None,
                quality: int) -> None:
    """8-bit grey or RGB samples as JPEG into fh, with ICC and EXIF."""
    nchan = samples.shape[2]
    if nchan not in (1, 3):
        raise ValueError('JPEG holds grey or RGB only')
    im = PILImage.fromarray(samples[:, :, 0] if nchan == 1 else samples)
    params = {'quality': int(quality)}
    if icc:
        params['icc_profile'] = icc
    if exif:
        params['exif'] = exif
    im.save(fh, format='JPEG', **params)
