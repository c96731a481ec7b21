"""tilediff: tiled large-image inference for Refusion (latent IR-SDE image restoration)."""
__version__ = "0.1.0"
