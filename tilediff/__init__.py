"""tilediff: tiled large-image inference for Refusion (latent IR-SDE image restoration).

Importing the package loads nothing but this file and changes no process state: the public names
below are imported on first use (PEP 562 module ``__getattr__``), and the host allocator is tuned
when a restoration first runs (``tilediff.engine.host_memory``).
"""
from ._lazy import lazy_attributes
from ._version import __version__

_PUBLIC = {
    "Restorer": "tilediff.restorer",
    "restore_folder": "tilediff.batch",
    "RestoreOptions": "tilediff.options",
}

__all__ = ["Restorer", "restore_folder", "RestoreOptions", "__version__"]


__getattr__ = lazy_attributes(__name__, _PUBLIC)


def __dir__():
    return sorted(set(globals()) | set(__all__))
