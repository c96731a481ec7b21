"""Packaging for tilediff.

The top-level ``kernels/`` folder is installed as ``tilediff.kernels``: ``kernels`` alone is a
common top-level import name (a PyPI package uses it), so it must not be installed bare.
"""
from setuptools import setup

setup(
    name="tilediff",
    version="0.1.0",
    description="Tiled large-image inference engine for Refusion (latent IR-SDE image restoration)",
    long_description=open("README.md", encoding="utf-8").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=["tilediff", "tilediff.models", "tilediff.engine", "tilediff.io", "tilediff.tasks", "tilediff.tasks.dehaze",
              "tilediff.training", "tilediff.cli", "tilediff.kernels", "tilediff.shipped_weights"],
    package_dir={"tilediff": "tilediff", "tilediff.kernels": "kernels", "tilediff.shipped_weights": "weights"},
    package_data={"tilediff": ["data/*"], "tilediff.shipped_weights": ["*.safetensors", "*.md"]},
    include_package_data=True,
    install_requires=[
        "torch>=2.1,<=2.14.1",
        "numpy",
        "scipy",
        "tifffile",
        "imagecodecs",       # 16-bit colour PNG, and tifffile's LZW, zstd and other TIFF codecs
        "pillow",
        "einops",
        "safetensors",
        "click>=8",
        "tqdm",
        "triton; platform_system == 'Linux'",
    ],
    extras_require={
        "test": ["pytest"],
        "bench": ["matplotlib"],
        "train": ["scikit-image"],
        "cluster": ["ray"],   # --ray: ray.init, actors and the `ray start` / `ray status` commands (core Ray)
    },
    entry_points={"console_scripts": ["tilediff=tilediff.cli:main"]},
)
