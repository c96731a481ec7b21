"""The scheduler: encode → sample → decode for one image under a memory budget.

``restore_tensor`` runs a model on a (1, C, H, W) float32 canvas in [0, 1] held on the host.

- whole mode is the reference algorithm (encode → x_T = μ + λz → reverse sampler → decode), each
  network on the whole image at once;
- tiled mode runs the compressor over tiles exactly (``tiled_compressor``) and, where the latent does
  not fit the budget, evaluates the noise network on overlapping latent tiles whose ε are blended
  with raised-cosine windows before one sampler step is applied to the whole canvas.
The noise network's SCA pools globally, so whole-latent evaluation is exact and tiled evaluation an
approximation; 'auto' uses the whole latent whenever it fits.
"""
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from .. import sde
from .cuda_graphs import GraphedNoise, graphs_available
from . import host_memory
from .rng import START_STEP, PositionalNoise, PrefetchingNoise
from .tiled_compressor import TiledCompressor, encoder_halo, finest_decode_halo, is_out_of_memory
from ..tiling import blend_window, grid

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
MODES = ("auto", "whole", "tiled")
GB = 1 << 30


@dataclass
class Options:
    steps: int | None = None          # sampler steps (the schedule's T); None = the model's T
    sampler: str = "sde"
    seed: int = 0
    tile: int | None = None           # noise-network tile (latent units for latent tasks, pixels otherwise)
    overlap: int | None = None
    mode: str = "auto"                # auto | whole | tiled
    memory_budget: int | None = None  # bytes; default: free device memory
    precision: str = "fp32"
    progress: Callable | None = None  # progress(stage, done, total)
    compressor_tile: int | None = None  # in latent units; default from the budget
    batch: int | None = None          # noise tiles per network call; default from the budget
    cuda_graphs: bool = True          # on CUDA, capture one step's noise-network work and replay it
    samples: int = 1                  # reverse-process runs whose final latents are averaged (see _sample_stage)
    ensemble: bool = False            # run k sees the latent in orientation k mod 4 (ORIENTATIONS)
    start_step: int | None = None     # with a prior image: start the reverse runs at this step (see restore_tensor)
    stats: dict = field(default_factory=dict)  # filled with per-stage seconds and the plan


# Orientations of the latent canvas for Options.ensemble, as (name, forward, inverse) on (..., H, W)
# tensors: the identity, a horizontal flip, the transpose and the transpose of the flip.  Vertical
# flips are left out: a hazy scene is far at the top, and the network has learned it.
ORIENTATIONS = (
    ("identity", lambda t: t, lambda t: t),
    ("hflip", lambda t: t.flip(-1), lambda t: t.flip(-1)),
    ("transpose", lambda t: t.transpose(-1, -2), lambda t: t.transpose(-1, -2)),
    ("transpose_hflip", lambda t: t.flip(-1).transpose(-1, -2), lambda t: t.transpose(-1, -2).flip(-1)),
)


@dataclass
class Plan:
    """What the engine will do for one image; ``describe`` is the summary users see."""

    image_hw: tuple
    canvas_hw: tuple                  # latent (latent tasks) or image (pixel tasks) size
    canvas_channels: int
    latent: bool
    compressor_mode: str              # whole | tiled | none
    compressor_tile: int
    skips: str                        # fp32 | fp16 | recompute | whole
    encode_tiles: int
    decode_tiles: int
    noise_mode: str                   # whole | tiled
    noise_tile: int
    noise_overlap: int
    noise_batch: int
    noise_tiles: int
    steps: int
    budget: int
    expected_peak: int
    noise_tile_from_model: bool = False   # the tile is the model file's training size ("noise_tile")

    def describe(self):
        h, w = self.image_hw
        lines = [f"image {w}x{h} -> {'latent' if self.latent else 'pixel'} canvas "
                 f"{self.canvas_hw[1]}x{self.canvas_hw[0]}x{self.canvas_channels}, {self.steps} steps"]
        if self.latent:
            if self.compressor_mode == "whole":
                lines.append("encode/decode: whole image (reference mode)")
            else:
                lines.append(f"encode: {self.encode_tiles} tiles of {self.compressor_tile} latent units; "
                             f"decode: {self.decode_tiles} tiles; skips {self._skips_text()}")
        if self.noise_mode == "whole":
            lines.append("sample: noise network on the whole canvas (exact)")
        else:
            lines.append(f"sample: {self.noise_tiles} tiles of {self.noise_tile} with overlap {self.noise_overlap}"
                         f"{' (the size the model was trained on)' if self.noise_tile_from_model else ''}, "
                         f"batch {self.noise_batch} ({-(-self.noise_tiles // self.noise_batch)} calls per step)")
        lines.append(f"expected peak memory {self.expected_peak / GB:.2f} GB of a {self.budget / GB:.2f} GB budget"
                     + (" (over budget: the image and output canvases alone need more)"
                        if self.expected_peak > self.budget else ""))
        return "\n".join(lines)

    def _skips_text(self):
        return {"fp32": "kept on the host (fp32)",
                "fp16": "kept on the host in fp16, the finest level's recomputed per decode tile",
                "recompute": "recomputed per decode tile"}.get(self.skips, self.skips)


# ---- memory model ---------------------------------------------------------------------------

def available_memory(device):
    """Free memory on the device (CUDA) or available host memory (CPU), in bytes."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 * GB


COMPRESSOR_TILES = (128, 96, 64, 48, 32, 24, 16)     # candidate compressor tiles (latent units), largest first
NOISE_TILES = (512, 384, 256, 192, 128, 96, 64)  # candidate noise-network tiles, largest first
HOST_BASELINE = 400 << 20     # the interpreter, torch and the model code, resident before any tensor
CPU_DEFAULT_CAP = 4 << 30     # default CPU budget at most this: lean by default, --memory-budget for more


def default_budget(device):
    """Most of the free device memory; on CPU, half the available host memory, at most 4 GiB."""
    if device.type == "cuda":
        return int(available_memory(device) * 0.85)
    return int(min(available_memory(device) * 0.5, CPU_DEFAULT_CAP))


def noise_bytes(net, h, w, batch, itemsize):
    """Rough peak activation memory of one noise-network call on a batch of h×w inputs."""
    width = net.intro.out_channels
    views = 2 if net.variant == "stereo" else 1
    hp, wp = -(-h // net.padder_size) * net.padder_size, -(-w // net.padder_size) * net.padder_size
    return int(14 * width * hp * wp * batch * views * itemsize)


def compressor_tile_bytes(comp, tile, recompute, itemsize):
    """Rough peak memory of one tile of the finest decoder pass (the heaviest compressor stage)."""
    unit = 2 ** (comp.depth - 1)
    side = (tile + 2 * finest_decode_halo(comp.depth)) * unit
    finest = comp.decoder[-1][0].block1.proj.in_channels
    total = 6 * finest * side * side * itemsize
    if recompute:   # the encoder's first level over the region grown by its halo
        side_e = side + 2 * encoder_halo(comp.depth, 1) * unit
        total += 4 * comp.encoder[0][0].block1.proj.in_channels * side_e * side_e * itemsize
    return int(total)


def level_canvas_bytes(comp, h, w, skip_itemsize):
    """The largest transient per-level canvas of the level-by-level encode/decode."""
    m = comp.multiple
    hp, wp = -(-h // m) * m, -(-w // m) * m
    enc = max(blk[3].out_channels * (hp >> (i + 1)) * (wp >> (i + 1)) * 4
              for i, blk in enumerate(comp.encoder[:-1])) if comp.depth > 1 else 0
    dec = max(comp.decoder[k][1].block2.proj.out_channels * (hp >> (comp.depth - 1 - k)) * (wp >> (comp.depth - 1 - k))
              * skip_itemsize for k in range(1, comp.depth - 1)) if comp.depth > 2 else 0
    return max(enc, dec)


def skip_elements(comp, h, w, from_level=0):
    """Elements of the kept skip tensors of encoder levels ≥ from_level for an h×w image."""
    m = comp.multiple
    hp, wp = -(-h // m) * m, -(-w // m) * m
    total = comp.init_conv.out_channels * hp * wp if from_level == 0 else 0
    for level, blocks in enumerate(comp.encoder):
        if level >= from_level:
            total += 2 * blocks[0].block1.proj.out_channels * (hp >> level) * (wp >> level)
    return total


def make_plan(model, image_hw, channels, options, device):
    """Choose modes, tile sizes and batch from the image size, the model and the memory budget."""
    if options.mode not in MODES:
        raise ValueError(f"unknown mode {options.mode!r}; expected one of {MODES}")
    itemsize = torch.tensor([], dtype=DTYPES[options.precision]).element_size()
    budget = int(options.memory_budget or default_budget(device))
    h, w = image_hw
    comp = model.compressor
    sch_T = options.steps or model.sde["T"]
    weight_bytes = sum(p.numel() for p in model.noise.parameters()) * itemsize
    if comp is not None:
        weight_bytes += sum(p.numel() for p in comp.parameters()) * itemsize
        unit = 2 ** (comp.depth - 1)
        m = comp.multiple
        ch, cw = -(-h // m) * m // unit, -(-w // m) * m // unit
        cc = comp.latent_conv.out_channels
    else:
        ch, cw, cc = h, w, channels
    host_fixed = 4 * (2 * channels * h * w + 6 * cc * ch * cw) + HOST_BASELINE  # image, output, canvases
    if comp is not None:   # deepest-level canvases of the tiled compressor (two at a time, fp32)
        host_fixed += 4 * 2 * comp.decoder[0][0].block1.proj.out_channels * ch * cw
    on_host = device.type == "cpu"
    # on a GPU the sampler's canvases (x_t, μ, ε, z and temporaries) live on the device too
    fixed = host_fixed + weight_bytes if on_host else weight_bytes + 4 * 6 * cc * ch * cw

    room = budget - fixed
    whole_noise = noise_bytes(model.noise, ch, cw, 1, itemsize)
    # a model file may name the noise tile it was trained for ("noise_tile"/"noise_overlap": a network
    # trained on small crops pools its channel attention over crops of that size); 'auto' uses it
    tile, tile_overlap, model_tile = options.tile, options.overlap, False
    preferred = (getattr(model, "metadata", None) or {}).get("noise_tile")
    if tile is None and options.mode == "auto" and preferred:
        tile, model_tile = int(preferred), True
        if tile_overlap is None and model.metadata.get("noise_overlap") is not None:
            tile_overlap = int(model.metadata["noise_overlap"])
    force_tiles = options.mode == "tiled" or tile is not None
    want_whole_noise = options.mode == "whole" or not force_tiles

    # compressor: the kept skips stay resident through sampling, so they are chosen together with
    # the noise network's need: fp32 skips, then fp16, then recomputation; the largest tile that fits.
    compressor_mode, skips, ctile, comp_tiles, resident_skips, comp_peak = "none", "whole", 0, 0, 0, 0
    if comp is not None and options.mode == "whole":
        compressor_mode, ctile = "whole", max(ch, cw)
        comp_peak = int(skip_elements(comp, h, w) * 4 * 2.5)
    elif comp is not None:
        compressor_mode = "tiled"
        host_room = available_memory(torch.device("cpu")) * 0.8 - (0 if on_host else host_fixed)
        kept_bytes = {"fp32": 4 * skip_elements(comp, h, w) + level_canvas_bytes(comp, h, w, 4),
                      "fp16": 2 * skip_elements(comp, h, w, 1) + level_canvas_bytes(comp, h, w, 2),
                      "recompute": level_canvas_bytes(comp, h, w, 2)}
        # fp32 skips (exact) while they take at most a quarter of the budget; then fp16 skips with the
        # finest level recomputed (most of the skip memory, ~2 % of the compressor's work); then all
        # recomputed. The kept skips stay resident through sampling, so the noise network's need counts.
        kinds = [k for k in ("fp32", "fp16", "recompute") if k != "fp32" or kept_bytes["fp32"] <= budget / 4]
        choice = None
        for noise_whole in ((True, False) if want_whole_noise else (False,)):
            for kind in kinds:
                kept = kept_bytes[kind]
                if kept > host_room:
                    continue
                left = room - (kept if on_host else 0)
                if noise_whole and whole_noise > left:
                    continue
                for t in ([options.compressor_tile] if options.compressor_tile else COMPRESSOR_TILES):
                    # an eighth of the budget at most: bigger tiles save little halo work
                    if compressor_tile_bytes(comp, t, kind != "fp32", itemsize) <= min(left, budget / 8):
                        choice = (kind, t, kept if on_host else 0)
                        break
                if choice:
                    break
            if choice:
                break
        if choice is None:   # over budget whatever we do (the image and output canvases alone):
            # recompute everything, with tiles sized to an eighth of the budget, not the smallest
            fallback = next((t for t in COMPRESSOR_TILES
                             if compressor_tile_bytes(comp, t, True, itemsize) <= budget / 8), COMPRESSOR_TILES[-1])
            choice = ("recompute", options.compressor_tile or fallback, 0)
        skips, ctile, resident_skips = choice
        ctile = min(ctile, max(ch, cw))
        comp_tiles = -(-ch // ctile) * -(-cw // ctile)
        comp_peak = resident_skips + compressor_tile_bytes(comp, ctile, skips != "fp32", itemsize)

    room_noise = room - resident_skips
    if options.mode == "whole" or (not force_tiles and whole_noise <= room_noise):
        noise_mode, ntile, overlap, batch, ntiles = "whole", max(ch, cw), 0, 1, 1
        noise_peak = whole_noise
    else:
        noise_mode = "tiled"
        noise_room = max(room_noise, budget / 8)   # over budget: still tiles of a sensible size
        ntile = tile or next((t for t in NOISE_TILES if noise_bytes(model.noise, t, t, 1, itemsize) <= noise_room),
                             NOISE_TILES[-1])
        overlap = tile_overlap if tile_overlap is not None else max(ntile // 4, 1)
        if overlap >= ntile:
            raise ValueError(f"overlap ({overlap}) must be smaller than the tile ({ntile})")
        tiles = grid(ch, cw, ntile, overlap)
        ntiles = len(tiles)
        per_tile = noise_bytes(model.noise, *tiles[0].shape, 1, itemsize)
        batch = options.batch or max(1, min(16, ntiles, int(noise_room // max(per_tile, 1))))
        noise_peak = resident_skips + per_tile * batch
    expected = fixed + max(comp_peak, noise_peak)
    return Plan((h, w), (ch, cw), cc, comp is not None, compressor_mode, ctile, skips, comp_tiles, comp_tiles,
                noise_mode, ntile, overlap, batch, ntiles, sch_T, budget, int(expected),
                noise_tile_from_model=model_tile and noise_mode == "tiled")


# ---- stages -----------------------------------------------------------------------------------

def schedule_for(model, steps=None):
    cfg = dict(model.sde)
    if steps is not None:
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        cfg["T"] = steps
    return sde.make_schedule(**cfg)


def _lens_kwargs(lens, device):
    """Bokeh lens numbers as (1,) tensors on the device, made once (a CUDA graph cannot copy them in)."""
    if lens is None:
        return {}
    return {k: torch.tensor([float(v)], device=device) for k, v in zip(("src_lens", "tgt_lens", "disparity"), lens)}


def _network_input(t, device, dtype):
    """t on the device in the network's dtype; NCHW-contiguous on CUDA.  The compressor's canvases
    arrive channels-last (its convolutions are faster in it), but the fused NAFBlock kernels' launch
    configurations were chosen on NCHW tensors (benchmarks/gpu_bench.py --sweep), so the noise
    network gets NCHW there.  On the CPU the eager network keeps the layout it is given."""
    t = t.to(device=device, dtype=dtype)
    return t.contiguous() if t.device.type == "cuda" else t


def whole_noise_fn(net, mu, device, dtype, lens=None):
    """noise_fn(x, t) -> ε of the whole canvas, computed in ``dtype`` on ``device``, returned float32 where x is."""
    mu_d = _network_input(mu, device, dtype)
    kwargs = _lens_kwargs(lens, device)

    def noise_fn(x, t):
        eps = net(_network_input(x, device, dtype), mu_d, t, **kwargs)
        return eps.to(device=x.device, dtype=torch.float32)
    return noise_fn


def tiled_noise_fn(net, mu, device, dtype, tile, overlap, batch, lens=None, report=None):
    """noise_fn(x, t) -> ε blended from overlapping tiles (normalised raised-cosine weights)."""
    _, c, h, w = mu.shape
    tiles = grid(h, w, tile, overlap)
    windows = [blend_window(t, tiles, h, w).to(mu.device) for t in tiles]
    weight_sum = torch.zeros(h, w, device=mu.device)
    for t, win in zip(tiles, windows):
        weight_sum[t.slices] += win
    kwargs = _lens_kwargs(lens, device)
    groups = [list(range(i, min(i + batch, len(tiles)))) for i in range(0, len(tiles), batch)]

    def noise_fn(x, t_step):
        eps = torch.zeros_like(x)
        for g, group in enumerate(groups):
            xs = torch.cat([x[(slice(None), slice(None)) + tiles[i].slices] for i in group])
            ms = torch.cat([mu[(slice(None), slice(None)) + tiles[i].slices] for i in group])
            out = net(_network_input(xs, device, dtype), _network_input(ms, device, dtype), t_step, **kwargs)
            out = out.to(device=x.device, dtype=torch.float32)
            for j, i in enumerate(group):
                eps[(slice(None), slice(None)) + tiles[i].slices] += out[j:j + 1] * windows[i]
            if report is not None:
                report(g + 1, len(groups))
        return eps / weight_sum
    return noise_fn


def restore_tensor(model, x, options, device=torch.device("cpu"), lens=None, prior=None):
    """Restore a (1, C, H, W) host canvas; returns the restored (1, C, H, W) canvas clamped to [0, 1].

    ``prior``: an estimate of the restored image (same shape, e.g. a classic method's output). Its
    latent is the x_0 around which each reverse run starts at ``options.start_step`` (drawn from the
    forward process there) instead of at x_T = μ + λz: the network refines the estimate over the last
    ``start_step`` steps. Needs a latent model."""
    if options.sampler not in sde.SAMPLERS:
        raise ValueError(f"unknown sampler {options.sampler!r}; expected one of {', '.join(sde.SAMPLERS)}")
    if options.precision not in DTYPES:
        raise ValueError(f"unknown precision {options.precision!r}; expected one of {', '.join(DTYPES)}")
    if options.samples < 1:
        raise ValueError(f"samples must be at least 1, got {options.samples}")
    if prior is not None:
        if model.compressor is None:
            raise ValueError("a prior image needs a latent model (a compressor)")
        if prior.shape != x.shape:
            raise ValueError(f"the prior image's shape {tuple(prior.shape)} differs from the input's {tuple(x.shape)}")
        if options.start_step is None:
            raise ValueError("a prior image needs options.start_step")
    host_memory.configure()   # the first restoration tunes the host allocator (host_memory)
    device = torch.device(device)
    dtype = DTYPES[options.precision]
    _, channels, h, w = x.shape
    if h < 1 or w < 1:
        raise ValueError(f"empty image ({w}x{h})")
    plan = make_plan(model, (h, w), channels, options, device)
    options.stats["plan"] = plan
    model.to(device=device, dtype=dtype)
    report = options.progress or (lambda *a: None)
    timings = options.stats.setdefault("seconds", {})
    with torch.no_grad():
        start = time.perf_counter()
        tiled = canvas = hidden = None
        if model.compressor is None:
            mu = x.float()
        elif plan.compressor_mode == "whole":
            report("encode", 0, 1)
            mu, hidden = model.compressor.encode(x.to(device=device, dtype=dtype))
            mu = mu.float().cpu()
            report("encode", 1, 1)
        else:
            tiled = TiledCompressor(model.compressor, device, dtype, tile=plan.compressor_tile,
                                    keep_skips=plan.skips != "recompute",
                                    recompute_levels=1 if plan.skips == "fp16" else 0,
                                    skip_dtype=torch.float16 if plan.skips == "fp16" else torch.float32,
                                    level_dtype=torch.float32 if plan.skips == "fp32" else torch.float16,
                                    progress=report)
            canvas = tiled.encode(x)
            mu = canvas.latent
        guess = None if prior is None else _encode_latent(model, prior, plan, device, dtype, report)
        timings["encode"] = time.perf_counter() - start
        host_memory.release_free_memory()

        start = time.perf_counter()
        state = _sample_stage(model, mu, plan, options, device, dtype, lens, report, guess)
        timings["sample"] = time.perf_counter() - start
        host_memory.release_free_memory()

        start = time.perf_counter()
        if model.compressor is None:
            out = state
        elif plan.compressor_mode == "whole":
            report("decode", 0, 1)
            out = model.compressor.decode(state.to(device=device, dtype=dtype), hidden).float().cpu()
            report("decode", 1, 1)
        else:
            out = tiled.decode(state, canvas, x, release=True)
            plan.compressor_tile = tiled.tile   # smaller if an out-of-memory error halved it
        timings["decode"] = time.perf_counter() - start
    return out.clamp_(0, 1)


def _encode_latent(model, image, plan, device, dtype, report):
    """The latent of a host image (no skips kept), whole or in the plan's compressor tiles."""
    if plan.compressor_mode == "whole":
        latent, _ = model.compressor.encode(image.to(device=device, dtype=dtype))
        return latent.float().cpu()
    tiled = TiledCompressor(model.compressor, device, dtype, tile=plan.compressor_tile, keep_skips=False,
                            progress=lambda stage, done, total: report(f"prior {stage}", done, total))
    return tiled.encode(image).latent


def _sample_stage(model, mu, plan, options, device, dtype, lens, report, guess=None):
    """x_T = μ + λz, then the reverse sampler over the whole canvas; ε from the whole or tiled network.

    With ``guess`` (the latent of a prior image) each run starts at ``options.start_step`` from the
    forward process around it (``sde.prior_start_state``) and takes only those steps.

    On a GPU the canvases stay on the device and, unless ``options.cuda_graphs`` is off, one step's
    noise-network work (the whole canvas or every tile batch plus the blend) is captured as a CUDA
    graph and replayed for each step. On a CUDA out-of-memory error the noise tile is halved (whole →
    tiled first) and the step redone. Returns the final state on the host.

    With ``options.samples`` = K > 1 the reverse process runs K times from the same μ, run k drawing
    its noise from stream k (run 0 is the single-sample result), and the K final latents are averaged:
    a Monte-Carlo estimate of the posterior mean, which is what minimises the squared error when the
    samples disagree. K × the sampling time; one decode. With ``options.ensemble`` run k also sees μ
    in orientation k mod 4 (``ORIENTATIONS``: flipped and/or transposed; its final latent is turned
    back before the average): the network's errors in different orientations are less alike than
    those of different start noises, so the mean is closer to the clean latent for the same cost.
    """
    sch = schedule_for(model, options.steps)
    runs = options.samples
    run_steps = sch.T if guess is None else options.start_step
    if not 1 <= run_steps <= sch.T:
        raise ValueError(f"start step must be in 1..{sch.T}, got {run_steps}")
    orientations = ORIENTATIONS if options.ensemble else ORIENTATIONS[:1]
    # turned canvases keep μ's memory layout (channels-last from the tiled compressor: the CPU's
    # convolutions are faster in it)
    layout = (torch.channels_last if mu.dim() == 4 and not mu.is_contiguous()
              and mu.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format)
    step_index = [0]
    on_gpu = device.type == "cuda"
    if on_gpu:
        mu = mu.to(device)
        guess = None if guess is None else guess.to(device)
    use_graphs = options.cuda_graphs and graphs_available(device)
    graph_info = options.stats["cuda_graph"] = {"used": use_graphs, "captures": 0, "replays": 0}

    def tile_calls(mu_run):
        return -(-len(grid(mu_run.shape[-2], mu_run.shape[-1], plan.noise_tile, plan.noise_overlap))
                 // plan.noise_batch)

    def make_noise_fn(mu_run):
        if plan.noise_mode == "whole":
            fn = whole_noise_fn(model.noise, mu_run, device, dtype, lens)
        else:
            calls = tile_calls(mu_run)
            fn = tiled_noise_fn(model.noise, mu_run, device, dtype, plan.noise_tile, plan.noise_overlap,
                                plan.noise_batch, lens,
                                report=lambda g, n: report("sample", step_index[0] * calls + g,
                                                          run_steps * runs * calls))
        if use_graphs:
            graph_info["captures"] += 1
            return GraphedNoise(fn, device)
        return fn

    current = [None, None]   # the noise function and the μ (orientation) it was made for
    earlier_replays = [0]    # replays of graphs dropped when the orientation changed

    def noise_fn(x_t, t):
        while True:
            try:
                return current[0](x_t, t)
            except (torch.cuda.OutOfMemoryError, RuntimeError) as err:
                if not is_out_of_memory(err) or (plan.noise_mode == "tiled" and plan.noise_tile <= 16):
                    raise
                current[0] = None
                torch.cuda.empty_cache()
                _halve_noise_tiles(plan)
                current[0] = make_noise_fn(current[1])

    def callback(i, t):
        step_index[0] = i + 1
        if isinstance(current[0], GraphedNoise):
            graph_info["replays"] = earlier_replays[0] + current[0].replays
            graph_info["used"] = not current[0].failed   # capture failed: eager from then on
        if plan.noise_mode == "whole":
            report("sample", i + 1, run_steps * runs)
        elif use_graphs:   # a replayed step does not call back per tile batch
            calls = tile_calls(current[1])
            report("sample", (i + 1) * calls, run_steps * runs * calls)

    total = None
    for run in range(runs):
        name, forward, inverse = orientations[run % len(orientations)]
        mu_run = mu if name == "identity" else forward(mu).contiguous(memory_format=layout)
        if current[1] is not mu_run and (current[1] is None or current[1].shape != mu_run.shape
                                         or not torch.equal(current[1], mu_run)):
            if isinstance(current[0], GraphedNoise):
                earlier_replays[0] += current[0].replays
            current[0], current[1] = None, mu_run   # the old graph's memory goes before the next capture
            current[0] = make_noise_fn(mu_run)
        noise = PositionalNoise(options.seed, stream=run)
        if on_gpu and sde.NEEDS_NOISE[options.sampler]:
            noise = PrefetchingNoise(noise, device)   # draws step t−1 on the host while the GPU runs step t
        try:
            if guess is None:
                state = sde.start_state(sch, mu_run, noise(START_STEP, mu_run))
            else:
                guess_run = guess if name == "identity" else forward(guess).contiguous(memory_format=layout)
                state = sde.prior_start_state(sch, guess_run, mu_run, run_steps, noise(START_STEP, mu_run))
            state = sde.sample(noise_fn, state, mu_run, sch, options.sampler, noise,
                               callback=lambda i, t, run=run: callback(run * run_steps + i, t),
                               start_step=run_steps)
        finally:
            if isinstance(noise, PrefetchingNoise):
                noise.close()
        state = inverse(state)
        total = state.clone() if total is None else total.add_(state)
    return (total / runs if runs > 1 else total).cpu()


def _halve_noise_tiles(plan):
    """Switch whole → tiled or halve the noise tile (after an out-of-memory error)."""
    plan.noise_tile = max(16, (max(plan.canvas_hw) if plan.noise_mode == "whole" else plan.noise_tile) // 2)
    plan.noise_mode = "tiled"
    plan.noise_overlap = min(plan.noise_overlap or plan.noise_tile // 4, plan.noise_tile // 2)
    plan.noise_tiles = len(grid(plan.canvas_hw[0], plan.canvas_hw[1], plan.noise_tile, plan.noise_overlap))
    plan.noise_batch = 1
