"""How good a noise network's one-shot estimate x̂_0 is at each step, on the held-out real photos.

    python scripts/x0_error_by_step.py                                 # the shipped model
    python scripts/x0_error_by_step.py --weights NEW.safetensors --steps 100,80,50,10

For each photo of the eval split (640×400, as ``eval_real_photos.py``) and haze density (the v1
evaluation haze), the latents μ = z(hazy) and x_0 = z(clean); at each step t a state is drawn from
the forward process, x_t = ``sde.noisy_state`` around x_0 (what training shows the network) or, with
``--around-mu``, around μ (what a run from noise starts from: no trace of x_0), and the network's
x̂_0 = ``sde.predict_x0`` is compared with x_0: mean absolute error in latent units, beside that of
returning μ itself. A run from noise decides the haze on its first estimates; where x̂_0 is worse
than μ, the network's estimate there is noise. Seeded: the same numbers on every run.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval_real_photos import load_photo, to_tensor  # noqa: E402

from tilediff import sde  # noqa: E402
from tilediff.training.data import list_images  # noqa: E402
from tilediff.training.evaluation import haze_for_eval  # noqa: E402
from tilediff.weights import load_model  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", default=str(Path(__file__).resolve().parents[1] / "weights" / "dehaze.safetensors"))
    ap.add_argument("--photos", default=".train_state/photos/eval")
    ap.add_argument("--density", default="light,moderate,dense")
    ap.add_argument("--steps", default="100,80,60,50,30,10", help="the steps t to look at")
    ap.add_argument("--around-mu", action="store_true", help="states around μ instead of x_0")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_model(args.weights)
    sch = sde.make_schedule(**model.sde)
    steps = [int(s) for s in args.steps.split(",")]
    densities = [d.strip() for d in args.density.split(",") if d.strip()]
    errors = {}          # (density, t) -> [x̂0 error], (density, "mu") -> [μ error]
    for path in list_images(args.photos):
        clean = load_photo(path, (640, 400))
        for density in densities:
            hazy = haze_for_eval(clean, path.name, 0, density)[0]
            with torch.no_grad():
                mu, _ = model.compressor.encode(to_tensor(hazy))
                x0, _ = model.compressor.encode(to_tensor(clean))
                errors.setdefault((density, "mu"), []).append(float((mu - x0).abs().mean()))
                g = torch.Generator().manual_seed(0)
                for t in steps:
                    z = torch.randn(mu.shape, generator=g)
                    xt = sde.noisy_state(sch, mu if args.around_mu else x0, mu, t, z)
                    x0_hat = sde.predict_x0(sch, xt, mu, model.noise(xt, mu, t), t)
                    errors.setdefault((density, t), []).append(float((x0_hat - x0).abs().mean()))
        print(path.name, file=sys.stderr, flush=True)
    where = "around μ" if args.around_mu else "around x_0"
    print(f"{Path(args.weights).name}: mean |x̂_0 − x_0| in latent units, states {where}, "
          f"{len(errors[(densities[0], 'mu')])} photos\n")
    print("| haze | μ itself | " + " | ".join(f"t = {t}" for t in steps) + " |")
    print("|---|---|" + "---|" * len(steps))
    for density in densities:
        cells = [f"{np.mean(errors[(density, t)]):.3f}" for t in steps]
        print(f"| {density} | {np.mean(errors[(density, 'mu')]):.3f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
