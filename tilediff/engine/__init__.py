"""The engine: plan, then encode → sample → decode one image under a memory budget.

The public names are imported on first use, so that ``tilediff.engine.host_memory`` can be imported
(and the host allocator tuned) before torch is.
"""
_PUBLIC = {name: "tilediff.engine.stages" for name in
           ("DTYPES", "MODES", "ORIENTATIONS", "Options", "Plan", "make_plan", "restore_tensor",
            "schedule_for", "whole_noise_fn", "tiled_noise_fn", "default_budget", "available_memory")}


def __getattr__(name):
    if name in _PUBLIC:
        import importlib
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'tilediff.engine' has no attribute {name!r}")
