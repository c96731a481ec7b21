"""Host canvases: a (1, C, H, W) float array the engine fills and reads by regions, in RAM or on disk.

The latent canvas (and, on very large images, the deepest level's canvases) is written tile by tile
and read tile by tile. ``Canvas`` holds it in RAM when the plan says it fits the budget, otherwise
in an unnamed scratch file (``tempfile.TemporaryFile``: it has no name, so it is gone when the
canvas is closed, on an interrupt, and even when the process is killed). A file canvas stores each
row's pixels with their channels together (H, W, C), so a region is read and written as one short
run of bytes per row (``os.preadv``/``os.pwrite`` on the file's descriptor: one system call a
row, where a buffered seek + write flushed at every row): only the region is ever resident, and the file's
pages live in the kernel's page cache, which the kernel may write out and drop under pressure (a
memory map would count every page touched as resident memory of this process).

Regions come back as (1, C, h, w) float32 tensors in the channels-last layout the compressor's
convolutions run fastest in: a view of the RAM canvas, a fresh tensor from a file canvas.
"""
import os
import tempfile

import numpy as np
import torch

__all__ = ["Canvas", "TensorSource", "scratch_folder"]


def scratch_folder(preferred=None):
    """Where scratch files go: ``preferred`` (the output's folder) when given and writable, else
    TMPDIR (``tempfile.gettempdir``)."""
    if preferred is not None and os.path.isdir(preferred) and os.access(preferred, os.W_OK):
        return str(preferred)
    return tempfile.gettempdir()


_POSITIONED = hasattr(os, "preadv") and hasattr(os, "pwrite")   # not on Windows


def _read_exactly(file, buffer, offset):
    """Fill ``buffer`` from the file at ``offset`` (positioned reads; short ones continued)."""
    done = 0
    while done < len(buffer):
        if _POSITIONED:
            n = os.preadv(file.fileno(), [buffer[done:]], offset + done)
        else:
            file.seek(offset + done)
            n = file.readinto(buffer[done:])
        if not n:
            raise OSError(f"scratch file ended at byte {offset + done}")
        done += n


def _write_exactly(file, buffer, offset):
    """Write all of ``buffer`` to the file at ``offset`` (positioned writes; short ones continued)."""
    done = 0
    while done < len(buffer):
        if _POSITIONED:
            done += os.pwrite(file.fileno(), buffer[done:], offset + done)
        else:
            file.seek(offset + done)
            done += file.write(buffer[done:])


class Canvas:
    """A (1, C, H, W) float canvas in RAM (``folder`` None) or in a scratch file in ``folder``."""

    def __init__(self, channels, height, width, *, folder=None, dtype=torch.float32):
        self.channels, self.height, self.width = int(channels), int(height), int(width)
        self.dtype = dtype
        self.itemsize = torch.tensor([], dtype=dtype).element_size()
        self.file = None
        self.tensor = None
        if folder is None:
            self.tensor = torch.empty(1, self.channels, self.height, self.width, dtype=dtype,
                                      memory_format=torch.channels_last)
        else:
            self.file = tempfile.TemporaryFile(dir=folder, prefix=".tilediff-canvas-", buffering=0)
            self.file.truncate(self.nbytes)
            self._np_dtype = torch.empty(0, dtype=dtype).numpy().dtype

    @property
    def shape(self):
        return 1, self.channels, self.height, self.width

    @property
    def nbytes(self):
        return self.channels * self.height * self.width * self.itemsize

    @property
    def on_disk(self):
        return self.file is not None

    @classmethod
    def of(cls, tensor):
        """A RAM canvas holding ``tensor`` (1, C, H, W), without a copy when it is channels-last."""
        canvas = cls.__new__(cls)
        canvas.channels, canvas.height, canvas.width = tensor.shape[1:]
        canvas.dtype, canvas.itemsize, canvas.file = tensor.dtype, tensor.element_size(), None
        canvas.tensor = tensor.contiguous(memory_format=torch.channels_last)
        return canvas

    def read(self, y0, y1, x0=0, x1=None):
        """The region rows y0:y1, columns x0:x1 as a (1, C, h, w) tensor (a view in RAM)."""
        x1 = self.width if x1 is None else x1
        if self.tensor is not None:
            return self.tensor[:, :, y0:y1, x0:x1]
        out = np.empty((y1 - y0, x1 - x0, self.channels), self._np_dtype)
        row_bytes, offset = self.width * self.channels * self.itemsize, x0 * self.channels * self.itemsize
        if x0 == 0 and x1 == self.width:
            _read_exactly(self.file, memoryview(out).cast("B"), y0 * row_bytes)
        else:
            for i, y in enumerate(range(y0, y1)):
                _read_exactly(self.file, memoryview(out[i]).cast("B"), y * row_bytes + offset)
        return torch.from_numpy(out[None]).permute(0, 3, 1, 2)   # channels-last strides, as a RAM view's

    def write(self, y0, x0, values):
        """Store a (1, C, h, w) tensor at rows y0.., columns x0.."""
        _, _, h, w = values.shape
        if self.tensor is not None:
            self.tensor[:, :, y0:y0 + h, x0:x0 + w] = values
            return
        rows = values[0].permute(1, 2, 0).to(device="cpu", dtype=self.dtype).contiguous().numpy()
        row_bytes, offset = self.width * self.channels * self.itemsize, x0 * self.channels * self.itemsize
        if x0 == 0 and w == self.width:
            _write_exactly(self.file, memoryview(rows).cast("B"), y0 * row_bytes)
            return
        for i in range(h):
            _write_exactly(self.file, memoryview(rows[i]).cast("B"), (y0 + i) * row_bytes + offset)

    def whole(self):
        """The whole canvas as one tensor (the RAM tensor itself; read from a file canvas)."""
        return self.read(0, self.height)

    def close(self):
        """Let go of the storage (the scratch file is removed)."""
        self.tensor = None
        if self.file is not None:
            self.file.close()
            self.file = None


class TensorSource:
    """A (1, C, H, W) host tensor as a region source (the engine's whole-tensor entry points)."""

    def __init__(self, x):
        self.x = x
        self.channels, self.height, self.width = x.shape[1:]

    def region(self, y0, y1, x0, x1):
        return self.x[0, :, y0:y1, x0:x1].float()
