"""EXIF for TIFF files, and the orientation fix-up for PNG/JPEG EXIF.

EXIF is held as bytes in the JPEG APP1 form: ``b'Exif\\0\\0'`` followed by a small TIFF structure
(IFD0 plus the Exif and GPS sub-IFDs). PNG and JPEG carry it as is; for TIFF it is copied from and
into the file's own Exif/GPS IFDs together with a few descriptive IFD0 tags (Make, Model, DateTime,
Artist, Copyright).

Hand-written because no library does the job: tifffile reads Exif IFDs but refuses to write the
Exif/GPS pointer tags, and Pillow's ``Image.Exif`` re-serializes the whole block (moving maker
notes, whose internal offsets then dangle) and cannot add IFDs to a TIFF that tifffile wrote. Values
stay raw bytes throughout, so tags this code does not know copy unchanged.
"""

from __future__ import annotations

import io
import os
import struct

import numpy as np

__all__ = ['EXIF_HEADER', 'orientation_reset', 'read_tiff_exif', 'add_exif_to_tiff']

EXIF_HEADER = b'Exif\x00\x00'
_TAG_ORIENTATION = 274
_TAG_EXIF_IFD = 34665
_TAG_GPS_IFD = 34853
_TAG_INTEROP_IFD = 40965
# Descriptive IFD0 tags copied between TIFF files and EXIF blocks (all ASCII).
_IFD0_TEXT_TAGS = (271, 272, 306, 315, 33432)  # Make, Model, DateTime, Artist, Copyright
# TIFF field type -> bytes per value; rationals swap as two 4-byte halves.
_TIFF_TYPE_SIZE = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4,
                   10: 8, 11: 4, 12: 8, 13: 4, 16: 8, 17: 8, 18: 8}
_TIFF_POINTER_TYPES = (13, 18)


def orientation_reset(exif: bytes) -> tuple[int, bytes]:
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


def read_tiff_exif(fh, page_offset: int, byteorder: str, bigtiff: bool) -> bytes | None:
    """EXIF block built from a TIFF page's Exif/GPS IFDs and IFD0 text tags."""
    try:
        text, subs = _parse_ifd0_metadata(fh, page_offset, byteorder, bigtiff)
    except (ValueError, struct.error) as exc:
        import warnings

        from .errors import ImageWarning
        warnings.warn(ImageWarning(f'its EXIF could not be read and was left out ({exc})'), stacklevel=2)
        return None
    return _build_exif(text, subs, byteorder)


def add_exif_to_tiff(fh, exif: bytes, bigtiff: bool) -> None:
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
# IFDs as raw (code, type, count, value bytes) entries


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
    return EXIF_HEADER + header + _pack_ifd(text + pointers, 8, byteorder, False) + b''.join(blobs)


def _exif_stream(exif: bytes):
    """(file-like over the TIFF part, byte order, bigtiff, first IFD offset) of an EXIF block."""
    body = exif[len(EXIF_HEADER):] if exif.startswith(EXIF_HEADER) else exif
    byteorder = {b'II': '<', b'MM': '>'}.get(body[:2])
    if byteorder is None or len(body) < 8:
        raise ValueError('not an EXIF block')
    (magic,) = struct.unpack(byteorder + 'H', body[2:4])
    if magic == 43:
        (first,) = struct.unpack(byteorder + 'Q', body[8:16])
        return io.BytesIO(body), byteorder, True, first
    (first,) = struct.unpack(byteorder + 'I', body[4:8])
    return io.BytesIO(body), byteorder, False, first
