"""python -m benchmarks: memory and latency of the tiled engine against the reference algorithm.

    python -m benchmarks --quick                    # CPU smoke: small model, 2 steps, 4 sizes (< 10 min)
    python -m benchmarks --model official --sizes 2000x3000 --steps 2 --repeat 3 --check
    python -m benchmarks --scaling --model official --steps 2 --sizes 512x512,1024x1024,2000x3000,4000x6000
    python -m benchmarks --scaling --model tiny --steps 1 --modes whole,auto@2G   # up to 268 MP (+ 32768x32768)
    python -m benchmarks --device cuda --model official --sizes 512x512,1024x1024,2000x3000,4000x6000

Modes: 'whole' is the reference algorithm (compressor.encode, the noise network and decode each on
the whole image); 'auto' and 'tiled' are the tiled engine with the default memory budget;
'auto@1.5G' (or --memory-budget 1.5G) the engine under a fixed budget. Sizes are WIDTHxHEIGHT.
Each run (size, mode, repeat) is a fresh process; repeats are interleaved (every size and mode
once, then again, alternating which mode goes first) so that a changing machine load hits the
reference and the engine alike. Results: benchmarks/results/<machine>_<date>_<time>_<kind>.json,
.md and .png (the plot needs matplotlib: pip install 'tilediff[bench]').
"""
import argparse
import os
import re
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

from . import analysis, machine, models, report, runner
from .runner import GB

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_SIZES = "512x512,1024x1024,2000x3000,4000x6000"
QUICK_SIZES = "512x512,768x768,1024x1024,1536x1024"
# 96 MP and 268 MP: minutes a run with the tiny model, hours with the official one (use --model tiny there)
SCALING_SIZES = "512x512,1024x1024,2048x1536,3000x2000,4000x3000,6000x4000,8000x6000,12000x8000,16384x16384"
QUICK_SCALING_SIZES = "512x512,768x768,1024x1024,1536x1024,2048x1536"
SCALING_BUDGET = "1.5G"
BASE_MODES = ("whole", "auto", "tiled")


def parse_size(text):
    m = re.fullmatch(r"\s*(\d+)\s*[x×X*]\s*(\d+)\s*", text)
    if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
        raise argparse.ArgumentTypeError(f"size {text!r}: expected WIDTHxHEIGHT, e.g. 6000x4000")
    return int(m.group(1)), int(m.group(2))


def parse_bytes(text):
    """'1.5G', '1500M', '2GiB', '800MB' or a byte count → bytes (binary units)."""
    m = re.fullmatch(r"\s*([\d.]+)\s*([kKmMgGtT]?)(i?[bB])?\s*", str(text))
    if not m:
        raise argparse.ArgumentTypeError(f"memory size {text!r}: expected e.g. 1.5G, 800M or bytes")
    scale = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[m.group(2).lower()]
    return int(float(m.group(1)) * scale)


def parse_configs(modes, memory_budget):
    """'whole,auto,auto@1.5G' (+ --memory-budget) → [(label, mode, budget bytes or None)]."""
    configs = []
    for item in [m.strip() for m in modes.split(",") if m.strip()]:
        mode, _, budget = item.partition("@")
        if mode not in BASE_MODES:
            raise SystemExit(f"--modes: unknown mode {mode!r}; expected whole, auto, tiled (optionally @BUDGET)")
        if mode == "whole" and budget:
            raise SystemExit("--modes: the reference (whole) takes no memory budget")
        configs.append((item, mode, parse_bytes(budget) if budget else None))
    if memory_budget:
        label = f"auto@{memory_budget}"
        if label not in [c[0] for c in configs]:
            configs.append((label, "auto", parse_bytes(memory_budget)))
    if not configs:
        raise SystemExit("--modes: nothing to run")
    # the reference first, so that its failures are known before larger sizes
    return sorted(configs, key=lambda c: c[1] != "whole")


def build_parser():
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    p.add_argument("--quick", action="store_true",
                   help=f"CPU smoke run: --model small --steps 2 --sizes {QUICK_SIZES} --repeat 2, "
                        "repeats only within --time-budget 480 s (explicit options still win)")
    p.add_argument("--scaling", action="store_true",
                   help="scaling study: a denser size series and a fixed-budget engine mode "
                        f"(auto@{SCALING_BUDGET} unless --memory-budget is given), with line fits and a verdict")
    p.add_argument("--model", default=None,
                   help="official | small | shipped | a model file; comma-separated for several (default official)")
    p.add_argument("--sizes", default=None, help=f"WIDTHxHEIGHT list (default {DEFAULT_SIZES})")
    p.add_argument("--modes", default="whole,auto", help="whole, auto, tiled, MODE@BUDGET (default whole,auto)")
    p.add_argument("--memory-budget", default=None, help="also run the engine under this budget, e.g. 1.5G")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default 10; --quick 2)")
    p.add_argument("--sampler", default="sde")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tile", type=int, default=None, help="noise-network tile for the engine modes (latent units)")
    p.add_argument("--overlap", type=int, default=None)
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto")
    p.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "bf16"))
    p.add_argument("--threads", type=int, default=None, help="torch threads in each run (default torch's)")
    p.add_argument("--repeat", type=int, default=None, help="timed runs per size and mode (default 3; --quick 2)")
    p.add_argument("--warmup", default="small", choices=("small", "full", "none"),
                   help="untimed run in each process before the timed one: at most 256x256 px (default), the "
                        "full size, or none")
    p.add_argument("--timeout", type=float, default=3600, help="seconds before a run is killed (default 3600)")
    p.add_argument("--time-budget", type=float, default=None,
                   help="start no repeat that would end past this many seconds (estimated from the same "
                        "size and mode's first run); the first pass always runs")
    p.add_argument("--oom-margin", default="2G",
                   help="skip the reference where its predicted peak exceeds available memory minus this")
    p.add_argument("--no-skip", action="store_true", help="run the reference even where it is predicted to OOM")
    p.add_argument("--check", action="store_true",
                   help="apply the issue's criteria: peak memory <= --max-memory-ratio and time <= "
                        "--max-time-ratio of the reference, per size; exit status 1 when one fails")
    p.add_argument("--max-memory-ratio", type=float, default=0.25)
    p.add_argument("--max-time-ratio", type=float, default=1.2)
    p.add_argument("--out-dir", default=str(RESULTS))
    p.add_argument("--tag", default=None, help="file name suffix (default quick / scaling / bench)")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--replot", metavar="JSON", default=None,
                   help="re-analyse an earlier result file from its raw runs and rewrite its markdown and plot")
    p.add_argument("--tmp-dir", default=None, help="where test images and model files go (default the system's)")
    return p


def resolve(args):
    if args.quick:
        args.model = args.model or "small"
        args.steps = args.steps or 2
        args.sizes = args.sizes or (QUICK_SCALING_SIZES if args.scaling else QUICK_SIZES)
        args.repeat = args.repeat or 2
        args.time_budget = args.time_budget if args.time_budget is not None else 480
    if args.scaling:
        args.sizes = args.sizes or SCALING_SIZES
        if not args.memory_budget and "@" not in args.modes:
            args.memory_budget = SCALING_BUDGET
    args.model = args.model or "official"
    args.steps = args.steps or 10
    args.sizes = args.sizes or DEFAULT_SIZES
    args.repeat = args.repeat or 3
    if args.steps < 1 or args.repeat < 1:
        raise SystemExit("--steps and --repeat must be at least 1")
    if args.device == "auto":
        import torch
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    sizes = sorted({parse_size(s) for s in args.sizes.split(",") if s.strip()}, key=lambda s: (s[0] * s[1], s))
    return sizes, parse_configs(args.modes, args.memory_budget)


def available_memory(device):
    if str(device).startswith("cuda"):
        import torch
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return free
    return machine.available_host_memory()


def run_suite(args, sizes, configs, model_info, workdir, log=print):
    """Every (repeat, size, config) in a fresh process; returns the list of run records."""
    images = {}
    for w, h in sizes:
        images[(w, h)] = runner.make_test_image(Path(workdir) / f"in_{w}x{h}.tif", w, h, seed=args.seed)
    margin = parse_bytes(args.oom_margin)
    runs = []
    reference_failed = None        # (megapixels, size, status) of the smallest reference OOM
    skipped_reference = set()
    start = time.perf_counter()
    for rep in range(args.repeat):
        if rep > 0 and args.time_budget is not None and time.perf_counter() - start > args.time_budget:
            log(f"time budget of {args.time_budget:.0f} s used: no repeat {rep + 1} (of {args.repeat})")
            break
        for index, (w, h) in enumerate(sizes):
            size, mp = f"{w}x{h}", w * h / 1e6
            order = configs if (rep + index) % 2 == 0 else configs[::-1]
            for label, mode, budget in order:
                if rep > 0 and args.time_budget is not None:
                    first = next((r for r in runs if r["size"] == size and r["config"] == label
                                  and r.get("process_wall_seconds")), None)
                    expected = first["process_wall_seconds"] if first else 0
                    if time.perf_counter() - start + expected > args.time_budget:
                        log(f"[{rep + 1}/{args.repeat}] {size:>11} {label:<10} not repeated: it would end past "
                            f"the {args.time_budget:.0f} s time budget")
                        continue
                record = {"size": size, "width": w, "height": h, "megapixels": mp, "config": label, "mode": mode,
                          "memory_budget": budget, "repeat": rep}
                if mode == "whole":
                    skip = None
                    if size in skipped_reference:
                        continue
                    if reference_failed and mp >= reference_failed[0]:
                        skip = (f"skipped: the reference ran out of memory at {reference_failed[1]} "
                                f"({reference_failed[2]})")
                    elif not args.no_skip:
                        measured = [(r["megapixels"], r["peak_rss_bytes"]) for r in runs
                                    if r["config"] == "whole" and r["status"] == "ok" and r.get("peak_rss_bytes")]
                        if str(args.device).startswith("cuda"):
                            measured = [(r["megapixels"], r["cuda_max_reserved_bytes"]) for r in runs
                                        if r["config"] == "whole" and r["status"] == "ok"
                                        and r.get("cuda_max_reserved_bytes")]
                        predicted, basis = runner.predict_reference_peak(mp, measured)
                        available = available_memory(args.device)
                        if predicted > available - margin:
                            skip = (f"skipped: predicted OOM ({predicted / GB:.1f} GB from {basis}; "
                                    f"{available / GB:.1f} GB available, margin {margin / GB:.1f} GB)")
                            record["predicted_peak_bytes"] = predicted
                    if skip:
                        skipped_reference.add(size)
                        record.update({"status": "skipped", "error": skip})
                        runs.append(record)
                        log(f"[{rep + 1}/{args.repeat}] {size:>11} {label:<10} {skip}")
                        continue
                spec = {"model": model_info["path"], "image": str(images[(w, h)]),
                        "output": str(Path(workdir) / f"out_{size}_{label.replace('@', '_')}.tif"),
                        "width": w, "height": h, "mode": mode, "memory_budget": budget, "steps": args.steps,
                        "sampler": args.sampler,
                        "seed": args.seed, "device": args.device, "precision": args.precision,
                        "threads": args.threads, "warmup": args.warmup,
                        "tile": None if mode == "whole" else args.tile,
                        "overlap": None if mode == "whole" else args.overlap}
                record["loadavg_before"] = list(os.getloadavg())
                record["mem_available_before_bytes"] = machine.available_host_memory()
                record["started"] = time.strftime("%H:%M:%S")
                result = runner.run_child(spec, workdir, timeout=args.timeout)
                record["loadavg_after"] = list(os.getloadavg())
                if rep > 0:
                    result.pop("rss_timeline_mb", None)    # one memory timeline per size and mode is enough
                record.update(result)
                runs.append(record)
                try:
                    os.unlink(spec["output"])
                except OSError:
                    pass
                if record["status"] == "ok":
                    sec = record["seconds"]
                    log(f"[{rep + 1}/{args.repeat}] {size:>11} {label:<10} total {sec['total']:7.1f} s "
                        f"(enc {sec['encode']:.1f} samp {sec['sample']:.1f} dec {sec['decode']:.1f}), "
                        f"peak RSS {record['peak_rss_bytes'] / GB:.2f} GB, load {record['loadavg_before'][0]:.1f}")
                else:
                    log(f"[{rep + 1}/{args.repeat}] {size:>11} {label:<10} {record['status']}: {record.get('error')}")
                    if mode == "whole" and record["status"] in ("oom", "oom-killed") and (
                            reference_failed is None or mp < reference_failed[0]):
                        reference_failed = (mp, size, record["status"])
    return runs


def _note_code_versions(rep):
    """Add a note when the runs imported different engine sources (it was edited during the run)."""
    runs = rep["runs"]
    versions = {tuple(sorted(r["code"].items())) for r in runs if r.get("code")}
    unknown = sum(1 for r in runs if "pid" in r and not r.get("code"))
    if len(versions) > 1 or (versions and unknown):
        note = (f"the engine's source changed during this benchmark: {len(versions)} versions of "
                f"engine.py/tiled_compressor.py among the runs{f' (+{unknown} runs unrecorded)' if unknown else ''}"
                "; see runs[].code: results mix them")
        if note not in rep["notes"]:
            rep["notes"].append(note)


def build_report(args, sizes, configs, model_info, runs, command, notes):
    results = analysis.aggregate(runs, args.steps)
    limits = (args.max_memory_ratio, args.max_time_ratio) if args.check else (None, None)
    rep = {
        "schema": "tilediff-benchmark/1",
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": command,
        "machine": machine.machine_info(args.device),
        "code": machine.code_version(str(runner.REPO)),
        "settings": {"device": args.device, "precision": args.precision, "steps": args.steps,
                     "sampler": args.sampler, "seed": args.seed, "repeat": args.repeat, "warmup": args.warmup,
                     "sizes": [f"{w}x{h}" for w, h in sizes], "configs": [c[0] for c in configs],
                     "tile": args.tile, "overlap": args.overlap, "threads": args.threads,
                     "timeout": args.timeout, "time_budget": args.time_budget, "oom_margin": args.oom_margin,
                     "scaling": args.scaling, "quick": args.quick},
        "model": {k: v for k, v in model_info.items()},
        "notes": notes,
        "results": results,
        "ratios": analysis.ratios(results, runs, *limits),
        "runs": runs,
    }
    _note_code_versions(rep)
    if args.scaling or len(sizes) >= 3:
        floor = models.canvas_bytes_per_pixel(model_info["compressor_config"])
        rep["scaling"] = analysis.scaling(results, floor)
    if args.check:
        checks = [e["check"] for e in rep["ratios"] if "check" in e]
        rep["check"] = {"max_memory_ratio": args.max_memory_ratio, "max_time_ratio": args.max_time_ratio,
                        "passed": bool(checks) and all(c["passed"] for c in checks),
                        "compared": len(checks)}
    return rep


def reanalyse(rep):
    """Recompute results, ratios, scaling and check of a report from its raw runs."""
    settings = rep["settings"]
    rep["results"] = analysis.aggregate(rep["runs"], settings["steps"])
    check = rep.get("check")
    limits = (check["max_memory_ratio"], check["max_time_ratio"]) if check else (None, None)
    rep["ratios"] = analysis.ratios(rep["results"], rep["runs"], *limits)
    if "scaling" in rep or settings.get("scaling") or len(settings["sizes"]) >= 3:
        floor = models.canvas_bytes_per_pixel(rep["model"]["compressor_config"])
        rep["scaling"] = analysis.scaling(rep["results"], floor)
    if check:
        checks = [e["check"] for e in rep["ratios"] if "check" in e]
        check.update(passed=bool(checks) and all(c["passed"] for c in checks), compared=len(checks))
    _note_code_versions(rep)
    return rep


def replot(path):
    """Rewrite the markdown report and the plot beside an earlier JSON result file."""
    import json
    path = Path(path)
    rep = json.loads(path.read_text())
    reanalyse(rep)
    png = report.plot(path.with_suffix(".png"), rep)
    if png is None:
        print("matplotlib is not installed: no plot (pip install 'tilediff[bench]')")
    else:
        rep["plot"] = str(png)
        rep["notes"] = [n for n in rep.get("notes", []) if not n.startswith("no plot")]
        print("wrote", png)
    report.write_json(path, rep)
    path.with_suffix(".md").write_text(report.markdown(rep))
    print("wrote", path.with_suffix(".md"))
    return 0


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.replot:
        return replot(args.replot)
    try:
        sizes, configs = resolve(args)
    except (argparse.ArgumentTypeError, ValueError) as e:
        parser.error(str(e))   # one line and exit status 2, not a traceback
    command = "python -m benchmarks " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    kinds = [k.strip() for k in args.model.split(",") if k.strip()]
    failed_check = False
    written = []
    workdir = tempfile.mkdtemp(prefix="tilediff-bench-", dir=args.tmp_dir)
    try:
        for kind in kinds:
            notes = []
            if not any(c[1] == "whole" for c in configs):
                notes.append("no reference mode in this run: no ratios")
            notes.append("each (size, mode, repeat) ran in its own process; reference and engine runs are "
                         "interleaved; on a shared machine wall times are noisy (the tiled engine's many "
                         "smaller operations suffer more from oversubscribed cores): compare the paired and "
                         "best-of ratios, and read the load average")
            try:
                model_info = models.prepare_model(kind, workdir, seed=args.seed)
            except models.ModelUnavailable as err:
                print(f"skipping model {kind}: {err}")
                continue
            print(f"model {kind}: {model_info['description']}; sizes {', '.join(f'{w}x{h}' for w, h in sizes)}; "
                  f"modes {', '.join(c[0] for c in configs)}; {args.steps} steps, {args.repeat} repeats, "
                  f"device {args.device}")
            runs = run_suite(args, sizes, configs, model_info, workdir)
            rep = build_report(args, sizes, configs, model_info, runs, command, notes)
            tag = args.tag or ("quick" if args.quick else "scaling" if args.scaling else "check" if args.check
                               else "bench")
            stem = f"{rep['machine']['slug']}_{machine.timestamp()}_{tag}" + (f"_{kind}" if len(kinds) > 1 else "")
            base = out_dir / stem
            if not args.no_plot:
                png = report.plot(base.with_suffix(".png"), rep)
                if png is None:
                    print("matplotlib is not installed: no plot (pip install 'tilediff[bench]')")
                    rep["notes"].append("no plot: matplotlib is not installed")
                else:
                    rep["plot"] = str(png)
            report.write_json(base.with_suffix(".json"), rep)
            base.with_suffix(".md").write_text(report.markdown(rep))
            written += [base.with_suffix(s) for s in (".json", ".md", ".png") if base.with_suffix(s).exists()]
            cuda = str(args.device).startswith("cuda")
            print()
            print(report.text_table(*report.result_rows(rep["results"], cuda)))
            if rep["ratios"]:
                print()
                print(report.text_table(*report.ratio_rows(rep["ratios"])))
            if rep.get("scaling"):
                print()
                for line in rep["scaling"]["verdict"]:
                    print("scaling:", line)
            if args.check:
                c = rep["check"]
                print(f"\ncheck (memory <= {c['max_memory_ratio']}×, time <= {c['max_time_ratio']}× the "
                      f"reference): {'PASS' if c['passed'] else 'FAIL'} ({c['compared']} sizes compared)")
                failed_check |= not c["passed"]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    for path in written:
        print("wrote", path)
    if not written:
        print("nothing measured")
    return 1 if failed_check else 0


if __name__ == "__main__":
    sys.exit(main())
