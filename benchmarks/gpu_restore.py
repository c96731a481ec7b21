"""Time one full restoration with the official dehazing configuration (random weights) on a device.

  python benchmarks/gpu_restore.py OUT_DIR [--size 6000x4000] [--steps 100] [--precision fp16]
                                   [--device cuda] [--budget-s 150]

Runs the tiled engine ('auto') with the fused kernels and a CUDA-graph-captured sampler step, then,
while time is left, the fused kernels without CUDA graphs and TILEDIFF_KERNELS=0 (eager PyTorch, no
graphs), and writes OUT_DIR/gpu_restore_<device>_<date>.json with the
plan, seconds per stage and peak device memory. A smaller size or fewer steps on CPU is a smoke test.
"""
import argparse
import datetime
import json
import os
import re
import time
from pathlib import Path

import torch


def official_model(device):
    from tilediff.models import build
    from tilediff.tasks import TASKS
    from tilediff.weights import Model
    task = TASKS["dehaze"]
    torch.manual_seed(0)
    noise = build("latent", task.noise_config).eval()
    comp = build("compressor", task.compressor_config).eval()
    for p in list(noise.parameters()) + list(comp.parameters()):  # β, γ start at 0: give them weight
        if p.dim() == 4 and p.shape[0] == 1:
            p.data.normal_(0, 0.1)
    return Model(noise, comp, "dehaze", "latent", task.noise_config, task.compressor_config, task.sde)


def run_once(model, x, args, device, cuda_graphs):
    from tilediff import engine
    stats = {}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    engine.restore_tensor(model, x, engine.Options(steps=args.steps, precision=args.precision, stats=stats,
                                                cuda_graphs=cuda_graphs), device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    row = {"seconds": {k: round(v, 2) for k, v in stats["seconds"].items()},
           "total_s": round(time.perf_counter() - start, 2), "plan": stats["plan"].describe(),
           "cuda_graph": stats.get("cuda_graph")}
    if device.type == "cuda":
        row["max_memory_allocated_gb"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        row["max_memory_reserved_gb"] = round(torch.cuda.max_memory_reserved(device) / 2**30, 2)
    return row


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir", nargs="?", default="benchmarks/results")
    p.add_argument("--size", default="6000x4000")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--precision", default="fp16")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--budget-s", type=float, default=150, help="skip the eager run if the first took longer")
    args = p.parse_args()
    device = torch.device(args.device)
    w, h = (int(v) for v in args.size.lower().split("x"))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    result = {"device": name, "size": args.size, "steps": args.steps, "precision": args.precision,
              "date": datetime.datetime.now().isoformat(timespec="seconds"), "runs": {}}
    out = Path(args.out_dir) / f"gpu_restore_{re.sub(r'[^A-Za-z0-9]+', '-', name).strip('-')}_{datetime.date.today()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    model = official_model(device)
    x = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        spent = 0.0
        for label, kernels, graphs in (("fused_kernels_cuda_graphs", "auto", True),
                                       ("fused_kernels", "auto", False), ("eager", "0", False)):
            if spent > args.budget_s:
                result["runs"][label] = {"skipped": f"the runs before took {spent:.0f} s (budget {args.budget_s} s)"}
                continue
            os.environ["TILEDIFF_KERNELS"] = kernels
            try:
                result["runs"][label] = run_once(model, x, args, device, graphs)
            except Exception as err:  # record and go on: the JSON is the report
                result["runs"][label] = {"error": f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"}
            out.write_text(json.dumps(result, indent=1))
            print(label, json.dumps(result["runs"][label]), flush=True)
            spent += result["runs"][label].get("total_s", 0)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
