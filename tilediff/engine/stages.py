"""The engine's stages for one image: plan → encode → sample → decode under a memory budget.

``restore_tensor`` runs a model on a (1, C, H, W) float32 canvas in [0, 1] held on the host:

1. plan: modes, tiles and batch from the image size, the networks' facts and the budget (``plan``);
2. encode: the image → the canvas μ the sampler works on (a codec, chosen once from the plan):
   - ``PixelCodec``: pixel-space models; the canvas is the image itself;
   - ``WholeCodec``: the reference algorithm, the compressor on the whole image at once;
   - ``TiledCodec``: the compressor over tiles, exact (``tiled_compressor``);
3. sample: the reverse-process runs over the canvas, ε from the whole or tiled noise network (``sampling``);
4. decode: the final latent → the image, with the skips of the encode.

The noise network's SCA pools globally, so whole-latent evaluation is exact and tiled evaluation an
approximation; 'auto' uses the whole latent whenever it fits.
"""
import time

import torch

from . import host_memory
from .plan import DTYPES, make_plan
from .sampling import sample_canvas
from .tiled_compressor import TiledCompressor

__all__ = ["restore_tensor", "make_codec", "PixelCodec", "WholeCodec", "TiledCodec"]


def restore_tensor(model, x, options, device=torch.device("cpu"), *, lens=None, prior=None, start_step=None,
                   stats=None):
    """Restore a (1, C, H, W) host canvas; returns the restored (1, C, H, W) canvas clamped to [0, 1].

    ``options``: a ``RestoreOptions`` (resolved here against ``model``; its ``progress(stage, done,
    total)`` is called as the stages advance). ``lens``: bokeh's (src_lens, tgt_lens, disparity).
    ``prior``: an estimate of the restored image (same shape, e.g. a classic method's output). Its
    latent is the x_0 around which each reverse run starts at ``start_step`` (drawn from the forward
    process there) instead of at x_T = μ + λz: the network refines the estimate over the last
    ``start_step`` steps. Needs a latent model. ``stats`` (a dict) receives the plan ("plan"), the
    seconds per stage ("seconds") and the CUDA-graph counts ("cuda_graph").
    """
    options = options.resolve(model)
    if prior is not None:
        if model.compressor is None:
            raise ValueError("a prior image needs a latent model (a compressor)")
        if prior.shape != x.shape:
            raise ValueError(f"the prior image's shape {tuple(prior.shape)} differs from the input's {tuple(x.shape)}")
        if start_step is None:
            raise ValueError("a prior image needs start_step")
    host_memory.configure()   # the first restoration tunes the host allocator (host_memory)
    device = torch.device(device)
    dtype = DTYPES[options.precision]
    _, channels, h, w = x.shape
    if h < 1 or w < 1:
        raise ValueError(f"empty image ({w}x{h})")
    stats = {} if stats is None else stats
    timings = stats.setdefault("seconds", {})
    report = options.progress or (lambda *args: None)

    # 1. plan
    plan = stats["plan"] = make_plan(model, (h, w), channels, options, device)
    model.to(device=device, dtype=dtype)
    with torch.no_grad():
        # 2. encode (and the prior image's latent)
        start = time.perf_counter()
        codec = make_codec(model, plan, device, dtype, report)
        mu = codec.encode(x)
        guess = None if prior is None else codec.latent_of(prior)
        timings["encode"] = time.perf_counter() - start
        host_memory.release_free_memory()

        # 3. sample
        start = time.perf_counter()
        state = sample_canvas(model, mu, plan, options, device, dtype, lens=lens, guess=guess,
                              start_step=start_step, report=report, stats=stats)
        timings["sample"] = time.perf_counter() - start
        host_memory.release_free_memory()

        # 4. decode
        start = time.perf_counter()
        out = codec.decode(state)
        timings["decode"] = time.perf_counter() - start
    return out.clamp_(0, 1)


def make_codec(model, plan, device, dtype, report):
    """The codec for the plan's compressor mode (none | whole | tiled)."""
    if plan.compressor_mode == "none":
        return PixelCodec()
    if plan.compressor_mode == "whole":
        return WholeCodec(model.compressor, device, dtype, report)
    return TiledCodec(model.compressor, plan, device, dtype, report)


class PixelCodec:
    """Pixel-space models: the canvas is the image, and the final state the output."""

    def encode(self, x):
        return x.float()

    def latent_of(self, image):
        raise ValueError("a prior image needs a latent model (a compressor)")

    def decode(self, state):
        return state


class WholeCodec:
    """The reference: the compressor on the whole image on the device, its skips kept there."""

    def __init__(self, compressor, device, dtype, report):
        self.net, self.device, self.dtype, self.report = compressor, device, dtype, report
        self.skips = None

    def encode(self, x):
        self.report("encode", 0, 1)
        mu, self.skips = self.net.encode(x.to(device=self.device, dtype=self.dtype))
        mu = mu.float().cpu()
        self.report("encode", 1, 1)
        return mu

    def latent_of(self, image):
        """The latent of another host image (its skips are not kept)."""
        latent, _ = self.net.encode(image.to(device=self.device, dtype=self.dtype))
        return latent.float().cpu()

    def decode(self, state):
        self.report("decode", 0, 1)
        out = self.net.decode(state.to(device=self.device, dtype=self.dtype), self.skips).float().cpu()
        self.report("decode", 1, 1)
        return out


class TiledCodec:
    """The compressor over tiles of host canvases, exact; where the skips live is the plan's choice
    (fp32, fp16 with the finest level recomputed, or all recomputed from the image at decode)."""

    def __init__(self, compressor, plan, device, dtype, report):
        self.net, self.plan, self.device, self.dtype, self.report = compressor, plan, device, dtype, report
        self.tiled = TiledCompressor(compressor, device, dtype, tile=plan.compressor_tile,
                                     keep_skips=plan.skips != "recompute",
                                     recompute_levels=1 if plan.skips == "fp16" else 0,
                                     skip_dtype=torch.float16 if plan.skips == "fp16" else torch.float32,
                                     level_dtype=torch.float32 if plan.skips == "fp32" else torch.float16,
                                     progress=report)
        self.image = self.canvas = None

    def encode(self, x):
        self.image = x                      # the skips not kept are recomputed from it
        self.canvas = self.tiled.encode(x)
        return self.canvas.latent

    def latent_of(self, image):
        """The latent of another host image (no skips kept), in the plan's compressor tiles."""
        tiled = TiledCompressor(self.net, self.device, self.dtype, tile=self.plan.compressor_tile, keep_skips=False,
                                progress=lambda stage, done, total: self.report(f"prior {stage}", done, total))
        return tiled.encode(image).latent

    def decode(self, state):
        out = self.tiled.decode(state, self.canvas, self.image, release=True)
        self.plan.compressor_tile = self.tiled.tile   # smaller if an out-of-memory error halved it
        return out
