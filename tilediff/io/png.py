"""PNG: Pillow for 8-bit and 16-bit grey, imagecodecs (libpng) for 16-bit colour.

Pillow 13 reads 16-bit colour PNG (RGB, RGBA, grey+alpha) as 8 bits per sample (it keeps only the
high byte) and cannot write them; imagecodecs' libpng codec keeps all 16 bits but neither reads nor
writes the iCCP and eXIf chunks, so for those files the chunks are taken out before decoding and
put in after encoding here. 16-bit grey goes through Pillow (mode 'I;16'), which keeps all 16 bits.

Every PNG is first walked chunk by chunk (`check_png`, before any decoder sees it): each chunk's CRC
is checked (Pillow skips the CRCs of IDAT), an animated PNG is refused (its frames would be lost),
the iCCP and eXIf chunks are held to `errors.MAX_ICC_BYTES` / `MAX_EXIF_BYTES`, and the pixel data
its header declares must fit in what its IDAT chunks can inflate to (`MAX_EXPANSION['zlib']`, 1032
bytes per compressed byte): a small file declaring a huge image is refused before anything is
allocated for it. Pillow's own limit (`PIL.Image.MAX_IMAGE_PIXELS`) applies to both decoders.
"""

from __future__ import annotations

import dataclasses
import struct
import zlib
from pathlib import Path

import imagecodecs
import numpy as np

from .errors import MAX_EXIF_BYTES, MAX_EXPANSION, MAX_ICC_BYTES, Unsupported, c_stderr_as_warning
from .exif import EXIF_HEADER
from .pillow import bomb_check, read_with_pillow, save_with_pillow
from .samples import ImageData, upright

__all__ = ['PNG_SIGNATURE', 'PngHeader', 'check_png', 'read_png', 'read_png16_samples', 'write_png']

PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
_IHDR_END = len(PNG_SIGNATURE) + 8 + 13 + 4  # IHDR is always the first chunk, 13 bytes of data
_ICC_NAME = b'ICC profile'


@dataclasses.dataclass(frozen=True)
class PngHeader:
    """What `check_png` found: the IHDR fields and the compressed pixel bytes."""

    width: int
    height: int
    bit_depth: int
    colour_type: int
    interlace: int
    idat_bytes: int


_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
_PIECE = 1 << 20


def check_png(path: Path, size: int) -> PngHeader:
    """Walk the chunks of a PNG file (`size` bytes) without decoding it; raise ValueError for a
    corrupt or truncated file and Unsupported for one tilediff does not restore (see the module)."""
    with open(path, 'rb') as fh:
        if fh.read(8) != PNG_SIGNATURE:
            raise ValueError('not a PNG signature')
        pos, ihdr, idat, frames = 8, None, 0, None
        while True:
            head = fh.read(8)
            if len(head) < 8:
                raise ValueError('file is truncated (no IEND chunk)')
            length, kind = struct.unpack('>I4s', head)
            name = kind.decode('latin-1')
            if length > 0x7FFFFFFF:
                raise ValueError(f'chunk {name!r} has an impossible length {length}')
            if pos + 12 + length > size:
                raise ValueError(f'file is truncated (chunk {name} runs past the end)')
            if ihdr is None and kind != b'IHDR':
                raise ValueError('missing IHDR chunk')
            if kind == b'iCCP' and length > MAX_ICC_BYTES:
                raise Unsupported(f'ICC profile chunk of {length} bytes (the limit is {MAX_ICC_BYTES >> 20} MiB)')
            if kind == b'eXIf' and length > MAX_EXIF_BYTES:
                raise Unsupported(f'EXIF chunk of {length} bytes (the limit is {MAX_EXIF_BYTES >> 20} MiB)')
            keep = kind in (b'IHDR', b'acTL', b'iCCP')
            crc, kept, left = zlib.crc32(kind), [], length
            while left:
                piece = fh.read(min(left, _PIECE))
                if not piece:
                    raise ValueError(f'file is truncated (chunk {name} runs past the end)')
                crc = zlib.crc32(piece, crc)
                if keep:
                    kept.append(piece)
                left -= len(piece)
            stored = fh.read(4)
            if len(stored) < 4 or struct.unpack('>I', stored)[0] != crc:
                raise ValueError(f'CRC error in chunk {name} (the file is damaged)')
            data = b''.join(kept)
            if kind == b'IHDR':
                if ihdr is not None or length != 13:
                    raise ValueError('bad IHDR chunk')
                ihdr = struct.unpack('>IIBBBBB', data)
            elif kind == b'acTL' and length >= 4:
                frames = struct.unpack('>I', data[:4])[0]
            elif kind == b'iCCP':
                _icc_size_check(data)
            elif kind == b'IDAT':
                idat += length
            elif kind == b'IEND':
                break
            pos += 12 + length
    width, height, depth, colour, _, _, interlace = ihdr
    if frames is not None and frames > 1:
        raise Unsupported(f'animated PNG ({frames} frames): tilediff restores single images; '
                          'save the frames as separate files')
    if width == 0 or height == 0:
        raise ValueError('image has zero size')
    if colour not in _CHANNELS or interlace > 1:
        raise ValueError(f'bad IHDR (colour type {colour}, interlace {interlace})')
    need = _raw_size(width, height, depth * _CHANNELS[colour], interlace)
    limit = MAX_EXPANSION['zlib'] * idat + 1024
    if need > limit:
        raise ValueError(f'a {width}x{height} image needs {need} bytes of pixel data but its '
                         f'{idat} compressed bytes inflate to at most {limit}')
    bomb_check(width, height)
    return PngHeader(width, height, depth, colour, interlace, idat)


def _raw_size(width: int, height: int, bits: int, interlace: int) -> int:
    """Bytes of filtered scanlines (a filter byte per row) the image's pixels inflate to."""
    def rows(w, h):
        return h * (1 + (w * bits + 7) // 8) if w and h else 0
    if not interlace:
        return rows(width, height)
    return sum(rows(-(-(width - x0) // dx), -(-(height - y0) // dy)) for x0, y0, dx, dy in _ADAM7)


def _icc_size_check(payload: bytes) -> None:
    """Unsupported if the iCCP profile inflates past MAX_ICC_BYTES (inflated in bounded pieces)."""
    try:
        stream = payload[payload.index(b'\x00') + 2:]
        inflated = zlib.decompressobj().decompress(stream, MAX_ICC_BYTES + 1)
    except (ValueError, zlib.error) as exc:
        raise ValueError(f'bad iCCP chunk ({exc})') from None
    if len(inflated) > MAX_ICC_BYTES:
        raise Unsupported(f'ICC profile larger than {MAX_ICC_BYTES >> 20} MiB')


def read_png(path: Path, head: bytes) -> ImageData:
    """A PNG file (`head`: its first 16 bytes), turned upright, with ICC and EXIF."""
    if _is_16bit_colour(head, path):
        return _read_png16(path)
    return read_with_pillow(path, 'png')


def write_png(fh, samples: np.ndarray, *, icc: bytes | None, exif: bytes | None, level: int) -> None:
    """Samples (H, W, S), uint8 or uint16, as PNG into fh with zlib level `level`."""
    if samples.dtype == np.uint16 and samples.shape[2] > 1:
        _write_png16(fh, samples, icc=icc, exif=exif, level=level)
    else:
        save_with_pillow(fh, samples, 'png', icc=icc, exif=exif, compress_level=level)


def _is_16bit_colour(head: bytes, path: Path) -> bool:
    """True for 16-bit RGB, RGBA or grey+alpha PNG, which Pillow reduces to 8 bits."""
    if len(head) < 16 or head[12:16] != b'IHDR':
        return False
    with open(path, 'rb') as fh:
        ihdr = fh.read(29)
    return len(ihdr) == 29 and ihdr[24] == 16 and ihdr[25] in (2, 4, 6)


def _read_png16(path: Path) -> ImageData:
    """16-bit colour PNG, turned upright, with ICC and EXIF (`read_png16_samples`)."""
    samples, icc, exif = read_png16_samples(path)
    samples, exif = upright(samples, exif)
    return ImageData.from_samples(samples, format='png', icc=icc, exif=exif, path=path)


def read_png16_samples(path: Path) -> tuple[np.ndarray, bytes | None, bytes | None]:
    """(samples as stored, ICC, EXIF) of a 16-bit colour PNG: pixels by imagecodecs, iCCP and eXIf
    by `_chunks`; what libpng prints on stderr becomes one ImageWarning (`c_stderr_as_warning`).

    Only IHDR, IDAT and IEND are handed to libpng, so it applies nothing the Pillow path does not
    (a tRNS colour key stays a plain colour, as Pillow leaves it for 8-bit RGB).
    """
    data = memoryview(path.read_bytes())
    chunks = list(_chunks(data))
    kind, start, end = chunks[0] if chunks else (None, 0, 0)
    if kind != b'IHDR' or end - start != 25:
        raise ValueError('missing IHDR chunk')
    width, height, _, _, _, _, interlace = struct.unpack('>IIBBBBB', data[start + 8:end - 4])
    if interlace:  # imagecodecs' png_decode does not de-interlace
        raise Unsupported('interlaced (Adam7) 16-bit colour PNG; save it non-interlaced')
    if width == 0 or height == 0:
        raise ValueError('image has zero size')
    icc = exif = None
    pixels = [PNG_SIGNATURE, data[start:end]]
    for kind, start, end in chunks[1:]:
        if kind in (b'IDAT', b'IEND'):
            pixels.append(data[start:end])
        elif kind == b'iCCP':  # name, NUL, compression method, zlib stream (size checked by check_png)
            payload = bytes(data[start + 8:end - 4])
            icc = zlib.decompressobj().decompress(payload[payload.index(b'\x00') + 2:], MAX_ICC_BYTES + 1)
        elif kind == b'eXIf':
            exif = EXIF_HEADER + bytes(data[start + 8:end - 4])
    stream = b''.join(pixels)
    del data, chunks, pixels
    with c_stderr_as_warning(path, 'libpng'):
        samples = imagecodecs.png_decode(stream)
    if samples.shape[:2] != (height, width) or samples.dtype != np.uint16:
        raise ValueError('image data does not match its header')
    return samples, icc, exif


def _write_png16(fh, samples: np.ndarray, *, icc: bytes | None, exif: bytes | None,
                 level: int) -> None:
    """16-bit grey+alpha, RGB or RGBA PNG: libpng's encoding with iCCP and eXIf added after IHDR."""
    encoded = memoryview(imagecodecs.png_encode(samples, level=level))
    if bytes(encoded[12:16]) != b'IHDR':
        raise ValueError('PNG encoder wrote no IHDR chunk first')
    fh.write(encoded[:_IHDR_END])
    if icc:
        fh.write(_chunk(b'iCCP', _ICC_NAME + b'\x00\x00' + zlib.compress(icc)))
    if exif:
        fh.write(_chunk(b'eXIf', exif[len(EXIF_HEADER):] if exif.startswith(EXIF_HEADER) else exif))
    fh.write(encoded[_IHDR_END:])


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack('>I', len(payload)) + kind + payload + struct.pack('>I', zlib.crc32(kind + payload))


def _chunks(data: memoryview):
    """Yield (type, start, end) of each chunk up to IEND, checking lengths and CRCs.

    Hand-written: no library exposes a PNG's chunks (Pillow reads iCCP and eXIf only in its own
    decoder, which loses 16-bit colour).
    """
    pos = len(PNG_SIGNATURE)
    while pos + 8 <= len(data):
        length, kind = struct.unpack('>I4s', data[pos:pos + 8])
        end = pos + 12 + length
        if end > len(data):
            raise ValueError(f'file is truncated (chunk {kind.decode("latin-1")} runs past the end)')
        (crc,) = struct.unpack('>I', data[end - 4:end])
        if zlib.crc32(data[pos + 4:end - 4]) != crc:
            raise ValueError(f'CRC error in chunk {kind.decode("latin-1")}')
        yield kind, pos, end
        if kind == b'IEND':
            return
        pos = end
    raise ValueError('file is truncated (no IEND chunk)')
