"""The model files the benchmark measures.

official  the dehazing task's official configurations (NAFNet width 64, [1,1,1,28] + compressor
          ch 8 × [4,8,8,16]) with random weights: the reference's cost, no download;
small     the official dehazing compressor with a small noise network (width 16, [1,1,1,2]) for
          quick CPU runs: the compressor, which dominates memory, is the real one;
tiny      a tiny compressor (ch 4, ch_mult [1,1,1,1], embed 8: the official latent's shape) and noise
          network (width 8): the engine's own memory and I/O at hundreds of megapixels, where the
          official networks would take hours on a CPU;
shipped   weights/dehaze.safetensors when it exists (skipped with a note otherwise);
a path    any tilediff model file.

Random weights are written with ``weights.save_model`` to a temporary file, so every child process
loads its model exactly as the CLI does (``weights.load_model``).
"""
from pathlib import Path

KINDS = ("official", "small", "tiny", "shipped")
SMALL_NOISE = {"width": 16, "enc_blk_nums": [1, 1, 1, 2], "middle_blk_num": 1, "dec_blk_nums": [1, 1, 1, 1]}
TINY_NOISE = {"width": 8, "enc_blk_nums": [1, 1, 1, 1], "middle_blk_num": 1, "dec_blk_nums": [1, 1, 1, 1]}
TINY_COMPRESSOR = {"in_ch": 3, "out_ch": 3, "ch": 4, "ch_mult": [1, 1, 1, 1], "embed_dim": 8}


class ModelUnavailable(Exception):
    """The model asked for cannot be had here (e.g. no shipped weights yet)."""


def _random_model_file(path, noise_config, compressor_config, task, seed, description):
    import torch

    from tilediff.models import build
    from tilediff.weights import save_model

    torch.manual_seed(seed)
    noise = build(task.variant, noise_config)
    compressor = build("compressor", compressor_config)
    save_model(path, noise.state_dict(), task.variant, noise_config, compressor.state_dict(), compressor_config,
               task=task.name, sde=task.sde, provenance={"benchmark": "random weights", "seed": seed},
               description=description)
    return path


def prepare_model(kind, workdir, seed=0):
    """A model file for ``kind`` (see the module docstring) → dict(path, kind, description, configs)."""
    from tilediff import tasks
    from tilediff.weights import read_metadata

    task = tasks.TASKS["dehaze"]
    workdir = Path(workdir)
    if kind == "official":
        description = "official dehazing configuration (NAFNet w64 [1,1,1,28] + compressor), random weights"
        path = _random_model_file(workdir / "official.safetensors", task.noise_config, task.compressor_config,
                                  task, seed, description)
    elif kind == "small":
        noise_config = dict(task.noise_config, **SMALL_NOISE)
        description = "official dehazing compressor + small noise network (w16 [1,1,1,2]), random weights"
        path = _random_model_file(workdir / "small.safetensors", noise_config, task.compressor_config,
                                  task, seed, description)
    elif kind == "tiny":
        noise_config = dict(task.noise_config, **TINY_NOISE)
        description = "tiny compressor (ch 4, [1,1,1,1]) + tiny noise network (w8), random weights"
        path = _random_model_file(workdir / "tiny.safetensors", noise_config, TINY_COMPRESSOR, task, seed,
                                  description)
    elif kind == "shipped":
        path = task.shipped_weights()
        if path is None:
            raise ModelUnavailable(f"no shipped weights: {tasks.WEIGHTS_DIR / task.default_weights} does not "
                                   "exist yet; use --model official or small")
        description = f"shipped weights {path.name}"
    else:
        path = Path(kind)
        if not path.is_file():
            raise ModelUnavailable(f"--model {kind!r}: expected official, small, shipped or a model file")
        description = f"model file {path}"
    meta = read_metadata(path)
    if meta.get("compressor_config") is None:
        raise ModelUnavailable(f"{path}: the benchmark measures latent (compressor) models; this one is "
                               f"pixel-space ({meta.get('task')})")
    if meta.get("task") == "bokeh" or meta.get("noise_variant") in ("bokeh", "stereo"):
        raise ModelUnavailable(f"{path}: bokeh and stereo models need extra inputs; benchmark a dehazing model")
    return {"kind": kind, "path": str(path), "description": description, "task": meta.get("task"),
            "noise_variant": meta.get("noise_variant"), "noise_config": meta.get("noise_config"),
            "compressor_config": meta.get("compressor_config"), "sde": meta.get("sde")}


def canvas_bytes_per_pixel(compressor_config, channels=3):
    """Bytes per image pixel that a streamed restoration holds whatever its plan: the latent
    canvases (μ, the sampler's state and, for the whole-canvas sampler, its temporaries: 6 ×
    embed_dim × 4 per latent pixel). The input is read by regions and the output written in bands,
    so no image-sized canvas exists; everything else the engine keeps (skips, the deepest level's
    canvases) it may recompute or move to scratch files. It is the memory slope no plan goes below
    while its latent canvases are in RAM."""
    depth = len(compressor_config["ch_mult"])
    unit_area = 4 ** (depth - 1)
    return 6 * compressor_config["embed_dim"] * 4 / unit_area
