"""The two errors io raises, each printed as one line that names the file (errors are listed per
file in a folder run), and the helpers that turn a library's exception into that one line."""

from __future__ import annotations

import errno
import os
from pathlib import Path

__all__ = ['ImageReadError', 'ImageWriteError', 'Unsupported', 'one_line', 'describe']


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


class Unsupported(Exception):
    """A valid file tilediff does not handle; the message is shown to the user."""


def describe(exc: BaseException) -> str:
    """A short, one-line description of an exception from a library or the OS."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return 'disk full (no space left on device)'
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return one_line(exc) if str(exc) else type(exc).__name__
