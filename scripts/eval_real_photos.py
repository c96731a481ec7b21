"""Dehazing on held-out real photographs at 640×400: hazy, DCP, the model's defaults, the network alone.

    python scripts/prepare_photos.py                     # once: .train_state/photos/{train,eval}
    nice -n 10 python scripts/eval_real_photos.py --json .train_state/eval_real_photos.json
    python scripts/eval_real_photos.py --weights NEW.safetensors --json new.json   # a v2 model

Each photo of the eval split (``--photos``) is centre-cropped to the aspect of ``--size`` and resized
to it (Lanczos), then hazed deterministically at each ``--density`` (``--haze v1``: the evaluation
haze of ``tilediff eval``, ``tilediff.training.evaluation.haze_for_eval``, keyed by (seed, file name);
``--haze v2``: ``haze.add_haze_v2`` keyed the same way, with tinted, non-uniform airlight and image-cue
depth). Scored, PSNR dB / SSIM against the clean photo:

* hazy: the input itself;
* DCP: ``tilediff.tasks.dehaze.dcp.dark_channel_prior``;
* defaults: ``Restorer.restore(hazy, steps=STEPS, seed=SEED)`` with the model file's defaults;
* network alone: ``Restorer.restore(hazy, prior="none", recompose=False, ...)``;
* with ``--bound``, the compressor's bound: the clean photo's latent decoded with the hazy input's
  skips, what a perfect noise network would give (no recomposition).

Then each haze-free photo restored as it is (``clear``: defaults, network alone, and DCP), against
itself: a dehazer should leave a clear photo alone. Prints markdown tables (means per density, and per
image); ``--json`` keeps every value and is rewritten after every image, and ``--resume`` skips what a
previous run of the same settings already has there (slow machines: stop and continue). Needs Pillow.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tilediff.tasks.dehaze import haze
from tilediff.tasks.dehaze.dcp import dark_channel_prior
from tilediff.training.data import list_images
from tilediff.training.evaluation import haze_for_eval
from tilediff.training.metrics import psnr, ssim

METHODS = ("hazy", "dcp", "defaults", "network", "bound")
LABELS = {"hazy": "hazy input", "dcp": "DCP", "defaults": "model, file defaults",
          "network": "network alone (`prior=\"none\", recompose=False`)",
          "bound": "bound: clean latent, hazy skips"}
SHORT = {"hazy": "hazy", "dcp": "DCP", "defaults": "defaults", "network": "network alone", "bound": "bound"}


def load_photo(path, size):
    """The photo centre-cropped to the aspect of ``size`` (w, h) and resized to it; float32 HxWx3."""
    im = Image.open(path).convert("RGB")
    w, h = im.size
    tw, th = size
    if w * th > h * tw:       # too wide: crop the sides
        cw, ch = round(h * tw / th), h
    else:                     # too tall: crop top and bottom
        cw, ch = w, round(w * th / tw)
    x, y = (w - cw) // 2, (h - ch) // 2
    im = im.crop((x, y, x + cw, y + ch)).resize((tw, th), Image.LANCZOS)
    return np.asarray(im, dtype=np.float32) / 255.0


def to_tensor(img):
    """An H x W x 3 float image as a (1, 3, H, W) float32 tensor (what the compressor takes)."""
    return torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32)).permute(2, 0, 1)[None]


def make_hazy(clean, name, seed, density, kind):
    if kind == "v1":
        return haze_for_eval(clean, name, seed, density)[0]
    rng = np.random.default_rng([int(seed), zlib.crc32(str(name).encode()), 2])
    return haze.add_haze_v2(clean, rng, density)[0]


def score(out, clean):
    return {"psnr": round(psnr(out, clean), 4), "ssim": round(ssim(out, clean), 4)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--photos", default=".train_state/photos/eval", help="folder of clean eval photos")
    ap.add_argument("--weights", help="model file (default: the shipped dehazing model)")
    ap.add_argument("--size", default="640x400", help="WxH every photo is cropped and resized to")
    ap.add_argument("--density", default="light,moderate,dense")
    ap.add_argument("--seed", type=int, default=0, help="haze and sampler seed")
    ap.add_argument("--haze", choices=["v1", "v2"], default="v1")
    ap.add_argument("--steps", type=int, help="sampler steps (default: the model's)")
    ap.add_argument("--images", help="comma-separated stems: a subset of the photos")
    ap.add_argument("--no-clear", action="store_true", help="skip the haze-free photos")
    ap.add_argument("--no-network", action="store_true", help="skip the network-alone runs")
    ap.add_argument("--bound", action="store_true",
                    help="also the compressor's bound: the clean latent decoded with the hazy input's skips")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="the Restorer's device: cpu, cuda or auto")
    ap.add_argument("--json", help="write every value here (after each image)")
    ap.add_argument("--resume", action="store_true", help="keep and skip what --json already holds")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    from tilediff import Restorer
    restorer = Restorer("dehaze", weights=args.weights, device=args.device)
    size = tuple(int(v) for v in args.size.lower().split("x"))
    densities = [d.strip() for d in args.density.split(",") if d.strip()]
    files = list_images(args.photos)
    if args.images:
        wanted = [s.strip() for s in args.images.split(",")]
        files = [f for f in files if f.stem in wanted]
        missing = set(wanted) - {f.stem for f in files}
        if missing:
            sys.exit(f"not in {args.photos}: {', '.join(sorted(missing))}")
    settings = {"weights": str(restorer.weights), "size": list(size), "seed": args.seed, "haze": args.haze,
                "steps": args.steps}
    result = {"settings": settings, "images": {}}
    if args.resume and args.json and Path(args.json).exists():
        previous = json.loads(Path(args.json).read_text())
        if previous.get("settings") == settings:
            result = previous
        else:
            print("note: --json holds other settings; starting afresh", file=sys.stderr)
    methods = [m for m in METHODS if not (args.no_network and m == "network") and (args.bound or m != "bound")]

    def bound(img, clean):
        """The compressor decoding the clean photo's latent with ``img``'s skips (its own, for a clear photo)."""
        comp = restorer.model.compressor
        with torch.no_grad():
            _, skips = comp.encode(to_tensor(img))
            latent, _ = comp.encode(to_tensor(clean))
            return comp.decode(latent, skips)[0].permute(1, 2, 0).clamp(0, 1).numpy()

    def restore(img, method):
        # every call from the same global RNG state: a restoration that draws from torch's or numpy's
        # global generator (not only from its seeded one) then gives the same result in any order
        torch.manual_seed(args.seed)
        np.random.seed(args.seed)
        t0 = time.perf_counter()
        if method == "defaults":
            out = restorer.restore(img, steps=args.steps, seed=args.seed)
        elif method == "network":
            out = restorer.restore(img, steps=args.steps, seed=args.seed, prior="none", recompose=False)
        else:
            out = dark_channel_prior(img)
        return out, round(time.perf_counter() - t0, 2)

    for path in files:
        name = path.name
        clean = load_photo(path, size)
        rows = result["images"].setdefault(name, {})
        cases = list(densities) + ([] if args.no_clear else ["clear"])
        for case in cases:
            row = rows.setdefault(case, {})
            todo = [m for m in methods if m not in row and not (case == "clear" and m == "hazy")]
            if not todo:
                continue
            inp = clean if case == "clear" else make_hazy(clean, name, args.seed, case, args.haze)
            for m in todo:
                if m == "hazy":
                    row[m] = score(inp, clean)
                    continue
                out, seconds = (bound(inp, clean), 0.0) if m == "bound" else restore(inp, m)
                row[m] = {**score(out, clean), "seconds": seconds}
                print(f"{name} {case} {m}: {row[m]['psnr']:.2f} dB / {row[m]['ssim']:.3f} ({seconds:.1f} s)",
                      file=sys.stderr, flush=True)
            if args.json:
                Path(args.json).write_text(json.dumps(result, indent=1))
    print(tables(result, densities, methods, not args.no_clear))


def _mean(rows, case, method, key):
    vals = [r[case][method][key] for r in rows if case in r and method in r[case]]
    return (float(np.mean(vals)), len(vals)) if vals else (None, 0)


def _cell(rows, case, method):
    p, n = _mean(rows, case, method, "psnr")
    s, _ = _mean(rows, case, method, "ssim")
    return "—" if p is None else f"{p:.2f} / {s:.3f}"


def tables(result, densities, methods, clear=True):
    """Markdown: means per density (and haze-free), then PSNR per image and case."""
    rows = list(result["images"].values())
    st = result["settings"]
    lines = [f"Real photos, {st['size'][0]}×{st['size'][1]}, haze {st['haze']}, seed {st['seed']}, "
             f"steps {st['steps'] or 'model default'}, {Path(st['weights']).name}; PSNR dB / SSIM, "
             "means over the images", "",
             "| haze | n | " + " | ".join(LABELS[m] for m in methods) + " |",
             "|---|---|" + "---|" * len(methods)]
    for case in list(densities) + (["clear"] if clear else []):
        n = max(_mean(rows, case, m, "psnr")[1] for m in methods)
        label = "haze-free (against itself)" if case == "clear" else case
        cells = ["—" if (case == "clear" and m == "hazy") else _cell(rows, case, m) for m in methods]
        lines.append(f"| {label} | {n} | " + " | ".join(cells) + " |")
    clear_methods = [SHORT[m] for m in methods if m != "hazy"]
    cases = list(densities) + (["clear"] if clear else [])
    lines += ["", f"Per image, PSNR dB ({' / '.join(SHORT[m] for m in methods)}; clear: "
              f"{' / '.join(clear_methods)}):", "", "| image | " + " | ".join(cases) + " |",
              "|---|" + "---|" * len(cases)]
    for name, r in result["images"].items():
        cells = []
        for case in list(densities) + (["clear"] if clear else []):
            ms = [m for m in methods if not (case == "clear" and m == "hazy")]
            cells.append(" / ".join(f"{r[case][m]['psnr']:.2f}" if case in r and m in r[case] else "—" for m in ms))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
