"""tilediff: tiled large-image inference for Refusion (latent IR-SDE image restoration)."""
__version__ = "0.1.0"

from .restorer import Restorer  # noqa: E402

__all__ = ["Restorer", "__version__"]
