"""The shipped dehazing model with its file defaults on a GPU: correctness and time, 6000 × 4000.

  python benchmarks/gpu_dehaze_defaults.py OUT_DIR [--size 6000x4000] [--precision fp16] [--repeat 2]

1. Correctness: the bundled example (held-out rocket photo, moderate haze) restored on the GPU in fp32
   with the file's defaults (ODE × 4 in four orientations, dark-channel-prior start at t = 0.5 T,
   recomposition) against the same on the CPU, and both against the clean photo (PSNR dB).
2. The GPU versions of the dark channel prior and the recomposition (tilediff.tasks.dehaze.torch_ops) against the
   numpy ones at the full size: max abs difference and seconds of each (device synchronised).
3. Full restorations at --size (the example photo tiled and hazed): the file's defaults, then without
   prior and recomposition (100 steps × 4 runs), median of --repeat after a warm-up, seconds per stage.
Writes OUT_DIR/gpu_dehaze_defaults_<device>_<date>.json and prints it.
"""
import argparse
import datetime
import json
import re
import time
from pathlib import Path

import numpy as np
import torch

import tilediff
from tilediff.tasks.dehaze import torch_ops as haze_torch
from tilediff.tasks.dehaze.dcp import dark_channel_prior
from tilediff.tasks.dehaze.haze import add_haze
from tilediff.io import read_image
from tilediff.training.metrics import psnr
from tilediff.tasks.dehaze.recompose import haze_recompose
from tilediff.restorer import Restorer, to_float_rgb


def seconds(fn, device):
    torch.cuda.synchronize(device) if device.type == "cuda" else None
    start = time.perf_counter()
    out = fn()
    torch.cuda.synchronize(device) if device.type == "cuda" else None
    return out, round(time.perf_counter() - start, 3)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("out_dir", nargs="?", default="benchmarks/results")
    p.add_argument("--size", default="6000x4000")
    p.add_argument("--precision", default="fp16")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    device = torch.device(args.device)
    w, h = (int(v) for v in args.size.lower().split("x"))
    data = Path(tilediff.__file__).parent / "data"
    hazy_example = to_float_rgb(read_image(data / "example_hazy.png").rgb)
    clean_example = to_float_rgb(read_image(data / "example_clean.png").rgb)
    result = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "size": [w, h], "precision": args.precision}

    # 1. correctness on the bundled example, fp32, device vs CPU
    on_device = Restorer("dehaze", device=device).restore(hazy_example)
    on_cpu = Restorer("dehaze", device="cpu").restore(hazy_example)
    result["example"] = {"psnr_hazy": round(psnr(hazy_example, clean_example), 2),
                         "psnr_device": round(psnr(on_device, clean_example), 2),
                         "psnr_cpu": round(psnr(on_cpu, clean_example), 2),
                         "psnr_dcp": round(psnr(dark_channel_prior(hazy_example), clean_example), 2),
                         "psnr_device_vs_cpu": round(psnr(on_device, on_cpu), 2)}
    print(json.dumps(result["example"]), flush=True)

    # 2. the classic parts at full size: numpy (host) vs haze_torch (device)
    reps = (h + clean_example.shape[0] - 1) // clean_example.shape[0], (w + clean_example.shape[1] - 1) // clean_example.shape[1]
    clean = np.tile(clean_example, (reps[0], reps[1], 1))[:h, :w]
    hazy, _ = add_haze(clean, np.random.default_rng(0), density="moderate")
    restored = np.clip(clean * 0.9 + 0.05, 0, 1).astype(np.float32)
    dcp_host, t_dcp_host = seconds(lambda: dark_channel_prior(hazy), torch.device("cpu"))
    rec_host, t_rec_host = seconds(lambda: haze_recompose(hazy, restored), torch.device("cpu"))
    th, tr = haze_torch.to_device_rgb(hazy, device), haze_torch.to_device_rgb(restored, device)
    haze_torch.dark_channel_prior(th[:256, :256])   # warm-up
    dcp_dev, t_dcp_dev = seconds(lambda: haze_torch.dark_channel_prior(th), device)
    rec_dev, t_rec_dev = seconds(lambda: haze_torch.haze_recompose(th, tr), device)
    result["classic_parts"] = {
        "dcp_seconds_host": t_dcp_host, "dcp_seconds_device": t_dcp_dev,
        "dcp_max_abs_diff": float(np.abs(dcp_dev.cpu().numpy() - dcp_host).max()),
        "recompose_seconds_host": t_rec_host, "recompose_seconds_device": t_rec_dev,
        "recompose_max_abs_diff": float(np.abs(rec_dev.cpu().numpy() - rec_host).max())}
    print(json.dumps(result["classic_parts"]), flush=True)
    del dcp_host, rec_host, th, tr, dcp_dev, rec_dev

    # 3. full restorations at full size
    r = Restorer("dehaze", device=device, precision=args.precision)
    r.restore(hazy[:512, :512], steps=2)   # warm-up (kernel compilation for the small shapes)
    runs = {}
    for name, opts in [("file_defaults", {}), ("no_prior_no_recompose", {"prior": "none", "recompose": False})]:
        r.restore(hazy, steps=4, **opts)   # warm-up at this size
        times, stages = [], None
        for _ in range(args.repeat):
            stats = {}
            torch.cuda.reset_peak_memory_stats(device) if device.type == "cuda" else None
            out, sec = seconds(lambda: r.restore(hazy, stats=stats, **opts), device)
            times.append(sec)
            stages = {k: round(v, 3) for k, v in stats["seconds"].items()}
        runs[name] = {"seconds": sorted(times)[len(times) // 2], "all": times, "stages": stages,
                      "psnr_vs_clean": round(psnr(out, clean), 2),
                      "peak_gb": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None}
        print(name, json.dumps(runs[name]), flush=True)
    result["restorations"] = runs
    result["psnr_hazy_vs_clean"] = round(psnr(hazy, clean), 2)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tag = re.sub(r"[^A-Za-z0-9]+", "-", result["device"]).strip("-")
    path = out_dir / f"gpu_dehaze_defaults_{tag}_{datetime.date.today()}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
