"""Checks of the tiled engine against the whole-image reference mode (issue 3), printing numbers.

  python benchmarks/tiling_check.py seams  [--size 517x389] [--tile 16] [--overlap 4]
      golden random noise network forced into tiled mode: PSNR of tiled vs whole, and the seam ratio
      (mean |difference| of horizontally adjacent output pixels across noise-tile borders / elsewhere).
  python benchmarks/tiling_check.py memory --size 6000x4000 [--steps 2] [--budget 3.5GB] [--mode auto]
      one restoration with the official dehazing compressor (golden unet_dehaze) and the small golden
      noise network; prints the plan, seconds per stage and the peak resident set (ru_maxrss).
Run each in its own process: peak RSS only grows within a process.
"""
import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden"


def parse_size(text):
    w, h = (int(v) for v in text.lower().split("x"))
    return h, w


def parse_bytes(text):
    t = text.upper().rstrip("B")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(t[-1:], 1)
    return int(float(t.rstrip("KMG")) * mult)


def golden_model(tmp):
    from tilediff.weights import convert, load_model
    path = convert(GOLDEN / "nafnet_latent_small.pth", GOLDEN / "unet_dehaze.pth", task="dehaze",
                   output=Path(tmp) / "golden_small.safetensors")
    return load_model(path)


def test_image(h, w, seed=0):
    """A smooth colourful image with edges (random noise would hide seams less honestly)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([0.5 + 0.4 * np.sin(xx / (23 + 7 * c) + yy / (31 + 5 * c) + rng.uniform(0, 6)) for c in range(3)], -1)
    img[((xx + 11) // 37 + (yy + 5) // 37) % 2 == 0] *= 0.7   # period not aligned to the tile grid
    return np.clip(img, 0, 1).astype(np.float32)


def seams(args):
    from tilediff import engine
    from tilediff.options import RestoreOptions
    from tilediff.tiling import grid
    h, w = parse_size(args.size)
    with tempfile.TemporaryDirectory() as tmp:
        model = golden_model(tmp)
        x = torch.from_numpy(test_image(h, w).transpose(2, 0, 1).copy())[None]
        common = dict(steps=args.steps, sampler=args.sampler, seed=1)
        whole = engine.restore_tensor(model, x, RestoreOptions(mode="whole", **common))
        stats = {}
        tiled = engine.restore_tensor(model, x, RestoreOptions(mode="tiled", tile=args.tile, overlap=args.overlap,
                                                               **common), stats=stats)
    mse = torch.mean((tiled - whole) ** 2).item()
    psnr = 10 * np.log10(1 / mse) if mse > 0 else float("inf")
    plan = stats["plan"]
    unit = 8
    borders = set()
    for t in grid(plan.canvas_hw[0], plan.canvas_hw[1], plan.noise_tile, plan.noise_overlap):
        for xb in (t.x0, t.x1):
            if 0 < xb * unit < w:
                borders.add(xb * unit)
    diff = (tiled[0, :, :, 1:] - tiled[0, :, :, :-1]).abs().mean(dim=(0, 1))   # per column boundary x|x+1
    cols = torch.arange(1, w)
    at_border = torch.tensor([c in borders for c in cols.tolist()])
    ref_diff = (whole[0, :, :, 1:] - whole[0, :, :, :-1]).abs().mean(dim=(0, 1))
    dev = (tiled - whole)[0].abs().mean(dim=(0, 1))[1:]   # |tiled − whole| per column (right of the pair)
    result = {
        "size": f"{w}x{h}", "noise_tile": plan.noise_tile, "overlap": plan.noise_overlap, "tiles": plan.noise_tiles,
        "steps": args.steps, "sampler": args.sampler,
        "psnr_tiled_vs_whole_db": round(psnr, 2),
        "max_abs_diff": round((tiled - whole).abs().max().item(), 5),
        "border_columns": len(borders),
        "adjacent_diff_at_borders": round(diff[at_border].mean().item(), 6),
        "adjacent_diff_elsewhere": round(diff[~at_border].mean().item(), 6),
        "seam_ratio": round((diff[at_border].mean() / diff[~at_border].mean()).item(), 4),
        "same_ratio_in_whole_output": round((ref_diff[at_border].mean() / ref_diff[~at_border].mean()).item(), 4),
        "deviation_at_borders": round(dev[at_border].mean().item(), 7),
        "deviation_elsewhere": round(dev[~at_border].mean().item(), 7),
    }
    print(json.dumps(result, indent=1))


def memory(args):
    from tilediff import engine
    from tilediff.options import RestoreOptions
    h, w = parse_size(args.size)
    with tempfile.TemporaryDirectory() as tmp:
        model = golden_model(tmp)
    x = torch.from_numpy(test_image(h, w).transpose(2, 0, 1).copy())[None]
    stats = {}
    opts = RestoreOptions(steps=args.steps, mode=args.mode,
                          memory_budget=parse_bytes(args.budget) if args.budget else None)
    start = time.perf_counter()
    out = engine.restore_tensor(model, x, opts, stats=stats)
    total = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(stats["plan"].describe())
    print(json.dumps({"size": f"{w}x{h}", "mode": args.mode, "steps": args.steps,
                      "seconds": {k: round(v, 1) for k, v in stats["seconds"].items()}, "total_s": round(total, 1),
                      "peak_rss_gb": round(peak / 2**30, 3), "output_mean": round(out.mean().item(), 4)}))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("seams")
    s.add_argument("--size", default="517x389")
    s.add_argument("--tile", type=int, default=16)
    s.add_argument("--overlap", type=int, default=4)
    s.add_argument("--steps", type=int, default=10)
    s.add_argument("--sampler", default="ode")
    m = sub.add_parser("memory")
    m.add_argument("--size", default="6000x4000")
    m.add_argument("--steps", type=int, default=2)
    m.add_argument("--mode", default="auto")
    m.add_argument("--budget", default=None)
    args = p.parse_args()
    torch.set_grad_enabled(False)
    {"seams": seams, "memory": memory}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
