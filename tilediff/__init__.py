"""tilediff: tiled large-image inference for Refusion (latent IR-SDE image restoration)."""
__version__ = "0.1.0"

from .restorer import Restorer  # noqa: E402
from .batch import restore_folder  # noqa: E402

__all__ = ["Restorer", "restore_folder", "__version__"]
