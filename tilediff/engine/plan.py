"""The plan: for one image, what each stage does (modes, tile sizes, batch) under a memory budget.

``make_plan`` estimates each stage's peak memory from the image size and the facts the networks
declare (``Compressor.memory_facts``, ``ConditionalNAFNet.memory_facts``) and picks, in order:
the compressor's mode, where its skips live and its tile; then whole-canvas or tiled noise-network
evaluation, its tile and its batch. The estimates are deliberately rough (counts of live tensors,
measured once on the reference networks); a stage that still runs out of device memory halves its
tile and runs again (``oom``), and the plan records the tile it ended with.
"""
from dataclasses import dataclass

import torch

from ..options import MODES   # the engine's modes are the options'
from ..tiling import grid
from .tiled_compressor import encoder_halo, finest_decode_halo

__all__ = ["DTYPES", "MODES", "Plan", "make_plan", "default_budget", "available_memory"]

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
GB = 1 << 30
FP32_BYTES = 4                # host canvases, and the compressor's per-level encoder canvases, are float32
FP16_BYTES = 2                # the fp16 skips and per-level decoder canvases

# ---- the policy -------------------------------------------------------------------------------
COMPRESSOR_TILES = (128, 96, 64, 48, 32, 24, 16)     # candidate compressor tiles (latent units), largest first
NOISE_TILES = (512, 384, 256, 192, 128, 96, 64)      # candidate noise-network tiles, largest first
MIN_NOISE_TILE = 16           # out-of-memory halving stops here (and then the error is raised)
MAX_NOISE_BATCH = 16          # noise tiles per network call at most
OVERLAP_DIVISOR = 4           # the default noise-tile overlap is a quarter of the tile
HOST_BASELINE = 400 << 20     # the interpreter, torch and the model code, resident before any tensor
CPU_DEFAULT_CAP = 4 << 30     # default CPU budget at most this: lean by default, --memory-budget for more
CUDA_BUDGET_SHARE = 0.85      # default CUDA budget: this share of the free device memory
CPU_BUDGET_SHARE = 0.5        # default CPU budget: this share of the available host memory (≤ the cap)
HOST_USABLE_SHARE = 0.8       # kept skips may fill at most this share of the available host memory
FP32_SKIPS_SHARE = 1 / 4      # exact fp32 skips while they take at most this share of the budget
COMPRESSOR_TILE_SHARE = 1 / 8  # a compressor tile's peak at most this share of the budget (larger saves little)
NOISE_ROOM_FLOOR = 1 / 8      # over budget, noise tiles are still sized for this share of the budget

# ---- the memory model's coefficients (live tensors at a stage's peak, measured on the reference nets) ----
NAFNET_LIVE_WIDTHS = 14       # live activations of one NAFNet forward, in (width × padded input) tensors
FINEST_DECODE_LIVE = 6        # live tensors of the finest decoder pass, in (its input channels × tile) tensors
RECOMPUTE_LIVE = 4            # live tensors of the first encoder level recomputed per decode tile, in its channels
WHOLE_COMPRESSOR_FACTOR = 2.5  # whole-image encode/decode peak: the fp32 skips and 1.5× as much in transients
IMAGE_CANVASES = 2            # image-sized host canvases: the input and the output
SAMPLER_CANVASES = 6          # latent-sized canvases of the sampler: x_t, μ, ε, z and two temporaries
DEEPEST_CANVASES = 2          # deepest-level canvases of the tiled compressor alive at once (fp32)


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

    def shrink_noise_tiles(self):
        """After an out-of-memory error: whole → tiled, or halve the noise tile (batch 1). Returns
        False, changing nothing, when the tile is ``MIN_NOISE_TILE`` already."""
        if self.noise_mode == "tiled" and self.noise_tile <= MIN_NOISE_TILE:
            return False
        self.noise_tile = max(MIN_NOISE_TILE,
                              (max(self.canvas_hw) if self.noise_mode == "whole" else self.noise_tile) // 2)
        self.noise_mode = "tiled"
        self.noise_overlap = min(self.noise_overlap or self.noise_tile // OVERLAP_DIVISOR, self.noise_tile // 2)
        self.noise_tiles = len(grid(self.canvas_hw[0], self.canvas_hw[1], self.noise_tile, self.noise_overlap))
        self.noise_batch = 1
        return True


# ---- the budget ---------------------------------------------------------------------------------

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


def default_budget(device):
    """Most of the free device memory; on CPU, half the available host memory, at most 4 GiB."""
    if device.type == "cuda":
        return int(available_memory(device) * CUDA_BUDGET_SHARE)
    return int(min(available_memory(device) * CPU_BUDGET_SHARE, CPU_DEFAULT_CAP))


# ---- the memory model (from the networks' declared facts) ----------------------------------------

def _padded(h, w, multiple):
    return -(-h // multiple) * multiple, -(-w // multiple) * multiple


def noise_bytes(facts, h, w, batch, itemsize):
    """Rough peak activation memory of one noise-network call on a batch of h×w inputs."""
    hp, wp = _padded(h, w, facts.padder_size)
    return int(NAFNET_LIVE_WIDTHS * facts.width * hp * wp * batch * facts.views * itemsize)


def compressor_tile_bytes(facts, tile, recompute, itemsize):
    """Rough peak memory of one tile of the finest decoder pass (the heaviest compressor stage)."""
    side = (tile + 2 * finest_decode_halo(facts.depth)) * facts.scale
    total = FINEST_DECODE_LIVE * facts.finest_decoder_in_channels * side * side * itemsize
    if recompute:   # the encoder's first level over the region grown by its halo
        side_e = side + 2 * encoder_halo(facts.depth, 1) * facts.scale
        total += RECOMPUTE_LIVE * facts.level_channels[0] * side_e * side_e * itemsize
    return int(total)


def level_canvas_bytes(facts, h, w, skip_itemsize):
    """The largest transient per-level canvas of the level-by-level encode (each level's input,
    fp32) and decode (each level's output, in the skips' dtype)."""
    hp, wp = _padded(h, w, facts.multiple)
    depth = facts.depth
    enc = max(facts.level_channels[level] * (hp >> level) * (wp >> level) * FP32_BYTES
              for level in range(1, depth)) if depth > 1 else 0
    dec = max(facts.decoder_channels[level] * (hp >> level) * (wp >> level) * skip_itemsize
              for level in range(1, depth - 1)) if depth > 2 else 0
    return max(enc, dec)


def skip_elements(facts, h, w, from_level=0):
    """Elements of the kept skip tensors of encoder levels ≥ from_level for an h×w image."""
    hp, wp = _padded(h, w, facts.multiple)
    return sum(channels * (hp >> level) * (wp >> level) for level, channels in facts.skips if level >= from_level)


# ---- the plan -------------------------------------------------------------------------------------

def make_plan(model, image_hw, channels, options, device):
    """Choose modes, tile sizes and batch from the image size, the model and the memory budget.

    ``options``: a ``RestoreOptions`` (resolved here against ``model`` if it is not yet)."""
    options = options.resolve(model)
    itemsize = torch.tensor([], dtype=DTYPES[options.precision]).element_size()
    budget = int(options.memory_budget or default_budget(device))
    h, w = image_hw
    comp = model.compressor.memory_facts if model.compressor is not None else None
    noise = model.noise.memory_facts
    sch_T = options.steps or model.sde["T"]
    weight_bytes = sum(p.numel() for p in model.noise.parameters()) * itemsize
    if comp is not None:
        weight_bytes += sum(p.numel() for p in model.compressor.parameters()) * itemsize
        hp, wp = _padded(h, w, comp.multiple)
        ch, cw, cc = hp // comp.scale, wp // comp.scale, comp.latent_channels
    else:
        ch, cw, cc = h, w, channels
    host_fixed = FP32_BYTES * (IMAGE_CANVASES * channels * h * w + SAMPLER_CANVASES * cc * ch * cw) + HOST_BASELINE
    if comp is not None:   # deepest-level canvases of the tiled compressor
        host_fixed += FP32_BYTES * DEEPEST_CANVASES * comp.deepest_channels * ch * cw
    on_host = device.type == "cpu"
    # on a GPU the sampler's canvases live on the device too
    fixed = host_fixed + weight_bytes if on_host else weight_bytes + FP32_BYTES * SAMPLER_CANVASES * cc * ch * cw

    room = budget - fixed
    whole_noise = noise_bytes(noise, ch, cw, 1, itemsize)
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
        comp_peak = int(skip_elements(comp, h, w) * FP32_BYTES * WHOLE_COMPRESSOR_FACTOR)
    elif comp is not None:
        compressor_mode = "tiled"
        host_room = available_memory(torch.device("cpu")) * HOST_USABLE_SHARE - (0 if on_host else host_fixed)
        kept_bytes = {"fp32": FP32_BYTES * skip_elements(comp, h, w) + level_canvas_bytes(comp, h, w, FP32_BYTES),
                      "fp16": FP16_BYTES * skip_elements(comp, h, w, 1) + level_canvas_bytes(comp, h, w, FP16_BYTES),
                      "recompute": level_canvas_bytes(comp, h, w, FP16_BYTES)}
        # fp32 skips (exact) while they take at most a quarter of the budget; then fp16 skips with the
        # finest level recomputed (most of the skip memory, ~2 % of the compressor's work); then all
        # recomputed. The kept skips stay resident through sampling, so the noise network's need counts.
        kinds = [k for k in ("fp32", "fp16", "recompute")
                 if k != "fp32" or kept_bytes["fp32"] <= budget * FP32_SKIPS_SHARE]
        choice = None
        for noise_whole in ((True, False) if want_whole_noise else (False,)):
            for kind in kinds:
                kept = kept_bytes[kind]
                if kept > host_room:
                    continue
                left = room - (kept if on_host else 0)
                if noise_whole and whole_noise > left:
                    continue
                tile_room = min(left, budget * COMPRESSOR_TILE_SHARE)
                for t in ([options.compressor_tile] if options.compressor_tile else COMPRESSOR_TILES):
                    if compressor_tile_bytes(comp, t, kind != "fp32", itemsize) <= tile_room:
                        choice = (kind, t, kept if on_host else 0)
                        break
                if choice:
                    break
            if choice:
                break
        if choice is None:   # over budget whatever we do (the image and output canvases alone):
            # recompute everything, with tiles sized to the tile share of the budget, not the smallest
            fallback = next((t for t in COMPRESSOR_TILES
                             if compressor_tile_bytes(comp, t, True, itemsize) <= budget * COMPRESSOR_TILE_SHARE),
                            COMPRESSOR_TILES[-1])
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
        noise_room = max(room_noise, budget * NOISE_ROOM_FLOOR)
        ntile = tile or next((t for t in NOISE_TILES if noise_bytes(noise, t, t, 1, itemsize) <= noise_room),
                             NOISE_TILES[-1])
        overlap = tile_overlap if tile_overlap is not None else max(ntile // OVERLAP_DIVISOR, 1)
        if overlap >= ntile:
            raise ValueError(f"overlap ({overlap}) must be smaller than the tile ({ntile})")
        tiles = grid(ch, cw, ntile, overlap)
        ntiles = len(tiles)
        per_tile = noise_bytes(noise, *tiles[0].shape, 1, itemsize)
        batch = options.batch or max(1, min(MAX_NOISE_BATCH, ntiles, int(noise_room // max(per_tile, 1))))
        noise_peak = resident_skips + per_tile * batch
    expected = fixed + max(comp_peak, noise_peak)
    return Plan((h, w), (ch, cw), cc, comp is not None, compressor_mode, ctile, skips, comp_tiles, comp_tiles,
                noise_mode, ntile, overlap, batch, ntiles, sch_T, budget, int(expected),
                noise_tile_from_model=model_tile and noise_mode == "tiled")
