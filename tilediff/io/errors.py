"""The two errors io raises, each printed as one line that names the file (errors are listed per
file in a folder run), the helpers that turn a library's exception into that one line, the warning
io gives about the data (`ImageWarning`), and the limits on what an input may declare.

Warnings: what a reader or writer changes in the data without failing (float samples clipped to
[0, 1], a damaged tag dropped, a codec replaced) is an `ImageWarning` issued with `warnings.warn`,
its message naming the file. `collecting_warnings` gathers them, together with what tifffile logs
and what C libraries print (`c_stderr_as_warning`), so that the command line prints each as one
line and a folder batch lists them in its summary.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import sys
import tempfile
import warnings
from pathlib import Path

__all__ = ['ImageReadError', 'ImageWriteError', 'ImageWarning', 'Unsupported', 'one_line', 'describe',
           'is_disk_full', 'file_kind', 'collecting_warnings', 'c_stderr_as_warning',
           'MAX_ICC_BYTES', 'MAX_EXIF_BYTES', 'MAX_EXPANSION']

MAX_ICC_BYTES = 16 << 20
"""An ICC profile larger than this (16 MiB; real ones are a few KiB to a few MiB) is refused."""

MAX_EXIF_BYTES = 1 << 20
"""An EXIF block larger than this (1 MiB; JPEG holds at most 64 KiB) is refused."""

MAX_EXPANSION = {'zlib': 1032, 'lzw': 4096, 'packbits': 64}
"""The most bytes one compressed byte can decode to, per codec: deflate's maximum ratio is 1032:1,
TIFF LZW's (12-bit codes, strings up to 4096 bytes) below 4096:1, PackBits' 64:1 (128 bytes from
2). Image data declaring more than this (plus 1 KiB) is corrupt and is refused before anything is
allocated for it. Codecs without such a bound (zstd, JPEG, WebP, ...) are not checked this way."""


def one_line(text: object) -> str:
    """Collapse a message to a single line."""
    return ' '.join(str(text).split()) or 'unknown error'


class ImageReadError(ValueError):
    """An input file that cannot be read: missing, empty, corrupt or unsupported."""

    def __init__(self, path: os.PathLike | str, problem: str):
        self.path = Path(path)
        self.problem = one_line(problem)
        super().__init__(f'{os.fspath(path)}: {self.problem}')


class ImageWriteError(OSError):
    """An output file that could not be written; nothing was left behind."""

    def __init__(self, path: os.PathLike | str, problem: str):
        self.path = Path(path)
        self.problem = one_line(problem)
        super().__init__(f'{os.fspath(path)}: {self.problem}')

    def __str__(self) -> str:
        # OSError's own __str__ would print '[Errno None] ...'.
        return f'{os.fspath(self.path)}: {self.problem}'


class ImageWarning(UserWarning):
    """Something a reader or writer changed in the data without failing; the message names the file."""


class Unsupported(Exception):
    """A valid file tilediff does not handle; the message is shown to the user."""


def describe(exc: BaseException) -> str:
    """A short, one-line description of an exception from a library or the OS."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return 'disk full (no space left on device)'
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return one_line(exc) if str(exc) else type(exc).__name__


def is_disk_full(exc: BaseException | None) -> bool:
    """True if ``exc`` or an exception it was raised from is 'no space left on device' (or a quota)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


_KINDS = ((stat.S_ISDIR, 'a folder'), (stat.S_ISFIFO, 'a FIFO'), (stat.S_ISCHR, 'a character device'),
          (stat.S_ISBLK, 'a block device'), (stat.S_ISSOCK, 'a socket'), (stat.S_ISLNK, 'a symbolic link'))


def file_kind(mode: int) -> str | None:
    """None for a regular file, else what the node is ('a FIFO', 'a character device', ...)."""
    if stat.S_ISREG(mode):
        return None
    for test, name in _KINDS:
        if test(mode):
            return name
    return 'not a regular file'


_LOGGERS = ('tifffile', 'imagecodecs')   # libraries that log about the files they read


class _LogToWarning(logging.Handler):
    """tifffile's and imagecodecs' log records (a damaged tag skipped, libpng's 'PNG warning: ...')
    as one-line ImageWarnings."""

    def __init__(self, source):
        super().__init__(logging.WARNING)
        self.source = source

    def emit(self, record):
        try:
            text = one_line(record.getMessage())
        except Exception:  # a record that cannot be formatted is not worth a failure
            text = 'unreadable log record'
        prefix = f'{os.fspath(self.source)}: ' if self.source is not None else ''
        if record.name.startswith('imagecodecs'):
            if text.startswith('PNG warning: '):
                text = 'libpng: ' + text[len('PNG warning: '):]
            warnings.warn(ImageWarning(f'{prefix}{text}'), stacklevel=2)
            return
        what = 'something in the file could not be read and was left out'
        tag = _tag_name(text)
        if tag:
            what = f'tag {tag} is damaged and was left out'
        warnings.warn(ImageWarning(f'{prefix}{what} (tifffile: {text})'), stacklevel=2)


def _tag_name(text: str) -> str | None:
    import re
    m = re.search(r'TiffTag (\d+)', text)
    if m is None:
        return None
    code = int(m.group(1))
    try:
        import tifffile
        name = tifffile.TIFF.TAGS.get(code)
    except Exception:
        name = None
    return f'{code} ({name})' if name else str(code)


@contextlib.contextmanager
def collecting_warnings(source: os.PathLike | str | None = None):
    """Collect the warnings about the data issued inside the block, as one-line texts in the list
    it yields (filled when the block ends; each text once, in order; ``source`` put in front of
    those that do not name a file).

    Collected: `ImageWarning`, Pillow's DecompressionBombWarning, warnings from tifffile, Pillow and
    imagecodecs, and the records tifffile and imagecodecs log (which logging's last-resort handler
    would print, e.g. libpng's 'PNG warning: IDAT: Extra compressed data').
    Other warnings are shown as usual. Not thread-safe (``warnings.catch_warnings`` is process-wide):
    use it in the main thread.
    """
    loggers = [logging.getLogger(name) for name in _LOGGERS]
    handler = _LogToWarning(source)
    found: list[str] = []
    propagate = [logger.propagate for logger in loggers]
    caught = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always', ImageWarning)
            for logger in loggers:
                logger.addHandler(handler)
                logger.propagate = False
            yield found
    finally:
        for logger, before in zip(loggers, propagate):
            logger.removeHandler(handler)
            logger.propagate = before
        prefix = os.fspath(source) if source is not None else None
        for item in caught:
            if not _about_data(item):
                warnings.showwarning(item.message, item.category, item.filename, item.lineno)
                continue
            text = one_line(item.message)
            if prefix is not None and not text.startswith(prefix):
                text = f'{prefix}: {text}'
            if text not in found:
                found.append(text)


def _about_data(item) -> bool:
    if issubclass(item.category, ImageWarning) or item.category.__name__ == 'DecompressionBombWarning':
        return True
    where = (item.filename or '').replace('\\', '/')
    return issubclass(item.category, UserWarning) and any(
        part in where for part in ('/tifffile/', '/PIL/', '/imagecodecs/', '/tilediff/'))


@contextlib.contextmanager
def c_stderr_as_warning(source: os.PathLike | str, library: str):
    """Run the block with file descriptor 2 (stderr) going to a temporary file, and turn what a C
    library printed there (libpng's 'PNG warning: ...') into one ImageWarning naming ``source``.

    Only for short calls that print nothing else (a decode, an encode): every thread's writes to
    fd 2 are redirected while the block runs.
    """
    try:
        sys.stderr.flush()
    except (OSError, ValueError, AttributeError):
        pass
    try:
        saved = os.dup(2)
    except OSError:   # no fd 2 at all
        yield
        return
    capture = tempfile.TemporaryFile()
    failed = True
    try:
        os.dup2(capture.fileno(), 2)
        yield
        failed = False
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        capture.seek(0)
        text = capture.read(4096).decode('utf-8', 'replace')
        capture.close()
        if text.strip() and not failed:
            lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
            more = f' (and {len(lines) - 1} more)' if len(lines) > 1 else ''
            warnings.warn(ImageWarning(f'{os.fspath(source)}: {library}: {lines[0]}{more}'), stacklevel=3)
