"""Time a 100-step restoration of a 640×480 image with a model file (default: the shipped dehaze model).

    python scripts/time_restore.py [MODEL] [--threads N] [--sampler sde]
"""
import argparse
import time

import numpy as np
import torch

from tilediff.restorer import Restorer

ap = argparse.ArgumentParser()
ap.add_argument("model", nargs="?")
ap.add_argument("--threads", type=int, default=0)
ap.add_argument("--sampler", default="sde")
ap.add_argument("--steps", type=int, default=100)
args = ap.parse_args()
if args.threads:
    torch.set_num_threads(args.threads)
r = Restorer("dehaze", weights=args.model, device="cpu")
img = np.random.default_rng(0).random((480, 640, 3), dtype=np.float32)
r.restore(img[:64, :64], steps=2)  # warm-up
t0 = time.time()
out = r.restore(img, steps=args.steps, sampler=args.sampler)
print(f"640x480, {args.steps} {args.sampler} steps, {torch.get_num_threads()} threads: {time.time() - t0:.1f} s")
