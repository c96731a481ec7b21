"""Host allocator settings that keep the resident set close to the live data.

glibc's malloc serves blocks below its mmap threshold from the heap and keeps freed heap memory
for reuse; the threshold rises by itself (up to 32 MB) each time a large block is freed. The tiled
engine frees and allocates tens of megabytes per tile, so by default the resident set climbs to
the live data plus a fragmented heap: at 2000×3000 with the official compressor the tiled run
peaked at 1.62–1.69 GB against 1.21 GB with every large block mmapped (and so returned at free).

Forcing mmap alone costs a page fault per 4 KiB of every allocation (the same run took 1.5× as
long). With transparent huge pages for PyTorch's large blocks (``THP_MEM_ALLOC_ENABLE``) a fault
maps 2 MiB and the cost drops to about +13 %. Torch reads that switch once, early: set after torch
was imported and had made even a 10-element tensor, it had no effect (no AnonHugePages for a 40 MB
tensor, tested on torch 2.13).

``configure()`` fixes malloc's mmap threshold and asks torch for huge pages. The CLI and the
benchmark worker call it before torch loads; a program of yours gets it at its first restoration
(the threshold then, huge pages only if it set ``THP_MEM_ALLOC_ENABLE=1`` or called ``configure()``
before importing torch). ``TILEDIFF_HOST_ALLOCATOR=default`` leaves both alone. A no-op where glibc
is not the C library.
"""
import contextlib
import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD = -1             # glibc's mallopt parameter numbers
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 2 << 20           # blocks from 2 MiB on are mmapped (torch's huge-page size too)
REUSE_MMAP_THRESHOLD = 32 << 20    # heap reuse: blocks up to glibc's largest threshold from the heap
REUSE_TRIM_THRESHOLD = 1 << 30     # ... and freed heap memory kept for the next allocation
TRIM_THRESHOLD = 128 << 10         # glibc's default trim threshold

_libc = None
_configured = None


def _glibc():
    global _libc
    if _libc is None and sys.platform.startswith("linux"):
        try:
            lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            lib.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
            lib.malloc_trim.argtypes = [ctypes.c_size_t]
            _libc = lib
        except (OSError, AttributeError):
            _libc = False
    return _libc or None


def configure():
    """Apply the settings above once per process; returns a dict saying what was set."""
    global _configured
    if _configured is not None:
        return _configured
    _configured = {"mmap_threshold": None, "torch_huge_pages": False}
    if os.environ.get("TILEDIFF_HOST_ALLOCATOR", "tuned") == "default":
        return _configured
    libc = _glibc()
    if libc is not None and libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1:
        _configured["mmap_threshold"] = MMAP_THRESHOLD
    if "THP_MEM_ALLOC_ENABLE" not in os.environ:
        os.environ["THP_MEM_ALLOC_ENABLE"] = "1"
    _configured["torch_huge_pages"] = os.environ["THP_MEM_ALLOC_ENABLE"] not in ("", "0")
    return _configured


@contextlib.contextmanager
def heap_reuse(largest=REUSE_MMAP_THRESHOLD):
    """Serve blocks up to ``largest`` bytes from the heap and keep freed ones for reuse while
    inside (the tuned setting restored, and free heap memory returned, on leaving).

    For a stage that allocates the same few large tensors over and over (the noise network's
    forward at every step), a fresh mmap per block costs its page faults at every allocation;
    the heap hands back the block just freed. The price is a heap fragmented by blocks of many
    sizes, so a stage whose largest tensors vary can cap what the heap serves (``largest``). A
    no-op when the allocator is not tuned."""
    libc = _glibc()
    tuned = _configured is not None and _configured.get("mmap_threshold")
    if libc is None or not tuned:
        yield
        return
    libc.mallopt(M_MMAP_THRESHOLD, int(largest))
    libc.mallopt(M_TRIM_THRESHOLD, REUSE_TRIM_THRESHOLD)
    try:
        yield
    finally:
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
        libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
        libc.malloc_trim(0)


def release_free_memory():
    """Return free heap memory to the OS (``malloc_trim(0)``); True when glibc released some."""
    libc = _glibc()
    return bool(libc.malloc_trim(0)) if libc is not None else False
