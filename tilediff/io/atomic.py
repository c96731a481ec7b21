"""One atomic write for every file tilediff writes (images, model files, summaries, checkpoints).

A file is written under a hidden temporary name in its own folder, flushed to disk, given the
permissions a plain ``open(path, 'w')`` would have given it, and renamed over ``path``: a crash, a
full disk or Ctrl-C never leaves a partial file and never harms an existing one. Temporary names
are ``.NAME.tilediff-XXXXXXXX.tmp`` (``TEMP_MARK``/``TEMP_SUFFIX``), so that they are recognisable
as ours; the writer holds an advisory lock (flock) on its temporary while it writes.

- ``check_output`` says, before any work, whether a path may be written: every command and the
  folder batch ask it. An output must be a regular file or not exist (a FIFO, a device, a folder
  or a symbolic link at its place is refused: replacing it would replace the node itself), must not
  be one of the inputs (also through a link), needs ``overwrite`` to replace a file, and its parent
  must be a folder (or a folder to create).
- ``replacing`` refuses to rename over anything but a regular file too, so no writer can do it.
- ``remove_stale_temporaries`` deletes temporaries an earlier run left behind when it was killed
  (SIGKILL, a power cut): ours by name, regular, owned by this user, older than this run and not
  locked by a writer that is still alive.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import re
import stat
import tempfile
from pathlib import Path

from .errors import ImageWriteError, file_kind

__all__ = ["replacing", "atomic_write", "new_file_mode", "check_output", "remove_stale_temporaries",
           "real_path", "TEMP_MARK", "TEMP_SUFFIX"]

TEMP_MARK = ".tilediff-"     # between the file name and the random part of a temporary name
TEMP_SUFFIX = ".tmp"
_TEMP_NAME = re.compile(r"^\..+" + re.escape(TEMP_MARK) + r"[A-Za-z0-9_]{8}" + re.escape(TEMP_SUFFIX) + "$")


def real_path(path) -> Path:
    """``path`` with every symbolic link resolved, as far as it exists; never raises (a link loop
    stays as it is: ``Path.resolve`` raises RuntimeError there)."""
    return Path(os.path.realpath(os.fspath(path)))


def check_output(path, inputs=(), overwrite=False, extensions=None) -> None:
    """Raise ImageWriteError (one line naming ``path``) if ``path`` must not be written:

    - its extension is not one of ``extensions`` (lower-case, with the dot; None: any);
    - it is one of ``inputs`` (compared after resolving links, and by device and inode);
    - it exists and is not a regular file (a FIFO, a character or block device, a socket, a folder,
      a symbolic link): replacing it would replace the node itself;
    - it is a file that exists and ``overwrite`` is false;
    - the nearest existing folder above it is not a folder (so it could not be created).
    """
    path = Path(path)
    if extensions is not None and path.suffix.lower() not in extensions:
        raise ImageWriteError(path, f"unsupported output extension {path.suffix or '(none)'}: "
                                    f"name the output {' '.join(extensions)}")
    target = real_path(path)
    try:
        node = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        node = None
    except OSError as exc:
        raise ImageWriteError(path, f"cannot write here ({exc.strerror or exc})") from None
    for src in inputs:
        if real_path(src) == target or (node is not None and _same_file(src, node)):
            raise ImageWriteError(path, "refusing to overwrite an input")
    if node is not None:
        kind = file_kind(node.st_mode)
        if kind is not None:
            raise ImageWriteError(path, f"is {kind}, not a regular file: tilediff writes only regular files "
                                        "(give another output name)")
        if not overwrite:
            raise ImageWriteError(path, "exists (use --overwrite to replace it)")
        return
    parent = path.parent
    while True:
        try:
            mode = os.stat(parent).st_mode
        except (FileNotFoundError, NotADirectoryError):
            if parent == parent.parent:
                return
            parent = parent.parent
            continue
        except OSError as exc:
            raise ImageWriteError(path, f"cannot write here: {parent}: {exc.strerror or exc}") from None
        if not stat.S_ISDIR(mode):
            raise ImageWriteError(path, f"cannot write here: parent {parent} is not a folder")
        return


def _same_file(src, node) -> bool:
    try:
        st = os.stat(src)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (node.st_dev, node.st_ino)


def remove_stale_temporaries(folder, before: float) -> list[Path]:
    """Delete the temporaries of ours in ``folder`` (not below it) that a killed run left: named
    ``.NAME.tilediff-XXXXXXXX.tmp``, regular files owned by this user, last changed before
    ``before`` (a ``time.time()``, the start of this run) and not locked by a live writer. Returns
    what was removed; a folder that cannot be read is left alone."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    uid = os.getuid() if hasattr(os, "getuid") else None
    for entry in entries:
        if not _TEMP_NAME.match(entry.name):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode) or (uid is not None and st.st_uid != uid) or st.st_mtime >= before:
                continue
            fd = os.open(entry.path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)   # a writer still at work holds it
            os.unlink(entry.path)
            removed.append(Path(entry.path))
        except OSError:
            pass
        finally:
            os.close(fd)
    return removed


def _check_replaceable(path: Path) -> None:
    """OSError unless ``path`` is missing or a regular file (not a link, FIFO, device, folder)."""
    try:
        node = os.lstat(path)
    except FileNotFoundError:
        return
    kind = file_kind(node.st_mode)
    if kind is not None:
        raise OSError(f"is {kind}, not a regular file: not replaced")


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
    _check_replaceable(path)
    mode = new_file_mode(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}{TEMP_MARK}', suffix=TEMP_SUFFIX)
    try:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)   # "in use" for remove_stale_temporaries
        yield tmp
        with open(tmp, 'rb+') as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        _check_replaceable(path)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    finally:
        os.close(fd)
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
