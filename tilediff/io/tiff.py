"""TIFF through tifffile: whole-page and windowed reading, writing in the source's layout.

tifffile (with imagecodecs for LZW, zstd, JPEG and the other codecs) does the decoding and
encoding. What is here is what tilediff adds: refusing pages it cannot restore faithfully, catching
truncated files before tifffile fills the gaps with zeros, reading a window segment by segment, and
keeping the source's layout (tiles or strips, compression, predictor, planar configuration).
TIFF orientation tags are ignored, as most TIFF readers do.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import math
import tempfile
import warnings
from pathlib import Path

import numpy as np
import tifffile

from .errors import MAX_EXPANSION, MAX_ICC_BYTES, ImageReadError, Unsupported
from .exif import add_exif_to_tiff, read_tiff_exif
from .samples import SAMPLE_TYPES, ImageData

__all__ = ['TiffLayout', 'TiffWindows', 'needs_bigtiff', 'read_tiff', 'read_region', 'tiff_size', 'write_tiff',
           'write_tiff_bands']

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
    with TiffWindows(path, filesize, cache_bytes=0) as tif:
        return tif.read(y0, y1, x0, x1)


class TiffWindows:
    """A TIFF's first page held open for reading by windows (the region source of a TIFF input).

    The file is opened and checked once (`_page_checks`); each `read` decodes only the strips or
    tiles the window touches, each through tifffile's own segment decoder. Decoded segments are
    kept, least recently used first out, up to `cache_bytes`: the engine reads overlapping windows
    (tiles with halos, in raster order), so a cache of about one row of segments across the image
    decodes every segment about once. `icc`, `exif` and `layout` are read for the writer.
    """

    def __init__(self, path: Path, filesize: int, *, cache_bytes: int = 64 << 20):
        self.path = Path(path)
        self._tif = tifffile.TiffFile(self.path)
        try:
            page = self._page = self._tif.pages.first
            _page_checks(page, filesize)
            self.height, self.width = int(page.imagelength), int(page.imagewidth)
            self.samples = int(page.samplesperpixel)
            self.dtype = np.dtype(page.dtype)
            icc_tag = page.tags.get(_TAG_ICC)
            self.icc = bytes(icc_tag.value) if icc_tag is not None else None
            self.exif = read_tiff_exif(self._tif.filehandle, page.offset, self._tif.byteorder,
                                       self._tif.is_bigtiff)
            self.layout = _layout(page, self._tif.is_bigtiff)
        except BaseException:
            self._tif.close()
            raise
        if page.is_tiled:
            self.segment_shape = (int(page.tilelength), int(page.tilewidth))
        else:
            self.segment_shape = (min(page.rowsperstrip or self.height, self.height), self.width)
        self.separate = int(page.planarconfig) == 2 and self.samples > 1
        self.cache_bytes = int(cache_bytes)
        self._cache = collections.OrderedDict()   # segment index -> decoded (rows, cols, samples)
        self._cached = 0

    def band_bytes(self, rows: int) -> int:
        """Bytes of the decoded segments that a window of `rows` full-width rows touches: the
        cache that makes reading a band of overlapping tiles decode each segment once."""
        seg_h = self.segment_shape[0]
        return (-(-rows // seg_h) + 1) * seg_h * self.width * self.samples * self.dtype.itemsize

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Samples (y1 - y0, x1 - x0, S) of a window, in the file's dtype."""
        if not (0 <= y0 < y1 <= self.height and 0 <= x0 < x1 <= self.width):
            raise ImageReadError(self.path, f'window rows {y0}:{y1}, columns {x0}:{x1} is outside '
                                 f'the {self.height}x{self.width} image')
        seg_h, seg_w = self.segment_shape
        across = -(-self.width // seg_w)
        per_plane = -(-self.height // seg_h) * across
        out = np.empty((y1 - y0, x1 - x0, self.samples), self.dtype)
        for plane in (range(self.samples) if self.separate else (0,)):
            for ty in range(y0 // seg_h, (y1 - 1) // seg_h + 1):
                for tx in range(x0 // seg_w, (x1 - 1) // seg_w + 1):
                    segment = self._segment(plane * per_plane + ty * across + tx)
                    top, left = ty * seg_h, tx * seg_w
                    sy0, sy1 = max(y0, top) - top, min(y1, top + seg_h) - top
                    sx0, sx1 = max(x0, left) - left, min(x1, left + seg_w) - left
                    target = out[top + sy0 - y0:top + sy1 - y0, left + sx0 - x0:left + sx1 - x0]
                    if self.separate:
                        target[:, :, plane] = segment[sy0:sy1, sx0:sx1, 0]
                    else:
                        target[...] = segment[sy0:sy1, sx0:sx1]
        return out

    def _segment(self, index: int) -> np.ndarray:
        """Segment `index` decoded, (rows, cols, samples): from the cache, or read and decoded."""
        segment = self._cache.get(index)
        if segment is not None:
            self._cache.move_to_end(index)
            return segment
        page, fh = self._page, self._tif.filehandle
        fh.seek(page.dataoffsets[index])
        data = fh.read(page.databytecounts[index])
        segment = page.decode(data, index, jpegtables=page.jpegtables)[0]
        segment = segment.reshape(segment.shape[-3:])  # (rows, cols, samples)
        if self.cache_bytes > 0:
            self._cache[index] = segment
            self._cached += segment.nbytes
            while self._cached > self.cache_bytes and len(self._cache) > 1:
                _, dropped = self._cache.popitem(last=False)
                self._cached -= dropped.nbytes
        return segment

    def close(self) -> None:
        self._cache.clear()
        self._cached = 0
        self._tif.close()

    def __enter__(self) -> TiffWindows:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


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
    _pages_check(page)
    icc_tag = page.tags.get(_TAG_ICC)
    if icc_tag is not None and icc_tag.count > MAX_ICC_BYTES:
        raise Unsupported(f'ICC profile of {icc_tag.count} bytes (the limit is {MAX_ICC_BYTES >> 20} MiB)')
    _decoder_check(page)
    offsets, counts = page.dataoffsets, page.databytecounts
    if not offsets or len(offsets) != len(counts):
        raise ValueError('no image data')
    if len(offsets) < _segment_count(page):
        raise ValueError(f'the file lists {len(offsets)} data segments, a '
                         f'{page.imagewidth}x{page.imagelength} image in its layout needs {_segment_count(page)}')
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
    codec = _BOUNDED_CODECS.get(int(page.compression))
    if codec is not None:   # a declared size its data cannot hold: refused before allocating it
        ratio = MAX_EXPANSION[codec]
        for k, (count, need) in enumerate(zip(counts, _segment_sizes(page))):
            if need > ratio * count + 1024:
                raise ValueError(f'segment {k} would decode to {need} bytes from {count} bytes of '
                                 f'{codec} data ({codec} expands at most {ratio}x)')


# codes of the codecs whose expansion is bounded (errors.MAX_EXPANSION): deflate (8, 32946), LZW, PackBits
_BOUNDED_CODECS = {8: 'zlib', 32946: 'zlib', 5: 'lzw', 32773: 'packbits'}


def _pages_check(page) -> None:
    """Unsupported for a multi-page TIFF: only the first page would be restored. Pages marked as
    reduced-resolution versions of another (thumbnails, pyramid levels) or as masks do not count."""
    tif = page.parent
    count = len(tif.pages)
    if count < 2:
        return
    full = 1 + sum(1 for other in tif.pages[1:] if not int(getattr(other, 'subfiletype', 0) or 0) & 0b101)
    if full > 1:
        raise Unsupported(f'multi-page TIFF ({full} pages): tilediff restores single images; '
                          'save each page as its own file (e.g. tiffsplit) and restore those')


def _decoder_check(page) -> None:
    """Unsupported, naming the codec and how to get it, when the page's decoder is not installed
    (tifffile's fallback decoders raise ImportError only when called, so one is called on nothing)."""
    name = page.compression.name
    try:
        decode = tifffile.TIFF.DECOMPRESSORS[int(page.compression)]
    except KeyError:
        raise Unsupported(f'compression {name} needs the imagecodecs package (pip install imagecodecs)') from None
    if int(page.compression) == 1:
        return
    try:
        decode(b'')
    except ImportError as exc:
        raise Unsupported(f'compression {name} needs a codec that is not installed here ({exc}); '
                          'pip install imagecodecs') from None
    except Exception:   # nothing to decode: any other complaint is expected
        pass


def _segment_count(page) -> int:
    """How many strips or tiles the page's size and layout need (sample planes included)."""
    height, width = page.imagelength, page.imagewidth
    planes = page.samplesperpixel if int(page.planarconfig) == 2 else 1
    if page.is_tiled:
        return math.ceil(height / page.tilelength) * math.ceil(width / page.tilewidth) * planes
    rps = min(page.rowsperstrip or height, height)
    return math.ceil(height / rps) * planes


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


# --------------------------------------------------------------------------
# Writing


def write_tiff(fh, samples: np.ndarray, *, layout: TiffLayout | None, icc: bytes | None,
               exif: bytes | None, compression, bigtiff: bool | None) -> None:
    """Samples (H, W, S) as a one-page little-endian TIFF into fh (at offset 0).

    The layout (tiles or strips, planar configuration, extra samples) is the source's when there
    is one; compression and bigtiff as `write_image` documents them.
    """
    height, width, nchan = samples.shape
    options, separate, bigtiff = _page_options((height, width, nchan), samples.dtype, layout=layout,
                                               icc=icc, exif=exif, compression=compression, bigtiff=bigtiff)
    if nchan == 1:
        data = samples[:, :, 0]
    elif separate:
        data = np.moveaxis(samples, -1, 0)
    else:
        data = samples
    with tifffile.TiffWriter(fh, bigtiff=bigtiff, byteorder='<') as tw:
        tw.write(data, **options)
    if exif:
        add_exif_to_tiff(fh, exif, bigtiff)


def write_tiff_bands(fh, shape: tuple[int, int, int], dtype, bands, *, layout: TiffLayout | None,
                     icc: bytes | None, exif: bytes | None, compression, bigtiff: bool | None,
                     scratch_dir=None) -> None:
    """Samples arriving in bands of rows as a one-page TIFF into fh, the same file `write_tiff`
    writes for the whole array.

    `bands` yields (rows, W, S) arrays of `dtype` in raster order, covering `shape` = (H, W, S).
    Tiles are handed to tifffile as each row of tiles completes, compressed strips as each strip
    completes (encoded here with tifffile's own predictor and compressor functions), uncompressed
    strips as they come; so only a row of tiles or one strip is held. Planar (separate) layouts
    store each sample plane whole before the next, so their bands go to a temporary file in
    `scratch_dir` first (removed when done, also on errors); so do strips of codecs with
    options of their own (JPEG, ...), which then go through `write_tiff` whole.
    """
    height, width, nchan = shape
    dtype = np.dtype(dtype)
    options, separate, bigtiff = _page_options(shape, dtype, layout=layout, icc=icc, exif=exif,
                                               compression=compression, bigtiff=bigtiff)
    code, predictor = options['compression'], options['predictor'] or 1
    tile = options.get('tile')
    rows = tile[0] if tile else (options.get('rowsperstrip') or height)
    encodable = tile is not None or code == 1 or code in _STRIP_CODECS
    if separate or not encodable:
        with _RowScratch(shape, dtype, scratch_dir) as scratch:
            for band in bands:
                scratch.append(band)
            if not encodable:   # strips of a codec with options of its own: tifffile, whole
                write_tiff(fh, scratch.rows(0, height), layout=layout, icc=icc, exif=exif,
                           compression=compression, bigtiff=bigtiff)
                return
            data = itertools.chain.from_iterable(
                _segments(_blocks(scratch.plane(p, rows), rows, height), tile, code, predictor)
                for p in range(nchan))
            _write_iterator(fh, data, (nchan, height, width), dtype, options, exif, bigtiff,
                            rows * width * dtype.itemsize)
        return
    data = _segments(_blocks(bands, rows, height), tile, code, predictor)
    _write_iterator(fh, data, (height, width) if nchan == 1 else shape, dtype, options, exif, bigtiff,
                    rows * width * nchan * dtype.itemsize)


def _segments(blocks, tile, code, predictor):
    """What tifffile's writer takes from an iterator, from blocks of rows (a row of tiles or one
    strip each): tiles from left to right (tifffile pads edge tiles), uncompressed row blocks as
    they are, compressed strips as bytes encoded with tifffile's own predictor and compressor."""
    if tile is not None:
        for block in blocks:
            for x in range(0, block.shape[1], tile[1]):
                part = block[:, x:x + tile[1]]
                yield part[:, :, 0] if part.shape[2] == 1 else part
        return
    if code == 1:
        for block in blocks:
            yield block[:, :, 0] if block.shape[2] == 1 else block
        return
    compress = tifffile.TIFF.COMPRESSORS[code]
    predict = tifffile.TIFF.PREDICTORS[predictor] if predictor > 1 else None
    kwargs = {'axis': -2} if code == 32773 else {}
    for block in blocks:
        block = np.ascontiguousarray(block)
        yield compress(predict(block, axis=-2) if predict else block, **kwargs)


# LZW, deflate (both codes), PackBits, LZMA, zstd: strips encodable here with tifffile's functions
_STRIP_CODECS = frozenset({5, 8, 32946, 32773, 34925, 50000})


def _page_options(shape, dtype, *, layout, icc, exif, compression, bigtiff):
    """(tifffile write options, separate planes?, bigtiff) for an (H, W, S) page."""
    height, width, nchan = shape
    colour = 3 if nchan >= 3 else 1
    extra = nchan - colour
    extrasamples = None
    if extra:
        kept = layout.extrasamples if layout is not None else ()
        extrasamples = tuple(kept) if len(kept) == extra else (2,)  # 2 = unassociated alpha
    code, predictor = tiff_compression(layout, compression, dtype)
    if bigtiff is None:
        extra_bytes = len(icc or b'') + len(exif or b'')
        nbytes = height * width * nchan * np.dtype(dtype).itemsize
        bigtiff = (layout is not None and layout.bigtiff) or needs_bigtiff(nbytes + extra_bytes)
    separate = layout is not None and int(layout.planarconfig) == 2 and nchan > 1
    options = dict(
        photometric='rgb' if colour == 3 else 'minisblack',
        planarconfig=None if nchan == 1 else ('separate' if separate else 'contig'),
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
    return options, separate, bool(bigtiff)


def _write_iterator(fh, data, shape, dtype, options, exif, bigtiff, block_bytes):
    # tifffile encodes tiles in a thread pool, taking `buffersize` bytes of them from the iterator
    # at a time (512 MB by default): about one row of tiles keeps the writer streaming
    with tifffile.TiffWriter(fh, bigtiff=bigtiff, byteorder='<') as tw:
        tw.write(data, shape=shape, dtype=dtype, buffersize=max(1 << 20, block_bytes), **options)
    if exif:
        add_exif_to_tiff(fh, exif, bigtiff)


def _blocks(bands, rows: int, height: int):
    """Regroup bands of any height into blocks of `rows` rows (the last one shorter)."""
    pending, held = [], 0
    done = 0
    for band in bands:
        pending.append(band)
        held += band.shape[0]
        while held >= rows or (done + held == height and held):
            block = pending[0] if len(pending) == 1 else np.concatenate(pending)
            take = min(rows, held)
            yield block[:take]
            rest = block[take:]
            pending, held = ([rest] if len(rest) else []), len(rest)
            done += take
    if done != height:
        raise ValueError(f'the bands held {done} rows of {height}')


class _RowScratch:
    """Rows of samples in an unnamed temporary file (gone when closed, or when the process dies)."""

    def __init__(self, shape, dtype, folder):
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        self.row_bytes = shape[1] * shape[2] * self.dtype.itemsize
        self.file = tempfile.TemporaryFile(dir=folder)
        self.written = 0

    def append(self, band):
        self.file.seek(self.written * self.row_bytes)
        self.file.write(np.ascontiguousarray(band, self.dtype).tobytes())
        self.written += band.shape[0]

    def plane(self, index, rows):
        """Bands of `rows` rows of sample plane `index`, (rows, W, 1) each."""
        for y in range(0, self.shape[0], rows):
            yield np.ascontiguousarray(self.rows(y, min(self.shape[0], y + rows))[:, :, index:index + 1])

    def rows(self, y0, y1):
        out = np.empty((y1 - y0,) + self.shape[1:], self.dtype)
        self.file.seek(y0 * self.row_bytes)
        self.file.readinto(memoryview(out).cast('B'))
        return out

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.file.close()


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
