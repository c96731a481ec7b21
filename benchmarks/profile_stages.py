"""Where the compressor's time goes, whole (reference) against tiled: work, time and overhead by part.

    python -m benchmarks.profile_stages --model official --size 2000x3000 [--modes whole,auto,auto@1.5G]

For each mode, one restoration (1 step by default: the sampler is not what is compared) with
forward hooks on every convolution of the compressor, each counting its multiply-adds and its
time, grouped by part (init_conv, encoder level L, decoder level K, …). The table shows, per
stage and part, the multiply-adds relative to the whole-image run (the tiled engine's halo
recomputation: > 1.00× is repeated work) and the seconds inside convolutions against the stage's
seconds (the rest is copies between host canvases, concatenation, normalisation, elementwise
work, attention sums). Runs in this process, modes one after the other; peak memory is not
measured here (use python -m benchmarks for that).
"""
import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

from .__main__ import parse_bytes, parse_size
from .models import prepare_model


def part_of(name):
    """'encoder.1.0.block1.proj' → 'encoder L1'; 'decoder.2.…' → 'decoder K2'; others by their root."""
    parts = name.split(".")
    if parts[0] in ("encoder", "decoder") and len(parts) > 1:
        return f"{parts[0]} {'L' if parts[0] == 'encoder' else 'K'}{parts[1]}"
    return parts[0]


class ConvMeter:
    """Forward hooks on every Conv2d of a module: multiply-adds and seconds per (stage, part)."""

    def __init__(self, module):
        self.stage = "other"
        self.macs = defaultdict(float)
        self.seconds = defaultdict(float)
        self.calls = defaultdict(int)
        self._start = {}
        self._handles = []
        for name, m in module.named_modules():
            if isinstance(m, torch.nn.Conv2d):
                self._handles.append(m.register_forward_pre_hook(self._pre))
                self._handles.append(m.register_forward_hook(self._post(part_of(name))))

    def _pre(self, module, args):
        self._start[id(module)] = time.perf_counter()

    def _post(self, part):
        def hook(module, args, out):
            key = (self.stage, part)
            self.seconds[key] += time.perf_counter() - self._start.pop(id(module))
            k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
            self.macs[key] += out.numel() * k
            self.calls[key] += 1
        return hook

    def progress(self, stage, done, total):
        # the compressor does not run while sampling: its next convolutions are the decoder's
        self.stage = "encode" if stage.startswith("encode") else "decode"

    def close(self):
        for h in self._handles:
            h.remove()


def profile_mode(model, x, mode, budget, steps):
    from tilediff import engine
    meter = ConvMeter(model.compressor)
    # the engine reports a tile after running it: start in 'encode'; the first report of the
    # sampler moves the count on to the decoder
    meter.stage = "encode"
    from tilediff.options import RestoreOptions
    options = RestoreOptions(steps=steps, mode=mode, memory_budget=budget, progress=meter.progress)
    stats = {}
    start = time.perf_counter()
    engine.restore_tensor(model, x, options, stats=stats)
    total = time.perf_counter() - start
    meter.close()
    return {"seconds": dict(stats["seconds"]), "total": total, "plan": stats["plan"].describe(),
            "macs": {f"{s}|{p}": v for (s, p), v in meter.macs.items()},
            "conv_seconds": {f"{s}|{p}": v for (s, p), v in meter.seconds.items()},
            "calls": {f"{s}|{p}": v for (s, p), v in meter.calls.items()}}


def table(results, reference="whole"):
    lines = []
    ref = results.get(reference)
    for stage in ("encode", "decode"):
        keys = sorted({k.split("|")[1] for r in results.values() for k in r["macs"] if k.startswith(stage + "|")})
        header = f"{stage:<7} {'part':<16}" + "".join(f" | {m:>28}" for m in results)
        lines += [header, "-" * len(header)]
        for part in keys + ["ALL"]:
            row = f"{'':<7} {part:<16}"
            for m, r in results.items():
                if part == "ALL":
                    macs = sum(v for k, v in r["macs"].items() if k.startswith(stage + "|"))
                    conv = sum(v for k, v in r["conv_seconds"].items() if k.startswith(stage + "|"))
                    ref_macs = sum(v for k, v in ref["macs"].items() if k.startswith(stage + "|")) if ref else 0
                else:
                    macs = r["macs"].get(f"{stage}|{part}", 0)
                    conv = r["conv_seconds"].get(f"{stage}|{part}", 0)
                    ref_macs = ref["macs"].get(f"{stage}|{part}", 0) if ref else 0
                rel = f"{macs / ref_macs:.2f}×" if ref_macs else "  – "
                row += f" | {macs / 1e12:6.3f} TMAC {rel:>6} {conv:6.1f} s"
            lines.append(row)
        row = f"{'':<7} {'stage total':<16}"
        for m, r in results.items():
            conv = sum(v for k, v in r["conv_seconds"].items() if k.startswith(stage + "|"))
            row += f" | {r['seconds'][stage]:6.1f} s, outside convs {r['seconds'][stage] - conv:5.1f} s "
        lines += [row, ""]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.profile_stages", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="official")
    p.add_argument("--size", default="2000x3000", help="WIDTHxHEIGHT")
    p.add_argument("--modes", default="whole,auto", help="whole, auto, tiled, MODE@BUDGET")
    p.add_argument("--steps", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None, help="also write the numbers here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from tilediff.weights import load_model
    w, h = parse_size(args.size)
    with tempfile.TemporaryDirectory() as tmp:
        info = prepare_model(args.model, tmp)
        model = load_model(info["path"])
    x = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(0))
    results = {}
    for item in args.modes.split(","):
        mode, _, budget = item.partition("@")
        r = profile_mode(model, x, mode, parse_bytes(budget) if budget else None, args.steps)
        results[item] = r
        print(f"{item}: encode {r['seconds']['encode']:.1f} s, sample {r['seconds']['sample']:.1f} s, "
              f"decode {r['seconds']['decode']:.1f} s; plan: {r['plan'].replace(chr(10), '; ')}", flush=True)
    print()
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps({"size": args.size, "model": info["description"], "results": results},
                                              indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
