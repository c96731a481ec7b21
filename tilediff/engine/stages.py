"""The engine's stages for one image: plan → encode → sample → decode, source to bands, under a budget.

``restore_bands`` runs a model on a region source (``io.sources``: the input read window by
window) and returns the output as an iterator of bands of rows, for a sink to write as they come:

1. plan: modes, tiles, batch and where each canvas lives, from the image size, the networks'
   facts and the budget (``plan``); a plan that cannot fit raises before any work;
2. encode: the source → the canvas μ the sampler works on (a codec, chosen once from the plan):
   - ``PixelCodec``: pixel-space models; the canvas is the image itself;
   - ``WholeCodec``: the reference algorithm, the compressor on the whole image at once;
   - ``TiledCodec``: the compressor over tiles, exact, each tile reading its region (``tiled_compressor``);
3. sample: the reverse-process runs over the canvas, ε from the whole or tiled noise network (``sampling``);
4. decode: the final latent → the image's rows, a band of output tiles at a time, with the skips
   of the encode (kept, or recomputed from the source).

``restore_tensor`` is the same on a (1, C, H, W) tensor, the result collected into one.
The noise network's SCA pools globally, so whole-latent evaluation is exact and tiled evaluation an
approximation; 'auto' uses the whole latent whenever it fits.
"""
import contextlib
import time

import numpy as np
import torch

from . import host_memory
from .canvas import Canvas, TensorSource
from .plan import COMPRESSOR_TILES, DTYPES, make_plan
from .sampling import sample_canvas
from .tiled_compressor import TiledCompressor, encoder_halo

__all__ = ["restore_bands", "restore_tensor", "make_codec", "PixelCodec", "WholeCodec", "TiledCodec"]

BAND_ROWS = 256   # rows per band where the output is whole anyway (pixel models, the reference)


def restore_bands(model, source, options, device=torch.device("cpu"), *, lens=None, prior=None, start_step=None,
                  stats=None, held_bytes=0, scratch_dir=None):
    """Restore a region source; returns an iterator of (y0, rows) bands of the output in raster
    order, ``rows`` an (h, W, C) float32 array clamped to [0, 1].

    ``source``: a region source (``source.region(y0, y1, x0, x1)`` → float (C, h, w); ``height``,
    ``width``, ``channels``). ``options``: a ``RestoreOptions`` (resolved here against ``model``;
    its ``progress(stage, done, total)`` is called as the stages advance). ``lens``: bokeh's
    (src_lens, tgt_lens, disparity). ``prior``: a region source of an estimate of the restored
    image (same size, e.g. a classic method's output): its latent is the x_0 around which each
    reverse run starts at ``start_step`` (drawn from the forward process there) instead of at
    x_T = μ + λz. Needs a latent model. ``stats`` (a dict) receives the plan ("plan") at once and
    the seconds per stage ("seconds", the decode's without the time the consumer of the bands
    takes) and the CUDA-graph counts ("cuda_graph") as they happen. ``held_bytes``: what the
    caller's input and output hold (``make_plan``); ``scratch_dir``: where disk canvases go.

    The plan is made here, before any work (``plan.MemoryBudgetError`` when it cannot fit); the
    stages run as the bands are asked for.
    """
    options = options.resolve(model)
    if prior is not None:
        if model.compressor is None:
            raise ValueError("a prior image needs a latent model (a compressor)")
        if (prior.height, prior.width) != (source.height, source.width):
            raise ValueError(f"the prior image's size {prior.width}x{prior.height} differs from the input's "
                             f"{source.width}x{source.height}")
        if start_step is None:
            raise ValueError("a prior image needs start_step")
    host_memory.configure()   # the first restoration tunes the host allocator (host_memory)
    device = torch.device(device)
    h, w = source.height, source.width
    if h < 1 or w < 1:
        raise ValueError(f"empty image ({w}x{h})")
    stats = {} if stats is None else stats
    # 1. plan (a TIFF's cache of decoded segments: one band of the tallest tile's regions at most)
    cache = source.band_bytes(_region_rows(model, COMPRESSOR_TILES[0])) if hasattr(source, "band_bytes") else 0
    plan = stats["plan"] = make_plan(model, (h, w), source.channels, options, device,
                                     held_bytes=held_bytes + cache, scratch_dir=scratch_dir)
    if hasattr(source, "set_cache"):
        source.set_cache(source.band_bytes(_region_rows(model, plan.compressor_tile)))
    return _run(model, source, plan, options, device, lens, prior, start_step, stats)


# The largest block each stage takes from the reused heap (``host_memory.heap_reuse``); larger ones
# are fresh mappings (huge pages where torch was told before it loaded), whose first touch costs
# page faults (on this VM a level-0 decoder convolution writing a fresh 18 MB output took 11.1 ms
# against 5.3 ms into reused memory, profiled). A heap that serves every size fragments instead.
# Measured at 2000×3000, official networks, 2 steps, 2 threads, a tiled TIFF to a TIFF, each stage's time and
# peak resident set (VmHWM; /tmp probe of session 11, the README's check for the final numbers):
# the whole-canvas sampler with strips of ≤ 4 MB (``nafnet.STRIP_BYTES``), blocks up to 4 MB:
# 0.75–0.78 GiB, 1.8–2.0 s (up to 64 MB, before the strips: 0.93–0.96 GiB, 1.7–1.8 s); the tiled
# decode with compressor tiles of 48, blocks up to 32 MB: 0.83–0.86 GiB, 6.2–6.7 s; up to 16 MB:
# 0.82–0.87 GiB, 6.6–7.2 s (its 18–22 MB level-0 tensors mapped); up to 8 MB: 0.80–0.83 GiB, 7.7 s;
# with the tiles of 40 the plan now picks (``plan.HEAP_TILE_BLOCK``), up to 32 MB: 0.79–0.81 GiB, 6.6–6.8 s.
SAMPLE_HEAP_BLOCK = 4 << 20
DECODE_HEAP_BLOCK = 32 << 20
ENCODE_HEAP_BLOCK = host_memory.REUSE_MMAP_THRESHOLD


def _heap_reuse(uniform, largest):
    """Blocks up to ``largest`` bytes from the heap, reused (``host_memory.heap_reuse``), for a
    stage whose tensors come in the same few sizes over and over: the level-by-level encode, the
    whole-canvas noise network (the same forward at every step: 1.5 s of 3.3 s and 1.3 s of 3.6 s
    at 2000×3000 with the official networks) and the tiled decode (tiles of one size, ``tiling.partition``).
    The decode's fresh mappings cost 7.7–9.8 s of system time in a 2000×3000 restoration without
    huge pages; reused, 1.4–1.7 s. The fused encode, whose regions come in many sizes, keeps the
    mmapped setting (a 16384² fused encode's heap grew to 2.4 GB against 0.38 GB mmapped)."""
    return host_memory.heap_reuse(largest) if uniform else contextlib.nullcontext()


def _region_rows(model, tile):
    """Image rows of the regions a row of compressor tiles reads (the tile and the encoder's halo)."""
    if model.compressor is None:
        return 1
    return (tile + 2 * encoder_halo(model.compressor.depth)) * model.compressor.scale


def _run(model, source, plan, options, device, lens, prior, start_step, stats):
    timings = stats.setdefault("seconds", {})
    report = options.progress or (lambda *args: None)
    dtype = DTYPES[options.precision]
    model.to(device=device, dtype=dtype)
    with torch.no_grad():
        # 2. encode (and the prior image's latent)
        start = time.perf_counter()
        codec = make_codec(model, plan, device, dtype, report)
        with _heap_reuse(plan.encode_mode == "level", ENCODE_HEAP_BLOCK):
            mu = codec.encode(source)
        guess = None if prior is None else codec.latent_of(prior)
        timings["encode"] = time.perf_counter() - start
        host_memory.release_free_memory()

        # 3. sample
        start = time.perf_counter()
        with _heap_reuse(plan.noise_mode == "whole", SAMPLE_HEAP_BLOCK):
            state = sample_canvas(model, mu, plan, options, device, dtype, lens=lens, guess=guess,
                                  start_step=start_step, report=report, stats=stats)
        del mu, guess
        timings["sample"] = time.perf_counter() - start
        host_memory.release_free_memory()

        # 4. decode, a band at a time (the time the consumer takes between bands is not counted)
        timings["decode"] = 0.0
        start = time.perf_counter()
        with _heap_reuse(isinstance(codec, TiledCodec), DECODE_HEAP_BLOCK):
            for y0, rows in codec.decode_bands(state, source):
                timings["decode"] += time.perf_counter() - start
                yield y0, rows
                start = time.perf_counter()
        timings["decode"] += time.perf_counter() - start


def restore_tensor(model, x, options, device=torch.device("cpu"), *, lens=None, prior=None, start_step=None,
                   stats=None):
    """Restore a (1, C, H, W) host canvas; returns the restored (1, C, H, W) canvas clamped to [0, 1].

    ``restore_bands`` on the tensor (``prior``: a tensor of the same shape), the bands collected."""
    if prior is not None and prior.shape != x.shape:
        raise ValueError(f"the prior image's shape {tuple(prior.shape)} differs from the input's {tuple(x.shape)}")
    out = None
    bands = restore_bands(model, TensorSource(x), options, device, lens=lens, start_step=start_step, stats=stats,
                          prior=None if prior is None else TensorSource(prior))
    for y0, rows in bands:
        if out is None:
            out = torch.empty(1, rows.shape[2], x.shape[2], x.shape[3])
        out[0, :, y0:y0 + rows.shape[0]] = torch.from_numpy(rows).permute(2, 0, 1)
    return out


def make_codec(model, plan, device, dtype, report):
    """The codec for the plan's compressor mode (none | whole | tiled)."""
    if plan.compressor_mode == "none":
        return PixelCodec()
    if plan.compressor_mode == "whole":
        return WholeCodec(model.compressor, device, dtype, report)
    return TiledCodec(model.compressor, plan, device, dtype, report)


def _whole(source):
    """The whole source as a (1, C, H, W) float32 tensor."""
    return torch.as_tensor(source.region(0, source.height, 0, source.width)).float()[None]


def _bands_of(image):
    """A whole (1, C, H, W) result (or canvas) as bands of ``BAND_ROWS`` rows, clamped to [0, 1]."""
    if isinstance(image, Canvas):
        image = image.whole()
    for y0 in range(0, image.shape[2], BAND_ROWS):
        rows = image[0, :, y0:y0 + BAND_ROWS].clamp(0, 1).permute(1, 2, 0)
        yield y0, np.ascontiguousarray(rows.to("cpu", torch.float32).numpy())


class PixelCodec:
    """Pixel-space models: the canvas is the image, and the final state the output."""

    def encode(self, source):
        return _whole(source)

    def latent_of(self, source):
        raise ValueError("a prior image needs a latent model (a compressor)")

    def decode_bands(self, state, source):
        return _bands_of(state)


class WholeCodec:
    """The reference: the compressor on the whole image on the device, its skips kept there."""

    def __init__(self, compressor, device, dtype, report):
        self.net, self.device, self.dtype, self.report = compressor, device, dtype, report
        self.skips = None

    def encode(self, source):
        self.report("encode", 0, 1)
        mu, self.skips = self.net.encode(_whole(source).to(device=self.device, dtype=self.dtype))
        mu = mu.float().cpu()
        self.report("encode", 1, 1)
        return mu

    def latent_of(self, source):
        """The latent of another image (its skips are not kept)."""
        latent, _ = self.net.encode(_whole(source).to(device=self.device, dtype=self.dtype))
        return latent.float().cpu()

    def decode_bands(self, state, source):
        self.report("decode", 0, 1)
        out = self.net.decode(state.to(device=self.device, dtype=self.dtype), self.skips).float().cpu()
        self.skips = None
        self.report("decode", 1, 1)
        return _bands_of(out)


class TiledCodec:
    """The compressor over tiles, exact; what is kept and where per the plan (fp32 skips, fp16
    with the finest level recomputed, or only the deepest kept; canvases in RAM or scratch files)."""

    def __init__(self, compressor, plan, device, dtype, report):
        self.net, self.plan, self.device, self.dtype, self.report = compressor, plan, device, dtype, report
        self.tiled = TiledCompressor(compressor, device, dtype, tile=plan.compressor_tile, keep_from=plan.keep_from,
                                     skip_dtype=torch.float16 if plan.skips == "fp16" else torch.float32,
                                     level_by_level=plan.encode_mode == "level", progress=report,
                                     where={name: plan.folder(name) for name in plan.where})
        self.encoded = None

    def encode(self, source):
        """The source → the latent canvas μ (a ``Canvas``), the skips kept for the decode."""
        self.encoded = self.tiled.encode(source)
        return self.encoded.latent

    def latent_of(self, source):
        """The latent canvas of another image (no skips kept), in the plan's compressor tiles."""
        tiled = TiledCompressor(self.net, self.device, self.dtype, tile=self.plan.compressor_tile,
                                keep_from=self.net.depth - 1, level_by_level=False,
                                where={"deep_x": self.plan.folder("deep_x"), "latent": self.plan.folder("latent")},
                                progress=lambda stage, done, total: self.report(f"prior {stage}", done, total))
        return tiled.latent_of(source)

    def decode_bands(self, state, source):
        latent = state if isinstance(state, Canvas) else Canvas.of(state)
        for band in self.tiled.decode_bands(latent, self.encoded, source, release=True):
            self.plan.compressor_tile = self.tiled.tile   # smaller if an out-of-memory error halved it
            yield band
        latent.close()
