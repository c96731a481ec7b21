"""The plan: for one image, what each stage does and where its canvases live, under a memory budget.

``make_plan`` estimates each stage's peak resident memory from the image size and the facts the
networks declare (``Compressor.memory_facts``, ``ConditionalNAFNet.memory_facts``) and picks the
fastest configuration whose every stage fits the budget. The input is read by regions and the
output written in bands of rows, so no image-sized canvas exists; what does:

- the latent canvases (μ and the sampler's states: 1/64 of the pixels × 8 channels, 0.5 bytes per
  pixel each in fp32), in RAM, or in scratch files when even they do not fit (``canvas``);
- the kept skip features: all levels in fp32, levels ≥ 1 in fp16 (the finest level recomputed per
  decode tile), or only the deepest level's (every finer one recomputed per decode tile);
- the deepest level's canvases around the compressor's two attention layers (``deep_x`` during
  the encode, ``deep_a`` during the decode, and the deepest skips), each in RAM or in a scratch file;
- during the encode, one level's input canvas at a time when it runs level by level (else one
  fused pass with a larger halo and no canvas).

The estimates are deliberately rough (counts of live tensors, measured on the reference networks);
a stage that still runs out of device memory halves its tile and runs again (``oom``). When even
the leanest plan does not fit, ``make_plan`` raises ``MemoryBudgetError`` before any work.
"""
from dataclasses import dataclass, field

import torch

from ..options import MODES   # the engine's modes are the options'
from ..tiling import even_cuts, grid
from .tiled_compressor import decode_reach, encoder_halo

__all__ = ["DTYPES", "MODES", "Plan", "MemoryBudgetError", "make_plan", "default_budget", "available_memory"]

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
GB = 1 << 30
MB = 1 << 20
FP32_BYTES = 4                # host canvases are float32
FP16_BYTES = 2                # fp16 skips

# ---- the policy -------------------------------------------------------------------------------
COMPRESSOR_TILES = (128, 96, 64, 48, 40, 32, 24, 16, 8)  # candidate compressor tiles (latent units), largest first
NOISE_TILES = (512, 384, 256, 192, 128, 96, 64)      # candidate noise-network tiles, largest first
MIN_NOISE_TILE = 16           # out-of-memory halving stops here (and then the error is raised)
MAX_NOISE_BATCH = 16          # noise tiles per network call at most
OVERLAP_DIVISOR = 4           # the default noise-tile overlap is a quarter of the tile
HOST_BASELINE = 400 << 20     # the interpreter, torch and the model code, resident before any tensor
CPU_DEFAULT_CAP = 4 << 30     # default CPU budget at most this: lean by default, --memory-budget for more
CUDA_BUDGET_SHARE = 0.85      # default CUDA budget: this share of the free device memory
CPU_BUDGET_SHARE = 0.5        # default CPU budget: this share of the available host memory (≤ the cap)
HOST_USABLE_SHARE = 0.8       # host canvases may fill at most this share of the available host memory
FP32_SKIPS_SHARE = 1 / 4      # exact fp32 skips (none recomputed) while they take at most this share of the budget
KEPT_SHARE = 1 / 256          # host canvases (kept skips included) in RAM up to this share of the budget; the
                              # rest in scratch files (lean by default: the kernel's page cache holds them, and a
                              # tile reads its region of them in a few row reads). 1/16 held 92 MB more at
                              # 2000×3000 (the deepest canvases), for no measurable time
SCRATCH_DISK_SHARE = 1 / 2    # scratch files may take at most this share of the scratch folder's free space
SCRATCH_BUDGET_FACTOR = 4     # ... and, but for the leanest configuration, this many times the budget
COMPRESSOR_TILE_SHARE = 1 / 8  # a compressor tile's peak at most this share of the budget (larger saves little)
NOISE_ROOM_FLOOR = 1 / 8      # over budget, noise tiles are still sized for this share of the budget
HEAP_TILE_BLOCK = 20 << 20    # on the CPU, compressor tiles whose finest decoder tensor is at most this (the official
                              # compressor: 40 units, 18 MB): at 64, the decode's 43 MB tensors fragmented the heap
                              # (1.36–1.51 GB at 2000×3000 against 1.09–1.10); at 48 (26 MB) the decode peaked at
                              # 0.83–0.88 GiB in 6.2–6.7 s, at 40 at 0.79–0.81 GiB in 6.6–6.8 s (session 11, 2 threads)

# ---- the memory model's coefficients (live tensors at a stage's peak, measured on the reference nets) ----
NAFNET_LIVE_WIDTHS = 14       # live activations of one NAFNet forward, in (width × padded input) tensors
FINEST_DECODE_LIVE = 6        # live tensors of the finest decoder pass, in (its input channels × tile) tensors
ENCODER_LIVE = 2              # transients of the fused local encoder besides its kept outputs (× level channels)
SAMPLER_CANVASES = 6          # latent-sized canvases of the whole-canvas sampler: x_t, μ, ε, z and two temporaries
BANDED_CANVAS_ROWS = 2048     # the banded sampler's buffers: about this many latent rows of canvas
BAND_COPIES = 3               # an output band: the decoder's rows, the writer's samples, the task's (× rows × 3 ch)


class MemoryBudgetError(ValueError):
    """Even the leanest plan needs more memory than the budget allows (raised before any work)."""


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
    encode_mode: str = "level"            # level (level by level, transient level canvases) | fused
    keep_from: int = 0                    # the first encoder level whose skips are kept
    where: dict = field(default_factory=dict)   # canvas name → "ram" | "disk" (plan.CANVAS_ORDER)
    canvas_bytes: dict = field(default_factory=dict)   # canvas name → bytes
    scratch_dir: str = None               # where disk canvases go
    stage_peaks: dict = field(default_factory=dict)    # stage → expected peak bytes
    notes: list = field(default_factory=list)          # what the caller streams (input, output)
    unit: int = 8                         # image pixels per latent pixel (the compressor's scale)

    def describe(self):
        h, w = self.image_hw
        lines = [f"image {w}x{h} -> {'latent' if self.latent else 'pixel'} canvas "
                 f"{self.canvas_hw[1]}x{self.canvas_hw[0]}x{self.canvas_channels}, {self.steps} steps"]
        if self.notes:
            lines += self.notes
        elif self.compressor_mode == "tiled":
            lines.append(f"stream: the input read by regions (a TIFF by its tiles or strips, PNG/JPEG decoded once "
                         f"in their own sample type), the output written {self.band_rows} rows at a time as they "
                         f"are decoded (JPEG assembled in 8 bits first)")
        if self.latent:
            if self.compressor_mode == "whole":
                lines.append("encode/decode: whole image (reference mode)")
            else:
                how = "level by level" if self.encode_mode == "level" else "in one fused pass"
                lines.append(f"encode: {self.encode_tiles} tiles of {self.compressor_tile} latent units, {how}; "
                             f"decode: {self.decode_tiles} tiles in raster order, each through every decoder "
                             f"level; skips {self._skips_text()}")
        if self.where:
            lines.append("canvases: " + "; ".join(
                f"{_CANVAS_NAMES[name]} {self._place_text(name)}" for name in _CANVAS_NAMES
                if name in self.where and self.canvas_bytes.get(name)))
        if self.noise_mode == "whole":
            lines.append("sample: noise network on the whole canvas (exact)")
        else:
            lines.append(f"sample: {self.noise_tiles} tiles of {self.noise_tile} with overlap {self.noise_overlap}"
                         f"{' (the size the model was trained on)' if self.noise_tile_from_model else ''}, "
                         f"batch {self.noise_batch} ({-(-self.noise_tiles // self.noise_batch)} calls per step)")
        lines.append(f"expected peak memory {self.expected_peak / GB:.2f} GB of a {self.budget / GB:.2f} GB budget"
                     + (" (reference mode: the budget does not apply)" if self.compressor_mode == "whole"
                        and self.expected_peak > self.budget else ""))
        return "\n".join(lines)

    def _skips_text(self):
        return {"fp32": "kept on the host (fp32)",
                "fp16": "kept on the host in fp16, the finest level's recomputed per decode tile",
                "recompute": "of the finer levels recomputed from the input per decode tile, the deepest "
                             "level's kept"}.get(self.skips, self.skips)

    def _place_text(self, name):
        size = self.canvas_bytes.get(name, 0)
        size = f"{size / GB:.2f} GB" if size >= GB else f"{size / MB:.0f} MB"
        return f"in RAM ({size})" if self.where[name] == "ram" else f"in a scratch file in {self.scratch_dir} ({size})"

    @property
    def band_rows(self):
        """Image rows of the decode's tallest band: one row of compressor tiles (``tiling.partition``)."""
        cuts = even_cuts(self.canvas_hw[0], max(1, self.compressor_tile))
        return max(b - a for a, b in zip(cuts, cuts[1:])) * self.unit

    def folder(self, name):
        """The scratch folder of a disk canvas, or None for a RAM one (``canvas.Canvas``)."""
        return self.scratch_dir if self.where.get(name) == "disk" else None

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


_CANVAS_NAMES = {"latent": "latent", "deepest": "deepest skips", "deep_x": "encoder deepest map",
                 "deep_a": "decoder deepest map", "skips": "finer skips", "levels": "encoder level inputs"}


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


def skip_elements(facts, h, w, from_level=0, to_level=None):
    """Elements of the skip tensors of encoder levels from_level ≤ level < to_level (default: all)."""
    hp, wp = _padded(h, w, facts.multiple)
    to_level = facts.depth if to_level is None else to_level
    return sum(channels * (hp >> level) * (wp >> level) for level, channels in facts.skips
               if from_level <= level < to_level)


def encoder_level_canvases(facts, h, w):
    """The largest pair of consecutive level input canvases of the level-by-level encode (fp32)."""
    hp, wp = _padded(h, w, facts.multiple)
    sizes = [facts.level_channels[level] * (hp >> level) * (wp >> level) * FP32_BYTES
             for level in range(1, facts.depth)] + [0]
    return max(a + b for a, b in zip(sizes, sizes[1:])) if len(sizes) > 1 else 0


def compressor_tile_bytes(facts, tile, recompute_levels, itemsize):
    """Rough peak memory of one decode tile: the finest decoder level on the tile's region, plus
    the local encoder over the recompute region when ``recompute_levels`` levels are recomputed."""
    side = (tile + 2) * facts.scale
    total = FINEST_DECODE_LIVE * facts.finest_decoder_in_channels * side * side * itemsize
    if recompute_levels:
        side_e = (tile + 2 * (decode_reach(facts.depth) + encoder_halo(facts.depth, recompute_levels))) * facts.scale
        total += _encoder_bytes(facts, side_e, recompute_levels, itemsize)
    return int(total)


def finest_decoder_tensor_bytes(facts, tile, itemsize):
    """The largest tensor of one decode tile: the finest decoder level's input on the tile's region."""
    side = (tile + 2) * facts.scale
    return facts.finest_decoder_in_channels * side * side * itemsize


def fused_encoder_bytes(facts, tile, itemsize):
    """Rough peak memory of one tile of the fused local encoder (all levels, the whole halo)."""
    side = (tile + 2 * encoder_halo(facts.depth)) * facts.scale
    return int(_encoder_bytes(facts, side, facts.depth, itemsize))


def _encoder_bytes(facts, side, levels, itemsize):
    """The local encoder's outputs of ``levels`` levels on a side×side region (3 tensors at level
    0, 2 at each further level) and its transients at level 0."""
    kept = sum((3 if level == 0 else 2) * facts.level_channels[level] * (side >> level) ** 2
               for level in range(levels))
    return (kept + ENCODER_LIVE * facts.level_channels[0] * side * side) * itemsize


# ---- the plan -------------------------------------------------------------------------------------

def make_plan(model, image_hw, channels, options, device, *, held_bytes=0, scratch_dir=None):
    """Choose modes, tile sizes, batch and canvas places from the image size, the model and the budget.

    ``options``: a ``RestoreOptions`` (resolved here against ``model`` if it is not yet).
    ``held_bytes``: what the caller's input and output hold beside the engine (a decoded PNG, the
    writer's buffers, a TIFF's segment cache). ``scratch_dir``: where disk canvases go (None: TMPDIR).
    Raises ``MemoryBudgetError`` when even the leanest plan does not fit the budget.
    """
    from .canvas import scratch_folder
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
    on_host = device.type == "cpu"
    latent_one = FP32_BYTES * cc * ch * cw
    band_bytes = lambda tile_px: BAND_COPIES * FP32_BYTES * 3 * w * tile_px   # noqa: E731
    base = HOST_BASELINE + int(held_bytes) + (weight_bytes if on_host else 0)

    # the noise network: whole canvas (exact) where it fits next to the latent canvases
    tile, tile_overlap, model_tile = options.tile, options.overlap, False
    preferred = (getattr(model, "metadata", None) or {}).get("noise_tile")
    if tile is None and options.mode == "auto" and preferred:
        tile, model_tile = int(preferred), True
        if tile_overlap is None and model.metadata.get("noise_overlap") is not None:
            tile_overlap = int(model.metadata["noise_overlap"])
    force_tiles = options.mode == "tiled" or tile is not None
    whole_noise = noise_bytes(noise, ch, cw, 1, itemsize)
    sampler_ram = SAMPLER_CANVASES * latent_one
    device_fixed = 0 if on_host else weight_bytes

    if comp is None or options.mode == "whole":
        # pixel-space models, and the reference: the canvas is whole in RAM, the image decoded whole
        image_canvas = FP32_BYTES * channels * h * w
        whole_comp = 0
        if comp is not None:   # the reference's whole-image encode/decode: the fp32 skips and transients
            whole_comp = int(skip_elements(comp, h, w) * FP32_BYTES * 2.5)
        fixed = base + image_canvas + (sampler_ram if on_host else 0)
        plan = _noise_plan(options, noise, ch, cw, tile, tile_overlap, force_tiles, whole_noise,
                           budget - fixed - device_fixed, budget, itemsize)
        peaks = {"sample": fixed + device_fixed + plan["peak"], "decode": fixed + device_fixed + whole_comp}
        return Plan((h, w), (ch, cw), cc, comp is not None, "whole" if comp is not None else "none",
                    max(ch, cw), "whole", 0, 0, plan["mode"], plan["tile"], plan["overlap"], plan["batch"],
                    plan["tiles"], sch_T, budget, int(max(peaks.values())), stage_peaks=peaks,
                    noise_tile_from_model=model_tile and plan["mode"] == "tiled")

    # ---- the tiled compressor: configurations from fastest to leanest, the first that fits ------
    scratch = scratch_folder(scratch_dir)
    host_room = available_memory(torch.device("cpu")) * HOST_USABLE_SHARE
    disk_room = _free_disk(scratch) * SCRATCH_DISK_SHARE
    ram_share = budget * KEPT_SHARE if on_host else host_room   # lean by default on the CPU
    kinds = [("fp32", 0, FP32_BYTES), ("fp16", 1, FP16_BYTES), ("recompute", comp.depth - 1, FP32_BYTES)]
    if FP32_BYTES * skip_elements(comp, h, w) > budget * FP32_SKIPS_SHARE:
        kinds = kinds[1:]   # fp32 skips only while small: the finest level's are most of them, and cheap to recompute
    chosen = last = None
    for noise_whole in ((True, False) if not force_tiles else (False,)):
        for kind, keep_from, skip_size in kinds:
            for encode_mode in ("level", "fused"):
                sizes = _canvas_sizes(comp, h, w, ch, cw, cc, keep_from, skip_size, encode_mode)
                banded = on_host and not noise_whole      # the sampler a band at a time (banded_sampling)
                where = _place(sizes, ram_share, latent_on_disk=banded)
                on_disk = sum(sizes[n] for n in where if where[n] == "disk")
                if on_disk > disk_room or sum(sizes[n] for n in where if where[n] == "ram") > host_room:
                    continue
                if on_disk > budget * SCRATCH_BUDGET_FACTOR and (kind, encode_mode) != ("recompute", "fused"):
                    continue    # large scratch files only for the leanest configuration
                ram = {n: (sizes[n] if where[n] == "ram" else 0) for n in sizes}
                ctile = _compressor_tile(options, comp, keep_from, encode_mode, itemsize,
                                         budget * COMPRESSOR_TILE_SHARE, max(ch, cw), on_host)
                tile_dec = compressor_tile_bytes(comp, ctile, keep_from, itemsize)
                tile_enc = fused_encoder_bytes(comp, ctile, itemsize) if encode_mode == "fused" else tile_dec // 2
                band = band_bytes(ctile * comp.scale)
                if on_host:
                    sampler = (_banded_sampler_bytes(options, latent_one, ch, where["latent"] == "ram")
                               if banded else sampler_ram)
                    peaks = {"encode": base + ram["skips"] + ram["deepest"] + ram["deep_x"] + ram["latent"]
                             + ram["levels"] + tile_enc,
                             "decode": base + ram["skips"] + ram["deep_a"] + ram["latent"]
                             + max(ram["deepest"], tile_dec + band)}
                    sample_rest = base + ram["skips"] + ram["deepest"] + sampler
                else:   # on a GPU the budget is the device's: weights, tiles and the sampler's canvases
                    peaks = {"encode": weight_bytes + tile_enc, "decode": weight_bytes + tile_dec}
                    sample_rest = weight_bytes + sampler_ram
                noise_plan = _noise_plan(options, noise, ch, cw, tile, tile_overlap, not noise_whole,
                                         whole_noise, budget - sample_rest, budget, itemsize)
                if noise_whole and noise_plan["mode"] != "whole":
                    continue
                peaks["sample"] = sample_rest + noise_plan["peak"]
                last = (noise_plan, kind, keep_from, encode_mode, ctile, peaks, where, sizes)
                if max(peaks.values()) <= budget:
                    chosen = last
                    break
            if chosen:
                break
        if chosen:
            break
    if chosen is None:
        if last is None:
            raise MemoryBudgetError(f"a {w}x{h} image needs more host memory or scratch space than there is "
                                    f"({host_room / GB:.1f} GB of RAM, {disk_room / GB:.1f} GB in {scratch})")
        peaks = last[5]
        raise MemoryBudgetError(
            f"a {w}x{h} image needs at least {max(peaks.values()) / GB:.2f} GB with this model "
            f"(the leanest plan's {_breakdown(peaks)}), more than the {budget / GB:.2f} GB memory budget; "
            f"give a larger --memory-budget")
    noise_plan, kind, keep_from, encode_mode, ctile, peaks, where, sizes = chosen
    tiles = -(-ch // ctile) * -(-cw // ctile)
    return Plan((h, w), (ch, cw), cc, True, "tiled", ctile, kind, tiles, tiles, noise_plan["mode"],
                noise_plan["tile"], noise_plan["overlap"], noise_plan["batch"], noise_plan["tiles"], sch_T, budget,
                int(max(peaks.values())), noise_tile_from_model=model_tile and noise_plan["mode"] == "tiled",
                encode_mode=encode_mode, keep_from=keep_from, where=where, canvas_bytes=sizes,
                scratch_dir=scratch, stage_peaks=peaks, unit=comp.scale)


# The host canvases, most used per byte first: what goes to RAM first when the budget's share is short
CANVAS_ORDER = ("latent", "deepest", "deep_x", "deep_a", "skips", "levels")


def _canvas_sizes(comp, h, w, ch, cw, cc, keep_from, skip_size, encode_mode):
    """Bytes of each host canvas of a configuration (0 where there is none)."""
    return {"latent": FP32_BYTES * cc * ch * cw,
            "deepest": skip_size * skip_elements(comp, h, w, comp.depth - 1),
            "deep_x": FP32_BYTES * comp.level_channels[-1] * ch * cw,
            "deep_a": FP32_BYTES * comp.deepest_channels * ch * cw,
            "skips": skip_size * skip_elements(comp, h, w, keep_from, comp.depth - 1),
            "levels": encoder_level_canvases(comp, h, w) if encode_mode == "level" else 0}


def _place(sizes, ram_bytes, latent_on_disk):
    """Canvas name → "ram" | "disk": RAM in ``CANVAS_ORDER`` while ``ram_bytes`` last, then scratch
    files (the latent only where the sampler can run on a file canvas)."""
    where, left = {}, ram_bytes
    for name in CANVAS_ORDER:
        fits = sizes[name] <= left or (name == "latent" and not latent_on_disk)
        where[name] = "ram" if fits else "disk"
        left -= sizes[name] if fits else 0
    return where


def _banded_sampler_bytes(options, latent_one, ch, in_ram):
    """RAM of the banded sampler: x and μ (and x̂_0 for mrs, the runs' sum, μ turned) where the
    latent canvases are in RAM, and its band buffers."""
    canvases = 2 + (options.sampler == "mrs") + (options.samples > 1) + bool(options.ensemble)
    return (canvases * latent_one if in_ram else 0) + min(ch, BANDED_CANVAS_ROWS) * latent_one // max(ch, 1)


def _free_disk(folder):
    import shutil
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return 0


def _compressor_tile(options, comp, keep_from, encode_mode, itemsize, room, longest, on_host=False):
    """The largest candidate compressor tile whose decode (and fused encode) tile fits ``room``
    and, on the host, whose finest decoder tensor is at most ``HEAP_TILE_BLOCK``."""
    if options.compressor_tile:
        return min(options.compressor_tile, longest)
    for t in COMPRESSOR_TILES:
        if on_host and t != COMPRESSOR_TILES[-1] and finest_decoder_tensor_bytes(comp, t, itemsize) > HEAP_TILE_BLOCK:
            continue
        need = compressor_tile_bytes(comp, t, keep_from, itemsize)
        if encode_mode == "fused":
            need = max(need, fused_encoder_bytes(comp, t, itemsize))
        if need <= room:
            return min(t, longest)
    return min(COMPRESSOR_TILES[-1], longest)


def _noise_plan(options, facts, ch, cw, tile, tile_overlap, force_tiles, whole_noise, room, budget, itemsize):
    """The noise network's mode, tile, overlap, batch and peak bytes for ``room`` bytes."""
    if options.mode == "whole" or (not force_tiles and whole_noise <= room):
        return dict(mode="whole", tile=max(ch, cw), overlap=0, batch=1, tiles=1, peak=whole_noise)
    noise_room = max(room, budget * NOISE_ROOM_FLOOR)
    ntile = tile or next((t for t in NOISE_TILES if noise_bytes(facts, t, t, 1, itemsize) <= noise_room),
                         NOISE_TILES[-1])
    overlap = tile_overlap if tile_overlap is not None else max(ntile // OVERLAP_DIVISOR, 1)
    if overlap >= ntile:
        raise ValueError(f"overlap ({overlap}) must be smaller than the tile ({ntile})")
    tiles = grid(ch, cw, ntile, overlap)
    per_tile = noise_bytes(facts, *tiles[0].shape, 1, itemsize)
    batch = options.batch or max(1, min(MAX_NOISE_BATCH, len(tiles), int(noise_room // max(per_tile, 1))))
    return dict(mode="tiled", tile=ntile, overlap=overlap, batch=batch, tiles=len(tiles), peak=per_tile * batch)


def _breakdown(peaks):
    stage = max(peaks, key=peaks.get)
    return f"{stage} stage"
