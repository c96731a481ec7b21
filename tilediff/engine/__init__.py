"""The engine: plan, then encode → sample → decode one image under a memory budget.

Read in this order: ``stages`` (restore_bands: a region source in, bands of rows out; the four
stages), ``plan`` (the plan, the memory model, where canvases live), ``sampling`` (the
reverse-process runs), ``noise_net`` (ε over the whole canvas or tiles, CUDA-graphed),
``tiled_compressor`` (the exact tiled encode/decode, tile by tile from the source to the bands),
``canvas`` (host canvases in RAM or scratch files), ``bands`` (a band function with a halo in
front of the writer), ``rng`` (position-keyed random numbers), ``cuda_graphs``, ``oom``
(out-of-memory retry), ``host_memory`` (the host allocator).

The public names are imported on first use, so that ``tilediff.engine.host_memory`` can be imported
(and the host allocator tuned) before torch is.
"""
from .._lazy import lazy_attributes

_PUBLIC = {
    "restore_bands": "tilediff.engine.stages",
    "restore_tensor": "tilediff.engine.stages",
    "map_bands": "tilediff.engine.bands",
    "MemoryBudgetError": "tilediff.engine.plan",
    "DTYPES": "tilediff.engine.plan",
    "MODES": "tilediff.engine.plan",
    "Plan": "tilediff.engine.plan",
    "make_plan": "tilediff.engine.plan",
    "default_budget": "tilediff.engine.plan",
    "available_memory": "tilediff.engine.plan",
    "ORIENTATIONS": "tilediff.engine.sampling",
    "schedule_for": "tilediff.engine.sampling",
    "whole_noise_fn": "tilediff.engine.noise_net",
    "tiled_noise_fn": "tilediff.engine.noise_net",
}
__all__ = sorted(_PUBLIC)


__getattr__ = lazy_attributes(__name__, _PUBLIC)
