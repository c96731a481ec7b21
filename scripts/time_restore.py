"""Time a restoration of a 640×480 image with a model file (default: the shipped dehaze model).

    python scripts/time_restore.py [MODEL] [--threads N] [--steps N] [--sampler S] [--samples K]
        [--no-ensemble] [--prior none|dcp] [--no-recompose] [--repeat 3]

Prints the median of --repeat runs; --steps (network evaluations per run), --sampler, --samples, the
ensemble, the prior start and the recomposition default to the model file's choices (a run with a
prior starts at step prior_t × T and takes its evaluations from there).
"""
import argparse
import time

import numpy as np
import torch

from tilediff.restorer import Restorer

ap = argparse.ArgumentParser()
ap.add_argument("model", nargs="?")
ap.add_argument("--threads", type=int, default=0)
ap.add_argument("--sampler", help="default: the model file's default_sampler, else sde")
ap.add_argument("--steps", type=int, help="default: the model file's default_steps, else T")
ap.add_argument("--samples", type=int)
ap.add_argument("--repeat", type=int, default=3)
ap.add_argument("--no-ensemble", action="store_true", help="one orientation even if the model file asks for four")
ap.add_argument("--prior", choices=["none", "dcp"], help="default: the model file's default_prior")
ap.add_argument("--no-recompose", action="store_true", help="skip the recomposition even if the model file asks for it")
args = ap.parse_args()
if args.threads:
    torch.set_num_threads(args.threads)
r = Restorer("dehaze", weights=args.model, device="cpu")
img = np.random.default_rng(0).random((480, 640, 3), dtype=np.float32)
r.restore(img[:64, :64], steps=2)  # warm-up
steps = args.steps or r.options().steps
samples = args.samples or r.default_samples
sampler = args.sampler or r.default_sampler
ensemble = r.default_ensemble and not args.no_ensemble
prior, prior_t = r.prior_choice(args.prior, None)
recompose = r.default_recompose and not args.no_recompose
times = []
for _ in range(args.repeat):
    t0 = time.time()
    r.restore(img, steps=steps, sampler=sampler, samples=samples, ensemble=ensemble, prior=prior or "none",
              recompose=recompose)
    times.append(time.time() - t0)
start = f", from the {prior} latent at step {round(prior_t * r.model.sde.get('T', 100))}" if prior else ""
print(f"640x480, {steps} {sampler} steps x {samples} samples{' in four orientations' if ensemble else ''}{start}"
      f"{', recomposed' if recompose else ''}, "
      f"{torch.get_num_threads()} threads: "
      f"median {np.median(times):.1f} s of {args.repeat} ({', '.join(f'{t:.1f}' for t in times)})")
