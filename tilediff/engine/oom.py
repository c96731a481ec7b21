"""CUDA out-of-memory errors: how to recognise one, and the one way the engine recovers from it.

The planner's memory model is an estimate; when a stage still runs out of device memory, the
engine makes that stage's work smaller (halves its tile) and does it again. The tiled compressor
(per pass over tiles), the sampler (per noise-network evaluation) and the CUDA-graph capture all
go through ``is_out_of_memory``; the first two retry with ``retry_smaller``.
"""
import torch

__all__ = ["is_out_of_memory", "retry_smaller"]


def is_out_of_memory(err):
    """A CUDA out-of-memory error (the typed one, or a RuntimeError saying so)."""
    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err).lower()


def retry_smaller(run, shrink):
    """``run()`` until it returns without a CUDA out-of-memory error.

    After each such error ``shrink()`` lets go of what the failed try held and makes the work
    smaller; it returns False when the work cannot get smaller, and the error is raised then. The
    CUDA cache is emptied before the next try. ``run`` must give the same result however often it
    is repeated (each pass writes fresh outputs), so a retry changes only the memory it needs.
    """
    while True:
        try:
            return run()
        except RuntimeError as err:   # torch.cuda.OutOfMemoryError is a RuntimeError
            if not is_out_of_memory(err) or not shrink():
                raise
            torch.cuda.empty_cache()
