"""Write a model file from a noise-stage checkpoint (e.g. to evaluate a run while it trains).

    python scripts/export_checkpoint.py STATE_DIR OUT.safetensors [--raw] [--max-sigma 30] [--compressor FILE]

Uses STATE_DIR/noise.ckpt (EMA weights unless --raw) and STATE_DIR/compressor.safetensors (or --compressor:
a stage-1 file or a model file whose compressor the run used, e.g. when fine-tuning with --init-noise).
"""
import argparse
import json

from tilediff import training as T
from tilediff.tasks import get_task
from tilediff.weights import save_model

ap = argparse.ArgumentParser()
ap.add_argument("state_dir")
ap.add_argument("out")
ap.add_argument("--raw", action="store_true")
ap.add_argument("--max-sigma", type=float, default=30)
ap.add_argument("--compressor", help="default: STATE_DIR/compressor.safetensors")
ap.add_argument("--noise-config", default=json.dumps(T.DEFAULT_NOISE))
args = ap.parse_args()
ck = T.load_checkpoint(f"{args.state_dir}/noise.ckpt")
comp, comp_cfg, comp_training = T.load_compressor(args.compressor or f"{args.state_dir}/compressor.safetensors")
state = ck["model"] if args.raw else ck["ema"]["shadow"]
task = get_task("dehaze")
sde = dict(task.sde, max_sigma=args.max_sigma)
save_model(args.out, state, task.variant, json.loads(args.noise_config), comp.state_dict(), comp_cfg, task=task.name,
           sde=sde, description=f"checkpoint export, step {ck['step']}",
           extra={"training": {"compressor": comp_training.get("compressor", {}),
                               "noise": {"iters": ck["step"], "of": ck["iters"], "ema": not args.raw}}})
print(f"wrote {args.out} (noise step {ck['step']} of {ck['iters']}, {'raw' if args.raw else 'EMA'} weights)")
