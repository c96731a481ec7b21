"""python -m benchmarks.streaming_check: the streaming engine's size checks, disk to disk (issue 17).

Each case makes its input once (``runner.make_test_image``: a tiled TIFF written tile by tile), converts
its model with ``tilediff convert`` from reference-format checkpoints, and runs ``tilediff restore``
in a fresh process, as a user would; the peak resident set is the child's ru_maxrss (os.wait4: an
upper bound, since Linux carries the parent's resident set at fork over exec), cross-checked by
polling the child's VmHWM. The output is then read back tile by tile and checked.

    python -m benchmarks.streaming_check                       # every case (~1 h on 2 cores)
    python -m benchmarks.streaming_check --cases 96mp --threads 1

Cases (the issue's "Checked by"):
  96mp   12000x8000 tiled 16-bit TIFF (zlib, horizontal predictor) → TIFF, the official dehazing
         compressor (tests/golden/unet_dehaze.pth) with the small golden noise network
         (nafnet_latent_small.pth), 2 steps, default budget: peak ≤ 2.0 GB;
  giga   32768x32768 tiled RGB8 BigTIFF → TIFF, a tiny random model (compressor ch 4, ch_mult
         [1,1,1,1], noise network width 8), 1 step, --memory-budget 2GB: peak ≤ 2.4 GB, and the
         output a 32768x32768x3 uint8 TIFF whose every tile was written (tile means follow the input's);
  24mp   6000x4000 RGB8 TIFF, the 96mp case's model, 2 steps, default budget: peak < 4 GB.

Results: benchmarks/results/<machine>_<date>_<time>_streaming.json and .md.
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from . import machine
from .runner import GB, REPO, make_test_image, reap_polling

RESULTS = Path(__file__).resolve().parent / "results"
GOLDEN = REPO / "tests" / "golden"

CASES = {
    "96mp": dict(size=(12000, 8000), dtype="uint16", compression="zlib", model="small", steps=2, budget=None,
                 bound=2.0, text="12000x8000 tiled 16-bit TIFF, official compressor + small noise net, 2 steps"),
    "giga": dict(size=(32768, 32768), dtype="uint8", compression=None, bigtiff=True, model="tiny", steps=1,
                 budget="2GB",
                 bound=2.4, text="32768x32768 tiled RGB8 BigTIFF, tiny random model, 1 step, --memory-budget 2GB"),
    "smoke": dict(size=(1500, 1000), dtype="uint16", compression="zlib", model="tiny", steps=1, budget="1GB",
                  bound=1.2, text="1500x1000 tiled 16-bit TIFF, tiny random model, 1 step (a check of this script)"),
    "24mp": dict(size=(6000, 4000), dtype="uint8", compression=None, model="small", steps=2, budget=None,
                 bound=4.0, text="6000x4000 tiled RGB8 TIFF, official compressor + small noise net, 2 steps"),
}


def make_model(kind, workdir):
    """The case's model file, converted with ``tilediff convert`` as a user would."""
    workdir = Path(workdir)
    out = workdir / f"{kind}.safetensors"
    if out.exists():
        return out
    if kind == "small":
        noise, compressor = GOLDEN / "nafnet_latent_small.pth", GOLDEN / "unet_dehaze.pth"
    else:
        import torch

        from tilediff import tasks
        from tilediff.models import build

        from .models import TINY_COMPRESSOR, TINY_NOISE
        task = tasks.TASKS["dehaze"]
        torch.manual_seed(0)
        noise, compressor = workdir / "tiny_noise.pth", workdir / "tiny_unet.pth"
        torch.save(build(task.variant, dict(task.noise_config, **TINY_NOISE)).state_dict(), noise)
        torch.save(build("compressor", TINY_COMPRESSOR).state_dict(), compressor)
    subprocess.run([sys.executable, "-m", "tilediff", "convert", str(noise), "--compressor", str(compressor),
                    "--task", "dehaze", "-o", str(out)], check=True, stdout=subprocess.DEVNULL)
    return out


def run_restore(args, log_path, threads, poll=0.2):
    """``tilediff restore ARGS`` in a fresh process → (exit code, wall s, CPU s, ru_maxrss, polled VmHWM)."""
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    start = time.perf_counter()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "tilediff", "restore", *args], stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    try:
        status, usage, hwm, _ = reap_polling(proc, start, poll=poll)
    except BaseException:
        proc.send_signal(signal.SIGINT)
        proc.wait()
        raise
    return (os.waitstatus_to_exitcode(status), time.perf_counter() - start, usage.ru_utime + usage.ru_stime,
            usage.ru_maxrss * 1024, hwm)


def check_output(out_path, in_path, width, height, dtype):
    """Read the output back by windows (a 512² window of every 2048² block): shape, dtype, no flat
    (unwritten) window, and the windows' means against the input's."""
    import tifffile

    from tilediff.io.sources import open_source

    with tifffile.TiffFile(out_path) as tif:
        page = tif.pages[0]
        info = {"shape": list(page.shape), "dtype": str(page.dtype), "tiled": page.is_tiled,
                "bigtiff": tif.is_bigtiff, "compression": str(page.compression.name)}
    ok = info["shape"][:2] == [height, width] and info["shape"][2] == 3 and info["dtype"] == dtype
    out_src, in_src = open_source(out_path), open_source(in_path)
    step = 2048
    out_means, in_means, flat = [], [], 0
    for y0 in range(0, height, step):
        for x0 in range(0, width, step):
            y1, x1 = min(height, y0 + 512), min(width, x0 + 512)   # a 512² window of every 2048² block
            o = out_src.region(y0, y1, x0, x1)
            i = in_src.region(y0, y1, x0, x1)
            out_means.append(float(o.mean()))
            in_means.append(float(i.mean()))
            flat += int(float(o.std()) < 1e-4)
    corr = float(np.corrcoef(out_means, in_means)[0, 1]) if len(out_means) > 2 else float("nan")
    info.update(windows=len(out_means), flat_windows=flat, mean=float(np.mean(out_means)),
                tile_mean_correlation=corr)
    info["ok"] = bool(ok and flat == 0)
    return info


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.streaming_check", description=__doc__.splitlines()[0])
    p.add_argument("--cases", default="96mp,giga,24mp", help=f"comma-separated, of {', '.join(CASES)}")
    p.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of the restore (default torch's)")
    p.add_argument("--workdir", default=None, help="inputs, models and outputs (default a folder under TMPDIR, kept)")
    p.add_argument("--tag", default="streaming")
    args = p.parse_args(argv)
    names = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in names if c not in CASES]
    if unknown:
        raise SystemExit(f"--cases: unknown {', '.join(unknown)}; expected {', '.join(CASES)}")
    workdir = Path(args.workdir or Path(tempfile.gettempdir()) / "tilediff_streaming_check")
    workdir.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(exist_ok=True)
    stamp = machine.timestamp()
    stem = RESULTS / f"{machine.machine_slug('cpu')}_{stamp}_{args.tag}"
    report = {"command": "python -m benchmarks.streaming_check " + " ".join(argv if argv is not None else sys.argv[1:]),
              "machine": machine.machine_info("cpu"), "code": machine.code_version(REPO), "cases": []}
    for name in names:
        case = CASES[name]
        (w, h) = case["size"]
        t0 = time.perf_counter()
        src = make_test_image(workdir / f"{name}_in.tif", w, h, dtype=case["dtype"], compression=case["compression"],
                              bigtiff=case.get("bigtiff", False))
        model = make_model(case["model"], workdir)
        made = time.perf_counter() - t0
        out = workdir / f"{name}_out.tif"
        if out.exists():
            out.unlink()
        cli = [str(src), "--task", "dehaze", "--weights", str(model), "-o", str(out), "--steps", str(case["steps"]),
               "--device", "cpu"] + (["--memory-budget", case["budget"]] if case["budget"] else [])
        dry = subprocess.run([sys.executable, "-m", "tilediff", "restore", *cli, "--dry-run"], capture_output=True,
                             text=True)
        print(f"[{name}] {case['text']}: input ready in {made:.0f} s; running tilediff restore", flush=True)
        log = workdir / f"{name}.log"
        rc, wall, cpu, maxrss, hwm = run_restore(cli, log, args.threads)
        tail = log.read_text(errors="replace")[-1500:]
        result = {"case": name, "text": case["text"], "cli": "tilediff restore " + " ".join(cli), "exit": rc,
                  "wall_seconds": wall, "cpu_seconds": cpu, "peak_rss_gb": maxrss / GB, "polled_hwm_gb": hwm / GB,
                  "bound_gb": case["bound"], "dry_run": dry.stdout.strip() or dry.stderr.strip(), "log_tail": tail,
                  "load_average": os.getloadavg()}
        if rc == 0:
            result["output"] = check_output(out, src, w, h, case["dtype"])
            out.unlink()
        result["pass"] = bool(rc == 0 and result["output"]["ok"] and maxrss / GB <= case["bound"])
        print(f"[{name}] exit {rc}, {wall:.0f} s wall, {cpu:.0f} s CPU, peak RSS {maxrss / GB:.2f} GB "
              f"(bound {case['bound']} GB): {'PASS' if result['pass'] else 'FAIL'}"
              + (f"; output {result['output']}" if rc == 0 else f"\n{tail}"), flush=True)
        report["cases"].append(result)
        stem.with_suffix(".json").write_text(json.dumps(report, indent=1))
    lines = [f"# Streaming checks — {report['machine'].get('host', '')} {stamp}", "", f"`{report['command']}`", "",
             f"- machine: {json.dumps(report['machine'])}", f"- code: {report['code']}", "",
             "| case | peak RSS GB | bound GB | wall s | CPU s | exit | output | check |", "|---|---|---|---|---|---|---|---|"]
    for r in report["cases"]:
        o = r.get("output", {})
        desc = (f"{'x'.join(map(str, o.get('shape', [])))} {o.get('dtype', '')}, {o.get('flat_windows', '?')} "
                f"flat of {o.get('windows', '?')} windows, r={o.get('tile_mean_correlation', float('nan')):.2f}")
        lines.append(f"| {r['text']} | {r['peak_rss_gb']:.2f} | {r['bound_gb']} | {r['wall_seconds']:.0f} | "
                     f"{r['cpu_seconds']:.0f} | {r['exit']} | {desc} | {'PASS' if r['pass'] else 'FAIL'} |")
    lines += ["", "Plans (`--dry-run`):", ""] + [f"- {r['case']}: {r['dry_run']}" for r in report["cases"]]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {stem}.md and .json")
    return 0 if all(r["pass"] for r in report["cases"]) else 1


if __name__ == "__main__":
    sys.exit(main())
