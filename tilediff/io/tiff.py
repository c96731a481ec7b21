"""TIFF through tifffile: whole-page and windowed reading, writing in the source's layout.

tifffile (with imagecodecs for LZW, zstd, JPEG and the other codecs) does the decoding and
encoding. What is here is what tilediff adds: refusing pages it cannot restore faithfully, catching
truncated files before tifffile fills the gaps with zeros, reading a window segment by segment, and
keeping the source's layout (tiles or strips, compression, predictor, planar configuration).
TIFF orientation tags are ignored, as most TIFF readers do.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from pathlib import Path

import numpy as np
import tifffile

from .errors import ImageReadError, Unsupported
from .exif import add_exif_to_tiff, read_tiff_exif
from .samples import SAMPLE_TYPES, ImageData

__all__ = ['TiffLayout', 'needs_bigtiff', 'read_tiff', 'read_region', 'tiff_size', 'write_tiff']

# Classic TIFF refuses offsets past 4 GiB; keep a margin for tags, ICC, EXIF.
_BIGTIFF_LIMIT = 2**32 - 2**25
_TAG_ICC = 34675
_ZLIB = 8  # ADOBE_DEFLATE: the default, and the fallback for codecs with no encoder


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


def needs_bigtiff(nbytes: int) -> bool:
    """True if a TIFF holding `nbytes` of samples could pass classic TIFF's 4 GiB.

    Uses the uncompressed size: compression can also expand data, and the
    choice must be made before writing starts.
    """
    return nbytes > _BIGTIFF_LIMIT


# --------------------------------------------------------------------------
# Reading


def tiff_size(path: Path) -> tuple[int, int]:
    """(height, width) of the first page, from its IFD only."""
    with tifffile.TiffFile(path) as tif:
        page = tif.pages.first
        return int(page.imagelength), int(page.imagewidth)


def read_tiff(path: Path, filesize: int) -> ImageData:
    """The first page with its ICC profile, EXIF and layout."""
    with tifffile.TiffFile(path) as tif:
        page = tif.pages.first
        _page_checks(page, filesize)
        samples = _samples_last(page.asarray(), page.axes)
        icc_tag = page.tags.get(_TAG_ICC)
        icc = bytes(icc_tag.value) if icc_tag is not None else None
        exif = read_tiff_exif(tif.filehandle, page.offset, tif.byteorder, tif.is_bigtiff)
        layout = _layout(page, tif.is_bigtiff)
    return ImageData.from_samples(samples, format='tiff', icc=icc, exif=exif, tiff=layout,
                                  path=path)


def read_region(path: Path, filesize: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """Samples (y1 - y0, x1 - x0, S) of a window of the first page (see `read_tiff_region`)."""
    with tifffile.TiffFile(path) as tif:
        page = tif.pages.first
        _page_checks(page, filesize)
        height, width = page.imagelength, page.imagewidth
        if not (0 <= y0 < y1 <= height and 0 <= x0 < x1 <= width):
            raise ImageReadError(path, f'window rows {y0}:{y1}, columns {x0}:{x1} is outside '
                                 f'the {height}x{width} image')
        return _read_window(tif.filehandle, page, y0, y1, x0, x1)


def _page_checks(page, filesize: int) -> None:
    """Refuse pages tilediff cannot restore faithfully, and truncated files.

    tifffile fills missing segments with zeros; a restored image full of
    black tiles is worse than an error, so segment extents are checked
    against the file size before decoding.
    """
    if page.imagedepth > 1:
        raise Unsupported('volumetric (3-D) images')
    if page.dtype not in SAMPLE_TYPES:
        raise Unsupported(f'sample type {page.dtype} (need uint8, uint16 or float32)')
    photometric = int(page.photometric)
    samples = page.samplesperpixel
    colour = {1: 1, 2: 3}.get(photometric)
    if colour is None:
        raise Unsupported(f'photometric {page.photometric.name} (need MINISBLACK or RGB)')
    if samples not in (colour, colour + 1):
        raise Unsupported(f'{samples} samples per pixel with {page.photometric.name}')
    try:
        tifffile.TIFF.DECOMPRESSORS[int(page.compression)]
    except KeyError:
        raise Unsupported(f'compression {page.compression.name} needs the imagecodecs package') from None
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
        for k, (count, need) in enumerate(zip(counts, _segment_sizes(page))):
            if count < need:
                raise ValueError(f'file is truncated (segment {k} holds {count} of {need} bytes)')


def _segment_sizes(page) -> list[int]:
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


def _layout(page, bigtiff: bool) -> TiffLayout:
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


def _samples_last(array: np.ndarray, axes: str) -> np.ndarray:
    """Page array to (H, W) or (H, W, S): planar pages come as (S, H, W)."""
    if axes.startswith('S'):
        array = np.moveaxis(array, 0, -1)
    return array


def _read_window(fh, page, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """Decode only the segments that touch the window: tifffile's asarray decodes them all, and its
    windowed reading (aszarr) needs the zarr package.

    Each segment goes through tifffile's own decoder (``page.decode``), so every compression and
    predictor it handles works here too.
    """
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


# --------------------------------------------------------------------------
# Writing


def write_tiff(fh, samples: np.ndarray, *, layout: TiffLayout | None, icc: bytes | None,
               exif: bytes | None, compression, bigtiff: bool | None) -> None:
    """Samples (H, W, S) as a one-page little-endian TIFF into fh (at offset 0).

    The layout (tiles or strips, planar configuration, extra samples) is the source's when there
    is one; compression and bigtiff as `write_image` documents them.
    """
    nchan = samples.shape[2]
    colour = 3 if nchan >= 3 else 1
    extra = nchan - colour
    extrasamples = None
    if extra:
        kept = layout.extrasamples if layout is not None else ()
        extrasamples = tuple(kept) if len(kept) == extra else (2,)  # 2 = unassociated alpha
    code, predictor = tiff_compression(layout, compression, samples.dtype)
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
        add_exif_to_tiff(fh, exif, bool(bigtiff))


def tiff_compression(layout: TiffLayout | None, compression, dtype) -> tuple[int, int]:
    """(compression, predictor) for the output TIFF.

    `compression` when given, else the source's, else zlib. A codec tifffile can decode but not
    encode here (old-style JPEG, CCITT, EER; any codec when imagecodecs is missing) becomes zlib
    with a warning, keeping a horizontal predictor for integer samples.
    """
    if compression is not None:
        code = compression
        if isinstance(code, str):
            code = {'zlib': _ZLIB, 'deflate': _ZLIB, 'none': 1}.get(code.lower(), code)
        try:
            code = tifffile.COMPRESSION[code.upper()] if isinstance(code, str) else code
            code, predictor = int(tifffile.COMPRESSION(int(code))), 1
        except (KeyError, ValueError, TypeError):
            raise ValueError(f'unknown TIFF compression {compression!r}') from None
    elif layout is not None:
        code, predictor = int(layout.compression), int(layout.predictor)
    else:
        code, predictor = _ZLIB, 1
    if not _codec_available(code, predictor):
        fallback_predictor = 2 if dtype != np.float32 and predictor > 1 else 1
        warnings.warn(f'TIFF compression {tifffile.COMPRESSION(code).name} with predictor '
                      f'{predictor} has no encoder here (tifffile needs imagecodecs for most '
                      'codecs, and some it only decodes); writing ADOBE_DEFLATE (zlib) instead',
                      stacklevel=6)
        code, predictor = _ZLIB, fallback_predictor
    if code == 1:
        predictor = 1
    return code, predictor


def _codec_available(compression: int, predictor: int) -> bool:
    """Whether tifffile can encode this compression and predictor here."""
    try:
        tifffile.TIFF.COMPRESSORS[int(compression)]
        if int(predictor) > 1:
            tifffile.TIFF.PREDICTORS[int(predictor)]
    except (KeyError, ValueError, TypeError):
        return False
    return True
