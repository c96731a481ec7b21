"""Fused Triton kernels for the conditional NAFBlock (installed as ``tilediff.kernels``).

Importing this package needs only torch: triton is imported lazily, inside
:mod:`.triton_kernels`, the first time ``kernels_available`` or the fused forward needs it.
See :mod:`.nafblock` for the API the network uses and :mod:`.reference` for the plain-PyTorch
reference of every kernel.
"""
from .nafblock import (NAFBlockParams, NAFMods, fused_nafblock_forward, kernels_available,
                       reference_nafblock_forward)

__all__ = ["NAFBlockParams", "NAFMods", "fused_nafblock_forward", "kernels_available",
           "reference_nafblock_forward"]
