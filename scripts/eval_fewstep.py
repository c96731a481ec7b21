"""Quality against network evaluations (NFE) of the few-step samplers (issue 18): network alone.

    python scripts/eval_fewstep.py [--weights weights/dehaze.safetensors] [--nfe 5,10,20,50,100]
        [--samplers ode,posterior,mrs] [--density moderate] [--seed 0,1,2] [--spacing trailing]
        [--size 320x200] [--crop]

The shipped dehazing model on its evaluation photos (camera, chelsea, coffee, rocket from
scikit-image; grace_hopper from matplotlib's sample data, used only when matplotlib is installed —
scikit-image does not ship it), resized to WxH and hazed deterministically (``add_haze`` with a
seeded generator). Then, without the engine (no tiling, no DCP prior, no recomposition, one
orientation): latent μ, skips = encode(hazy); x_T = μ + λz (seeded); ``sde.sample(..., steps=N)``;
decode with the hazy skips; clamp; PSNR against the clean photo. Every sampler and N starts from the
same x_T, and the posterior sampler's z at a visited step t is the same for every N.
Prints a markdown table: mean PSNR (dB) and mean sampling seconds per image, one torch thread.
Needs scikit-image (``pip install scikit-image``).
"""
import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tilediff import sde  # noqa: E402
from tilediff.weights import load_model  # noqa: E402

try:  # the haze model moves during the package restructuring
    from tilediff.tasks.dehaze.haze import add_haze
except ImportError:
    from tilediff.degrade import add_haze

PHOTOS = ["camera", "chelsea", "coffee", "rocket", "grace_hopper"]


def photo(name):
    """A photo as H x W x 3 uint8, or None where it is not available here."""
    import skimage.data
    if hasattr(skimage.data, name):
        img = getattr(skimage.data, name)()
    elif name == "grace_hopper":
        try:
            from matplotlib import cbook
        except ImportError:
            return None
        with cbook.get_sample_data("grace_hopper.jpg") as f:
            img = np.asarray(Image.open(f).convert("RGB"))
    else:
        return None
    img = np.asarray(img)
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    return img[..., :3]


def psnr(a, b):
    mse = float(torch.mean((a.double() - b.double()) ** 2))
    return 10 * math.log10(1 / max(mse, 1e-12))


def to_tensor(img):
    return torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32)).permute(2, 0, 1)[None]


def seeded_randn(like, seed, image, t):
    """Standard normal noise shaped like ``like``, a pure function of (seed, image, step t; −1 for x_T)."""
    g = torch.Generator().manual_seed((seed * 1009 + image) * 100003 + t + 1)
    return torch.randn(like.shape, generator=g, dtype=like.dtype)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", default=str(Path(__file__).resolve().parents[1] / "weights" / "dehaze.safetensors"))
    ap.add_argument("--nfe", default="5,10,20,50,100")
    ap.add_argument("--samplers", default="ode,posterior,mrs")
    ap.add_argument("--density", default="moderate")
    ap.add_argument("--seed", default="0,1,2", help="haze/noise seeds, comma-separated (means over all)")
    ap.add_argument("--spacing", default=sde.DEFAULT_SPACING, choices=sde.SPACINGS)
    ap.add_argument("--size", default="320x200", help="W x H the photos are resized (or cropped) to")
    ap.add_argument("--crop", action="store_true", help="centre crops at the native scale instead of resizing")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    nfes = [int(n) for n in args.nfe.split(",")]
    samplers = args.samplers.split(",")
    seeds = [int(v) for v in args.seed.split(",")]
    w, h = (int(v) for v in args.size.lower().split("x"))

    model = load_model(args.weights)
    sch = sde.make_schedule(**model.sde)
    images = []
    for i, name in enumerate(PHOTOS):
        img = photo(name)
        if img is None:
            print(f"(skipped {name}: not available here)")
            continue
        if args.crop:
            top, left = (img.shape[0] - h) // 2, (img.shape[1] - w) // 2
            clean = img[top:top + h, left:left + w].astype(np.float32) / 255
        else:
            clean = np.asarray(Image.fromarray(img).resize((w, h), Image.LANCZOS), dtype=np.float32) / 255
        for seed in seeds:
            hazy, _ = add_haze(clean, np.random.default_rng(1000 * seed + i), density=args.density)
            images.append((seed, i, name, to_tensor(clean), to_tensor(hazy)))

    psnrs = {}   # (sampler, nfe) -> list of dB
    secs = {}
    fidelity = {}  # (sampler, nfe) -> dB against the ODE solved on all T steps (mrs, N = T)
    base = {"hazy input": [], "decode(μ), 0 NFE": []}
    with torch.no_grad():
        for seed, i, name, clean, hazy in images:
            mu, hidden = model.compressor.encode(hazy)
            base["hazy input"].append(psnr(hazy, clean))
            base["decode(μ), 0 NFE"].append(psnr(model.compressor.decode(mu, hidden).clamp(0, 1), clean))
            x_T = sde.start_state(sch, mu, seeded_randn(mu, seed, i, -1))
            noise = (lambda t, like, seed=seed, i=i: seeded_randn(like, seed, i, t))
            noise_fn = (lambda x, t, mu=mu: model.noise(x, mu, t))
            exact = model.compressor.decode(sde.sample(noise_fn, x_T, mu, sch, "mrs"), hidden).clamp(0, 1)
            for sampler in samplers:
                for n in nfes:
                    t0 = time.perf_counter()
                    out = sde.sample(noise_fn, x_T, mu, sch, sampler, noise if sde.NEEDS_NOISE[sampler] else None,
                                     steps=n, spacing=args.spacing)
                    secs.setdefault((sampler, n), []).append(time.perf_counter() - t0)
                    restored = model.compressor.decode(out, hidden).clamp(0, 1)
                    psnrs.setdefault((sampler, n), []).append(psnr(restored, clean))
                    fidelity.setdefault((sampler, n), []).append(psnr(restored, exact))

    how = "centre crops" if args.crop else "resized"
    print(f"\n{len(images) // len(seeds)} photos {how} to {w}x{h}, haze {args.density}, seeds {args.seed}, "
          f"spacing {args.spacing}, "
          f"{args.threads} thread(s); mean PSNR dB (mean sampling seconds per image)\n")
    print("| sampler | " + " | ".join(f"{n} NFE" for n in nfes) + " |")
    print("|---|" + "---|" * len(nfes))
    for sampler in samplers:
        cells = [f"{np.mean(psnrs[sampler, n]):.2f} ({np.mean(secs[sampler, n]):.2f} s)" for n in nfes]
        print(f"| {sampler} | " + " | ".join(cells) + " |")
    print("\nPSNR dB against the probability-flow ODE solved on all T steps (mrs with N = T): "
          "how well each sampler solves the ODE (posterior: a different, stochastic process)\n")
    print("| sampler | " + " | ".join(f"{n} NFE" for n in nfes) + " |")
    print("|---|" + "---|" * len(nfes))
    for sampler in samplers:
        cells = ["(the reference)" if sampler == "mrs" and n == sch.T else f"{np.mean(fidelity[sampler, n]):.2f}"
                 for n in nfes]
        print(f"| {sampler} | " + " | ".join(cells) + " |")
    print("\n" + "; ".join(f"{k}: {np.mean(v):.2f} dB" for k, v in base.items()))
    print("per image, " + ", ".join(f"{name}/{seed}" for seed, _, name, _, _ in images) + ":")
    for (sampler, n), v in psnrs.items():
        print(f"  {sampler} {n}: " + " ".join(f"{p:.2f}" for p in v))


if __name__ == "__main__":
    main()
