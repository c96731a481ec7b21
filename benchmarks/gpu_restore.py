"""Time one full restoration with the official dehazing configuration (random weights) on a device.

  python benchmarks/gpu_restore.py OUT_DIR [--size 6000x4000] [--steps 100] [--precision fp16]
                                   [--device cuda] [--budget-s 150]

First a 2-step warm-up at the same size (Triton compiles the kernels for these shapes; its time is
recorded apart), then the tiled engine ('auto') with the fused kernels and a CUDA-graph-captured
sampler step, then, while time is left, the fused kernels without CUDA graphs and TILEDIFF_KERNELS=0
(eager PyTorch, no graphs). Then one sampler step taken apart on the same latent canvas (network
call, graph replay, positional noise, SDE update, each timed alone) and a torch.profiler table of
3 steps. Writes OUT_DIR/gpu_restore_<device>_<date>.json (plan, seconds per stage, peak device
memory, step parts) and gpu_restore_profile.txt. A smaller size or fewer steps on CPU is a smoke test.
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


def timed(fn, device, repeat=5):
    """Median seconds of fn() over repeat calls (device synchronised around each)."""
    times = []
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return round(sorted(times)[len(times) // 2] * 1e3, 2)


def step_parts(model, x, args, device, out_dir):
    """Time the parts of one sampler step on the real latent canvas (ms), then profile 3 steps."""
    from tilediff import engine
    from tilediff import sde
    from tilediff.engine.cuda_graphs import GraphedNoise
    from tilediff.engine.rng import PositionalNoise
    dtype = engine.DTYPES[args.precision]
    h, w = x.shape[-2] // 8, x.shape[-1] // 8
    mu = torch.randn(1, model.noise_config["img_channel"], h, w, generator=torch.Generator().manual_seed(1)).to(device)
    sch = engine.schedule_for(model)
    fn = engine.whole_noise_fn(model.noise, mu, device, dtype)
    noise = PositionalNoise(0)
    xt = mu + 0.1 * torch.randn_like(mu)
    tm = max(3, sch.T // 2)   # a middle time step (steps >= 3)
    parts = {"canvas": [1, mu.shape[1], h, w]}
    with torch.no_grad():
        os.environ["TILEDIFF_KERNELS"] = "auto"
        parts["network_fused_ms"] = timed(lambda: fn(xt, tm), device)
        if device.type == "cuda":
            graphed = GraphedNoise(fn, device)
            graphed(xt, tm)
            parts["network_fused_graph_ms"] = timed(lambda: graphed(xt, tm), device)
            del graphed
        os.environ["TILEDIFF_KERNELS"] = "0"
        parts["network_eager_ms"] = timed(lambda: fn(xt, tm), device)
        os.environ["TILEDIFF_KERNELS"] = "auto"
        parts["positional_noise_host_ms"] = timed(lambda: noise.region(tm, mu.shape[1], 0, h, 0, w), device)
        parts["positional_noise_to_device_ms"] = timed(lambda: noise(tm, xt), device)
        eps = fn(xt, tm)
        z = noise(tm, xt)
        parts["sde_update_ms"] = timed(lambda: sde.sde_step(sch, xt, mu, eps, tm, z), device)
        parts["step_sde_total_ms"] = timed(lambda: sde.sde_step(sch, xt, mu, fn(xt, tm), tm, noise(tm, xt)), device)
        try:
            from torch.profiler import ProfilerActivity, profile
            acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
            with profile(activities=acts, record_shapes=True) as prof:
                state = xt
                for t in (tm, tm - 1, tm - 2):
                    state = sde.sde_step(sch, state, mu, fn(state, t), t, noise(t, state))
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
            table = prof.key_averages()
            text = ["# 3 sampler steps (sde, fused kernels, no graph), sorted by self CPU time", "",
                    table.table(sort_by="self_cpu_time_total", row_limit=25)]
            if device.type == "cuda":
                text += ["", "# sorted by device time", "",
                         table.table(sort_by="self_cuda_time_total", row_limit=25)]
                # which tensors the copies move (where the aten::copy_ device time comes from)
                copies = [e for e in prof.key_averages(group_by_input_shape=True) if e.key == "aten::copy_"]
                copies.sort(key=lambda e: -e.self_device_time_total)
                text += ["", "# aten::copy_ by input shapes (self device us total, calls)", ""]
                text += [f"{e.self_device_time_total:10.1f} us {e.count:5d}x  {e.input_shapes}" for e in copies[:20]]
            (Path(out_dir) / "gpu_restore_profile.txt").write_text("\n".join(text))
        except Exception as err:
            parts["profile_error"] = f"{type(err).__name__}: {str(err)[:300]}"
    return parts


def run_once(model, x, args, device, cuda_graphs, steps=None):
    from tilediff import engine
    from tilediff.options import RestoreOptions
    stats = {}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    options = RestoreOptions(steps=steps or args.steps, precision=args.precision, cuda_graphs=cuda_graphs)
    engine.restore_tensor(model, x, options, device, stats=stats)
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
    p.add_argument("--only-graphs", action="store_true",
                   help="time only the fused-kernels + CUDA-graph run (skip the no-graph and eager runs)")
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
        os.environ["TILEDIFF_KERNELS"] = "auto"
        start = time.perf_counter()
        try:   # compiles the Triton kernels for these shapes: kept out of the timed runs
            run_once(model, x, args, device, True, steps=2)
        except Exception as err:
            result["warmup_error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"
        result["warmup_2_steps_s"] = round(time.perf_counter() - start, 2)
        print("warm-up (2 steps, kernels compiled)", result["warmup_2_steps_s"], "s", flush=True)
        spent = 0.0
        for label, kernels, graphs in (("fused_kernels_cuda_graphs", "auto", True),
                                       ("fused_kernels", "auto", False), ("eager", "0", False)):
            if args.only_graphs and label != "fused_kernels_cuda_graphs":
                result["runs"][label] = {"skipped": "--only-graphs"}
                continue
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
    try:
        result["step_parts"] = step_parts(model, x, args, device, out.parent)
    except Exception as err:
        result["step_parts"] = {"error": f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"}
    print("step parts", json.dumps(result["step_parts"]), flush=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
