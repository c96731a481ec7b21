"""tilediff: tiled large-image inference for Refusion (latent IR-SDE image restoration)."""
__version__ = "0.1.0"

from . import host_memory  # noqa: E402
host_memory.configure()    # before torch's first large allocation: see host_memory's docstring

from .restorer import Restorer  # noqa: E402
from .batch import restore_folder  # noqa: E402

__all__ = ["Restorer", "restore_folder", "__version__"]
