"""One atomic write for every file tilediff writes (images, model files, summaries, checkpoints).

A file is written under a hidden temporary name in its own folder, flushed to disk, given the
permissions a plain ``open(path, 'w')`` would have given it, and renamed over ``path``: a crash, a
full disk or Ctrl-C never leaves a partial file and never harms an existing one. Temporary names
are ``.NAME.tilediff-XXXXXXXX.tmp`` (``TEMP_PREFIX``/``TEMP_SUFFIX``), so that they are recognisable
as ours.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

__all__ = ["replacing", "atomic_write", "new_file_mode", "TEMP_MARK", "TEMP_SUFFIX"]

TEMP_MARK = ".tilediff-"     # between the file name and the random part of a temporary name
TEMP_SUFFIX = ".tmp"


def new_file_mode(path: Path) -> int:
    """Permissions for the output: the replaced file's, else 0o666 minus the umask.

    mkstemp creates files readable by the owner only; a rename would keep that. The umask is read
    from /proc (Linux) because os.umask can only be queried by changing it, which would race with
    other threads.
    """
    try:
        return Path(path).stat().st_mode & 0o7777
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


@contextlib.contextmanager
def replacing(path):
    """Yield a temporary path beside ``path``; on a normal exit it is synced and renamed over
    ``path``, on any exception (KeyboardInterrupt included) it is removed and the exception goes on.

    >>> with replacing("model.safetensors") as tmp:
    ...     save_file(tensors, tmp)
    """
    path = Path(path)
    mode = new_file_mode(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}{TEMP_MARK}', suffix=TEMP_SUFFIX)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, 'rb+') as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _sync_folder(path.parent)


def atomic_write(path, write) -> Path:
    """Run ``write(fh)`` on a binary file object over a temporary file beside ``path``, then rename
    it over ``path`` (see ``replacing``). Returns ``path``."""
    with replacing(path) as tmp:
        with open(tmp, 'r+b') as fh:
            write(fh)
            fh.flush()
    return Path(path)


def _sync_folder(folder: Path) -> None:
    """Make a rename durable; not every system allows fsync on a folder."""
    try:
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
