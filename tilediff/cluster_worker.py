"""The Ray actor of ``tilediff.cluster``: one model, many files, read and written by the worker itself.

A ``FileWorker`` builds its ``Restorer`` once and restores the jobs it is handed one at a time with
``batch.restore_job``, so outputs are named, written (atomically) and reported exactly as in the
single-process batch. Only paths and small summary entries travel between the driver and the
worker; the pixels stay in the worker.

A job's outcome comes back as ``(kind, entry)``: ``("succeeded", entry)`` or ``("failed", entry)``
with the one-line error (a bad file is not a worker failure), or ``("cancelled", entry)`` when the
driver cancelled the call (``ray.cancel``): the worker notices at the engine's next progress report,
stops, and ``restore_job`` / ``io.atomic`` remove whatever it had begun to write.

This module imports Ray only inside the worker; importing it needs neither Ray nor torch.

Test hooks (read by the worker; the driver passes them on through the actors' runtime_env):
``TILEDIFF_TEST_CRASH_ONCE`` and ``TILEDIFF_TEST_CRASH_ALWAYS`` are comma-separated input file names.
Restoring such a file kills the worker process (``os._exit``) in the middle of the file, at the
engine's first progress report: every time for ALWAYS, the first time only for ONCE (a hidden marker
``.NAME.crashed-once`` beside the input remembers it across processes).
"""
import os
import time
from pathlib import Path

__all__ = ["FileWorker", "TEST_HOOKS"]

TEST_HOOKS = ("TILEDIFF_TEST_CRASH_ONCE", "TILEDIFF_TEST_CRASH_ALWAYS")


class Cancelled(BaseException):
    """Raised inside a worker when the driver cancelled the call (a BaseException, like Ctrl-C, so
    that no ``except Exception`` on the way turns a cancel into a failed file)."""


def _names(variable):
    return {name.strip() for name in os.environ.get(variable, "").split(",") if name.strip()}


def _crash_hook(job):
    """The test hook's verdict for ``job``: True when the worker must die while restoring it."""
    names = {Path(p).name for p in job.inputs}
    if names & _names("TILEDIFF_TEST_CRASH_ALWAYS"):
        return True
    for src in job.inputs:
        if Path(src).name in _names("TILEDIFF_TEST_CRASH_ONCE"):
            marker = Path(src).with_name(f".{Path(src).name}.crashed-once")
            if not marker.exists():
                marker.touch()
                return True
    return False


class FileWorker:
    """One model on one device; ``restore(job)`` reads, restores and writes one job.

    ``options`` is a RestoreOptions without a progress callback (callbacks do not travel); the
    worker resolves it against its model once. ``threads`` sets torch's intra-op threads (CPU
    workers); ``memory_fraction`` (a share of one GPU, below 1 when several workers share it) sets
    the memory budget to that share of the device when the options leave it open, so that workers
    sharing a GPU do not each plan for all of its free memory.
    """

    def __init__(self, task, weights, device, precision, options, writer, threads=None, memory_fraction=None):
        self.error = None
        self.started = time.perf_counter()
        try:
            import torch
            from .restorer import Restorer
            if threads:
                torch.set_num_threads(int(threads))
            self.restorer = Restorer(task, weights=weights, device=device, precision=precision)
            if (memory_fraction is not None and memory_fraction < 1 and options.memory_budget is None
                    and self.restorer.device.type == "cuda"):
                total = torch.cuda.get_device_properties(self.restorer.device).total_memory
                options = options.replace(memory_budget=max(64 << 20, int(total * memory_fraction * 0.9)))
            self.options = self.restorer.options(options)
            self.writer = dict(writer)
        except Exception as exc:  # reported by ready(): the driver stops the batch with this line
            from .batch import error_line
            self.error = error_line(exc, weights or task)

    def ready(self):
        """Who this worker is (or why it could not load the model): a small dict for the driver."""
        import ray
        info = {"pid": os.getpid(), "node": ray.util.get_node_ip_address(),
                "load_seconds": round(time.perf_counter() - self.started, 3)}
        if self.error is not None:
            return dict(info, error=self.error)
        import torch
        return dict(info, device=str(self.restorer.device), weights=str(self.restorer.weights),
                    threads=torch.get_num_threads(), options=self.options.as_json())

    def ping(self):
        """Returns once every call queued before it has finished (the driver's way to wait for a
        cancelled call to have cleaned up)."""
        return os.getpid()

    def restore(self, job, attempt=1):
        """Restore one job; returns (kind, entry) with kind 'succeeded', 'failed' or 'cancelled'."""
        import ray
        from .batch import _entry, error_line, restore_job
        from .cli.common import peak_memory_text

        # an older Ray without the flag: no graceful stop, the driver kills the actor after its grace time
        is_canceled = getattr(ray.get_runtime_context(), "is_canceled", lambda: False)
        crash = _crash_hook(job)

        def progress(stage, done, total):
            if crash:
                os._exit(1)          # the test hook: die in the middle of the file
            if is_canceled():
                raise Cancelled

        options = self.options.replace(progress=progress)
        try:
            entry = restore_job(self.restorer, job, options, **self.writer)
        except Cancelled:
            return "cancelled", _entry(job)
        except Exception as exc:  # one bad file must not stop the batch, nor kill the worker
            return "failed", _entry(job, error=error_line(exc, job.label), **self._where(attempt))
        entry.update(self._where(attempt), peak_memory=peak_memory_text(self.restorer.device))
        return "succeeded", entry

    @staticmethod
    def _where(attempt):
        import ray
        where = {"worker": f"{ray.util.get_node_ip_address()}:{os.getpid()}"}
        if attempt > 1:
            where["attempts"] = attempt
        return where
