"""tilediff: tiled large-image inference for Refusion (latent IR-SDE image restoration).

Importing the package loads nothing but this file and changes no process state: the public names
below are imported on first use (PEP 562 module ``__getattr__``), and the host allocator is tuned
when a restoration first runs (``tilediff.engine.host_memory``).
"""
from ._version import __version__

_PUBLIC = {
    "Restorer": "tilediff.restorer",
    "restore_folder": "tilediff.batch",
    "RestoreOptions": "tilediff.options",
}

__all__ = ["Restorer", "restore_folder", "RestoreOptions", "__version__"]


def __getattr__(name):
    if name in _PUBLIC:
        import importlib
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'tilediff' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
