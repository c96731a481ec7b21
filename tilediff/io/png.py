"""PNG: Pillow for 8-bit and 16-bit grey, imagecodecs (libpng) for 16-bit colour.

Pillow 13 reads 16-bit colour PNG (RGB, RGBA, grey+alpha) as 8 bits per sample (it keeps only the
high byte) and cannot write them; imagecodecs' libpng codec keeps all 16 bits but neither reads nor
writes the iCCP and eXIf chunks, so for those files the chunks are taken out before decoding and
put in after encoding here. 16-bit grey goes through Pillow (mode 'I;16'), which keeps all 16 bits.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import imagecodecs
import numpy as np

from .errors import Unsupported
from .exif import EXIF_HEADER
from .pillow import read_with_pillow, save_with_pillow
from .samples import ImageData, upright

__all__ = ['PNG_SIGNATURE', 'read_png', 'write_png']

PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
_IHDR_END = len(PNG_SIGNATURE) + 8 + 13 + 4  # IHDR is always the first chunk, 13 bytes of data
_ICC_NAME = b'ICC profile'


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
    """16-bit colour PNG: pixels by imagecodecs, iCCP and eXIf by `_chunks`.

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
        elif kind == b'iCCP':  # name, NUL, compression method, zlib stream
            payload = bytes(data[start + 8:end - 4])
            icc = zlib.decompress(payload[payload.index(b'\x00') + 2:])
        elif kind == b'eXIf':
            exif = EXIF_HEADER + bytes(data[start + 8:end - 4])
    samples = imagecodecs.png_decode(b''.join(pixels))
    if samples.shape[:2] != (height, width) or samples.dtype != np.uint16:
        raise ValueError('image data does not match its header')
    samples, exif = upright(samples, exif)
    return ImageData.from_samples(samples, format='png', icc=icc, exif=exif, path=path)


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
