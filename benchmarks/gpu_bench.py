#!/usr/bin/env python
"""GPU timing of one conditional NAFBlock: eager reference vs torch.compile(reference) vs the fused
Triton path (tilediff.kernels), at c = 64/128/256/512 on a 16 x c x 128 x 128 batch in fp16, bf16,
fp32; plus (``bench_network``) one forward of the 'latent' noise network.

    python benchmarks/gpu_bench.py [OUT_DIR] [--channels ...] [--dtypes ...] [--budget-s 330]
    python benchmarks/gpu_bench.py --dry-run --out-dir /tmp/x     # CPU smoke test, reference only

Timing: CUDA events around each call, median of --iters (>= 20) runs after --warmup calls; the L2
cache is flushed (a 256 MiB memset, outside the timed region) before every timed call.

Bytes: ``min_bytes`` is the least traffic any implementation needs,
    min_bytes = (2 * B*c*H*W  +  n_params  +  4 * B*c) * elem_size
(read x once, write out once, read every parameter once, read the four (B,c) modulation vectors);
achieved bandwidth = min_bytes / time and its fraction of the device's peak DRAM bandwidth
(H100 SXM 3.35 TB/s, H200 4.8 TB/s, detected from torch.cuda.get_device_name).
``fused_model_bytes`` is what the fused kernels actually move by design,
    k * B*c*H*W * elem_size + params    (conv1 c->2c: 3c, dwconv 2c->c: 3c, conv3 c,x->c: 3c,
                                          conv4 c->c: 2c, conv5 c,y->c: 3c elements per pixel: k = 14;
                                          with conv3..conv5 as one ffn_fused launch (c <= 64): x1, x in,
                                          out: 3c, so k = 9),
so fused_model_bytes / time tells how close the kernels are to their own roofline.

fp32 runs with PyTorch's defaults (cuDNN convs use TF32; the fused GEMMs follow
torch.backends.cudnn.allow_tf32 and also use TF32).  Writes
<out>/gpu_<device-slug>_<date>.json and .md and prints the table.  The whole run keeps to
--budget-s: eager and fused timings first, then torch.compile timings while time remains.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import statistics
import sys
import time
import traceback

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import torch  # noqa: E402

PEAK_BW = [  # (substring of the device name, bytes/s), first match wins
    ("H200", 4.8e12),
    ("H100 NVL", 3.9e12),
    ("H100 PCIE", 2.0e12),
    ("H100", 3.35e12),          # SXM / HBM3
    ("GH200", 4.0e12),
    ("A100-SXM4-80GB", 2.039e12),
    ("A100 80GB PCIE", 1.935e12),
    ("A100", 1.555e12),
    ("L40S", 0.864e12),
    ("L4", 0.3e12),
]
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
NETWORK_CONFIG = dict(img_channel=8, width=64, enc_blk_nums=[1, 1, 1, 28], middle_blk_num=1,
                      dec_blk_nums=[1, 1, 1, 1])


def peak_bandwidth(name: str):
    up = name.upper()
    for key, bw in PEAK_BW:
        if key.upper() in up:
            return bw
    return None


def slug(s: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", s.lower()).strip("-") or "device"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description="Time one NAFBlock (eager / torch.compile / fused Triton) "
                                             "and the latent noise network on a CUDA GPU.")
    ap.add_argument("out_dir_pos", nargs="?", metavar="OUT_DIR", help="output folder (same as --out-dir)")
    ap.add_argument("--out-dir", default=None, help="output folder (default benchmarks/results)")
    ap.add_argument("--channels", type=int, nargs="+", default=[64, 128, 256, 512])
    ap.add_argument("--dtypes", nargs="+", default=["fp16", "bf16", "fp32"], choices=list(DTYPES))
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, nargs=2, default=[128, 128], metavar=("H", "W"))
    ap.add_argument("--iters", type=int, default=25, help="timed runs per measurement (median; >= 20)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--budget-s", type=float, default=330.0,
                    help="wall-clock budget of the whole benchmark; torch.compile runs are dropped first")
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile timings")
    ap.add_argument("--no-network", action="store_true", help="skip the whole-network timings")
    ap.add_argument("--separate-ln-dtypes", nargs="*", default=["fp16"], choices=list(DTYPES),
                    help="dtypes for which the TILEDIFF_KERNELS_LN=separate variant of the fused path "
                         "is also timed (default fp16; pass none to skip)")
    ap.add_argument("--channels-last", action="store_true", help="time channels-last inputs")
    ap.add_argument("--no-graph", action="store_true", help="skip the CUDA-graph replay timings of the block")
    ap.add_argument("--sweep", action="store_true",
                    help="try alternative launch configurations for every fused launch at the --sweep-shapes "
                         "(fp16; after the block and network timings, which use the heuristics), keep each "
                         "one that beats the heuristic by > 3%% and write them to OUT_DIR/kernel_configs.json")
    ap.add_argument("--sweep-budget-s", type=float, default=120.0, help="seconds the sweep may take at most")
    ap.add_argument("--sweep-shapes", nargs="*", default=["16x64x128x128", "1x512x63x94"],
                    help="BxCxHxW shapes to sweep (default: the criterion block; the network's deepest blocks "
                         "on the 750x500 latent)")
    ap.add_argument("--compile-only", nargs="*", default=None, metavar="DTYPE:C",
                    help="torch.compile timings only for these blocks (e.g. fp16:64); default all")
    ap.add_argument("--breakdown-channels", type=int, nargs="*", default=[64, 256],
                    help="channel counts at which each fused launch is also timed on its own")
    ap.add_argument("--breakdown-dtypes", nargs="*", default=["fp16"], choices=list(DTYPES))
    ap.add_argument("--dry-run", action="store_true",
                    help="CPU smoke test: tiny shapes, reference only, one timed run, no GPU needed")
    ap.add_argument("--dry-run-compile", action="store_true",
                    help="with --dry-run: also torch.compile the reference on CPU (needs a C++ compiler)")
    ap.add_argument("--peak-tbps", type=float, default=None,
                    help="override the device's peak DRAM bandwidth (TB/s)")
    ap.add_argument("--verify", action="store_true",
                    help="first check the fused block against the reference at small odd shapes (all dtypes, "
                         "both layouts, with/without cam, poisoned intermediates); gpu_check.sh uses it when "
                         "pytest is not installed")
    ap.add_argument("--pytest-rc", type=int, default=None, help="(from gpu_check.sh) pytest exit code")
    ap.add_argument("--pytest-summary", default=None, help="(from gpu_check.sh) pytest summary line")
    a = ap.parse_args(argv)
    a.out_dir = a.out_dir or a.out_dir_pos or os.path.join(REPO, "benchmarks", "results")
    if a.dry_run:
        a.channels, a.batch, a.size, a.iters, a.warmup = [16], 1, [16, 16], 1, 0
    return a


# ---------------------------------------------------------------------------------------------
# timing
# ---------------------------------------------------------------------------------------------

class Timer:
    def __init__(self, device, iters, warmup):
        self.cuda = device.type == "cuda"
        self.iters, self.warmup = iters, warmup
        self.flush = torch.empty(256 * 2 ** 20, dtype=torch.uint8, device=device) if self.cuda else None

    def __call__(self, fn):
        """Median milliseconds of fn() over self.iters runs."""
        with torch.inference_mode():
            for _ in range(self.warmup):
                fn()
            if not self.cuda:
                ts = []
                for _ in range(self.iters):
                    t = time.perf_counter()
                    fn()
                    ts.append((time.perf_counter() - t) * 1e3)
                return statistics.median(ts)
            torch.cuda.synchronize()
            events = []
            for _ in range(self.iters):
                self.flush.zero_()
                s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                s.record()
                fn()
                e.record()
                events.append((s, e))
            torch.cuda.synchronize()
            return statistics.median(s.elapsed_time(e) for s, e in events)


def graph_replay(fn):
    """fn captured once in a CUDA graph (as the sampler captures a step); returns the replay callable."""
    from tilediff.engine.cuda_graphs import capture_graph
    with torch.inference_mode():
        graph, _ = capture_graph(fn, torch.device("cuda", torch.cuda.current_device()))
    return graph.replay


def timed_with_env(timer, fn, name, value):
    """timer(fn) with the environment variable ``name`` set to ``value`` (removed afterwards): the
    kernel switches (TILEDIFF_KERNELS_LN, TILEDIFF_KERNELS_FFN) are read at every call."""
    os.environ[name] = value
    try:
        return timer(fn)
    finally:
        os.environ.pop(name, None)


def rel_err(a, b):
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


# ---------------------------------------------------------------------------------------------
# one NAFBlock
# ---------------------------------------------------------------------------------------------

def make_block(B, c, H, W, dtype, device, channels_last=False, seed=0):
    from tilediff.kernels.nafblock import NAFBlockParams
    g = torch.Generator(device="cpu").manual_seed(seed)

    def r(*shape, scale=1.0, base=0.0):
        return (base + scale * torch.randn(*shape, generator=g)).to(device=device, dtype=dtype)

    p = NAFBlockParams(
        g1=r(1, c, 1, 1, scale=0.1, base=1.0), g2=r(1, c, 1, 1, scale=0.1, base=1.0),
        w1=r(2 * c, c, 1, 1, scale=c ** -0.5), b1=r(2 * c, scale=0.1),
        w2=r(2 * c, 1, 3, 3, scale=1 / 3), b2=r(2 * c, scale=0.1),
        w_sca=r(c, c, 1, 1, scale=c ** -0.5), b_sca=r(c, scale=0.1),
        w3=r(c, c, 1, 1, scale=c ** -0.5), b3=r(c, scale=0.1),
        w4=r(2 * c, c, 1, 1, scale=c ** -0.5), b4=r(2 * c, scale=0.1),
        w5=r(c, c, 1, 1, scale=c ** -0.5), b5=r(c, scale=0.1),
        beta=r(1, c, 1, 1, scale=0.5), gamma=r(1, c, 1, 1, scale=0.5))
    x = torch.randn(B, c, H, W, generator=g).to(device=device, dtype=dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    mods = tuple((0.3 * torch.randn(B, 4 * c, 1, 1, generator=g)).to(device=device, dtype=dtype).chunk(4, dim=1))
    return x, p, mods


def fused_elements_per_pixel(c):
    """Activation elements the fused block reads + writes per pixel, in units of c: 14 with six
    launches (conv1 3, dwconv 3, conv3 3, conv4 2, conv5 3), 9 when conv3..conv5 are one ffn_fused
    launch (x1 and x in, out)."""
    from tilediff.kernels import nafblock as nb
    return 9 if nb.fused_ffn(c) else 14


def block_bytes(B, c, H, W, dtype, params):
    es = torch.tensor([], dtype=dtype).element_size()
    n_params = sum(t.numel() for t in params.tensors())
    act = B * c * H * W
    k = fused_elements_per_pixel(c)
    return dict(min_bytes=(2 * act + n_params + 4 * B * c) * es,
                fused_model_bytes=(k * act + n_params + 4 * B * c) * es, fused_model_elements_per_c=k,
                n_params=n_params, elem_size=es)


def bench_block(args, dev, timer, deadline, results, peak):
    from tilediff.kernels import nafblock as nb
    B, (H, W) = args.batch, args.size
    fused_ok = nb.kernels_available(dev)   # on CPU (dry run) only under TRITON_INTERPRET=1
    if not args.dry_run and not fused_ok:
        print("WARNING: fused kernels unavailable on this device (triton missing or TILEDIFF_KERNELS=0)")
    rows = {}
    # phase 1: eager + fused for every configuration
    for dname in args.dtypes:
        dtype = DTYPES[dname]
        for c in args.channels:
            row = dict(dtype=dname, c=c, shape=[B, c, H, W], channels_last=args.channels_last)
            rows[(dname, c)] = row
            results["block"].append(row)
            if time.time() > deadline:
                row["skipped"] = "time budget"
                continue
            try:
                x, p, mods = make_block(B, c, H, W, dtype, dev, args.channels_last)
                row.update(block_bytes(B, c, H, W, dtype, p))
                row["eager_ms"] = timer(lambda: nb.reference_nafblock_forward(x, p, mods))
                if fused_ok:
                    t0 = time.time()
                    with torch.inference_mode():
                        out = nb.fused_nafblock_forward(x, p, mods)
                        ref = nb.reference_nafblock_forward(x, p, mods)
                    if dev.type == "cuda":
                        torch.cuda.synchronize()
                    row["fused_first_call_s"] = round(time.time() - t0, 2)
                    row["fused_rel_err"] = rel_err(out, ref)
                    del out, ref
                    fused = (lambda: nb.fused_nafblock_forward(x, p, mods))
                    row["fused_ms"] = timer(fused)
                    if nb.fused_ffn(c):   # the same block with conv3..conv5 as three launches
                        row["fused_ffn_off_ms"] = timed_with_env(timer, fused, "TILEDIFF_KERNELS_FFN", "0")
                    if dname in args.separate_ln_dtypes:
                        for mode in ("fused", "separate"):
                            row[f"fused_ln_{mode}_ms"] = timed_with_env(timer, fused, "TILEDIFF_KERNELS_LN", mode)
                    if dev.type == "cuda" and not args.no_graph:
                        # device time without the host's launch gaps: both paths replayed from a graph
                        row["eager_graph_ms"] = timer(graph_replay(lambda: nb.reference_nafblock_forward(x, p, mods)))
                        row["fused_graph_ms"] = timer(graph_replay(lambda: nb.fused_nafblock_forward(x, p, mods)))
                del x, p, mods
            except Exception as exc:
                row["error"] = f"{type(exc).__name__}: {exc}"
                traceback.print_exc()
            finally:
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
            print_row(row, peak)
    # phase 2 (budget permitting): torch.compile of the reference
    return rows


VERIFY_TOL = {"fp32": 1e-5, "fp16": 1e-2, "bf16": 3e-2}


def verify(args, dev, results):
    """Fused vs reference NAFBlock at small odd shapes; fp32 compared with TF32 off on both sides."""
    from tilediff.kernels import nafblock as nb
    cases, n_fail = [], 0
    if not nb.kernels_available(dev):
        results["verify"] = {"error": "kernels unavailable on this device"}
        print("verify: kernels unavailable on this device")
        return
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    nb.POISON_INTERMEDIATES = True
    try:
        i = 0
        for dname in args.dtypes:
            dt = DTYPES[dname]
            for (B, c, H, W) in [(1, 16, 7, 13), (3, 48, 17, 9), (1, 128, 17, 9), (3, 128, 7, 13)]:
                for cl in (False, True):
                    i += 1
                    case = dict(dtype=dname, shape=[B, c, H, W], channels_last=cl, cam=bool(i % 2))
                    try:
                        x, p, mods = make_block(B, c, H, W, dt, dev, cl, seed=i)
                        cam = None
                        if case["cam"]:
                            cam = tuple((0.3 * torch.randn(B, 2 * c, 1, 1)).to(device=dev, dtype=dt).chunk(2, dim=1))
                        with torch.inference_mode():
                            out = nb.fused_nafblock_forward(x, p, mods, cam)
                            ref = nb.reference_nafblock_forward(x, p, mods, cam)
                        case["rel_err"] = rel_err(out, ref)
                        case["finite"] = bool(torch.isfinite(out).all())
                        case["layout_kept"] = bool(out.is_contiguous(memory_format=torch.channels_last)
                                                   if cl else out.is_contiguous())
                        case["ok"] = (case["finite"] and case["layout_kept"]
                                      and case["rel_err"] <= VERIFY_TOL[dname])
                    except Exception as exc:
                        case["ok"] = False
                        case["error"] = f"{type(exc).__name__}: {exc}"
                    n_fail += not case["ok"]
                    cases.append(case)
    finally:
        nb.POISON_INTERMEDIATES = False
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old
    results["verify"] = dict(passed=len(cases) - n_fail, failed=n_fail, tolerances=VERIFY_TOL, cases=cases)
    print(f"verify: {len(cases) - n_fail} passed, {n_fail} failed")
    for cse in cases:
        if not cse["ok"]:
            print("  FAIL", cse)


def bench_block_compile(args, dev, timer, deadline, rows, peak):
    from tilediff.kernels import nafblock as nb
    if args.no_compile or (args.dry_run and not args.dry_run_compile):
        return
    B, (H, W) = args.batch, args.size
    dyn = torch._dynamo.config
    for attr in ("cache_size_limit", "recompile_limit", "accumulated_cache_size_limit",
                 "accumulated_recompile_limit"):
        if hasattr(dyn, attr):
            setattr(dyn, attr, max(getattr(dyn, attr), 64))
    last_compile = 10.0   # seconds; the first block compile took 6.3 s on an H200 (2026-11-27)
    for (dname, c), row in rows.items():
        if "eager_ms" not in row:
            continue
        if args.compile_only is not None and f"{dname}:{c}" not in args.compile_only:
            row["compile_skipped"] = "not asked for"
            continue
        left = deadline - time.time()
        if left < 1.5 * last_compile + 10:
            row["compile_skipped"] = f"time budget ({left:.0f}s left)"
            continue
        try:
            torch._dynamo.reset()
            x, p, mods = make_block(B, c, H, W, DTYPES[dname], dev, args.channels_last)
            fn = torch.compile(nb.reference_nafblock_forward, dynamic=False)
            t0 = time.time()
            with torch.inference_mode():
                fn(x, p, mods)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            last_compile = time.time() - t0
            row["compile_time_s"] = round(last_compile, 1)
            row["compile_ms"] = timer(lambda: fn(x, p, mods))
            del x, p, mods, fn
        except Exception as exc:
            row["compile_error"] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
        finally:
            if dev.type == "cuda":
                torch.cuda.empty_cache()
        print_row(row, peak, tag="compile")


def measure_copy_bandwidth(dev, nbytes=2 * 2 ** 30, iters=20):
    """The practical DRAM ceiling: a device-to-device copy of nbytes (random data), counting the
    bytes read plus the bytes written, median of iters runs timed with CUDA events."""
    src = torch.randint(0, 256, (nbytes,), dtype=torch.uint8, device=dev)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        dst.copy_(src)
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e))
    ok = bool(torch.equal(dst[:4096], src[:4096]))
    del src, dst
    torch.cuda.empty_cache()
    ms = statistics.median(times)
    return dict(bytes_moved=2 * nbytes, median_ms=ms, Bps=2 * nbytes / (ms * 1e-3), copy_checked=ok)


def _attention_launches(x, p, m, pool, t1, ln1, u, x1, s, sep, c, dt, contig):
    """block_launches' entries for conv1 [+LN1], the depthwise conv and the SCA vector."""
    from tilediff.kernels import triton_kernels as tk
    H, W = x.shape[-2:]
    return [
        ("conv1" + ("" if sep else "+LN1"), ("gemm", c, 2 * c, dt, False, not sep, contig),
         tk._gemm_cfg(c, 2 * c, dt, False, not sep, contig), GEMM_CANDIDATES, 3,
         lambda: tk.conv1x1_fused(t1, p.w1, p.b1, ln=ln1, out=u)),
        ("dwconv+gate+pool", ("dw", c, contig), tk._dw_cfg(c, contig, W), DW_CANDIDATES, 3,
         lambda: tk.dwconv_gate_pool(u, p.w2, p.b2, out=x1, pool=pool.zero_())[0]),
        ("sca", ("sca", c), tk._sca_cfg(c), SCA_CANDIDATES, 0,
         lambda: tk.sca_vector(pool, H * W, p.w_sca, p.b_sca, out=s)),
    ]


def block_launches(x, p, mods, pool):
    """The fused block's launches, one entry each, in the order fused_nafblock_forward runs them
    (the LayerNorm mode it would choose at this width included), on intermediates computed once:
    [(name, launch-configuration key or None, heuristic cfg, sweep candidates, elements moved per
    pixel in units of c, fn)]. fn() runs the launch into its intermediate and returns it."""
    from tilediff.kernels import nafblock as nb
    from tilediff.kernels import triton_kernels as tk
    m = nb.NAFMods.coerce(mods)
    B, c, H, W = x.shape
    dt = x.dtype
    contig = tk.bcp_strides(x)[1] == 1
    sep = nb.separate_layernorm(c)
    ln1 = None if sep else (p.g1, m.scale_att, m.shift_att)
    ln2 = None if sep else (p.g2, m.scale_ffn, m.shift_ffn)
    t1 = tk.ln_modulate(x, p.g1, m.scale_att, m.shift_att) if sep else x
    u = tk.conv1x1_fused(t1, p.w1, p.b1, ln=ln1)
    x1, _ = tk.dwconv_gate_pool(u, p.w2, p.b2, pool=pool.zero_())
    s = tk.sca_vector(pool, H * W, p.w_sca, p.b_sca)
    out = torch.empty_like(x)
    first = _attention_launches(x, p, m, pool, t1, ln1, u, x1, s, sep, c, dt, contig)
    if nb.fused_ffn(c):   # conv3 .. conv5 as one launch
        return first + [("ffn(conv3..conv5)", ("ffn", c, dt, contig), tk._ffn_cfg(c, dt, contig), FFN_CANDIDATES, 3,
                         lambda: tk.ffn_fused(x1, x, s, p.w3, p.b3, p.beta, p.g2, m.scale_ffn, m.shift_ffn,
                                              p.w4, p.b4, p.w5, p.b5, p.gamma, out=out))]
    y = tk.conv1x1_fused(x1, p.w3, p.b3, in_scale=s, residual=x, coef=p.beta)
    t2 = tk.ln_modulate(y, p.g2, m.scale_ffn, m.shift_ffn) if sep else y
    x2 = tk.conv1x1_fused(t2, p.w4, p.b4, ln=ln2, gate=True)
    ln_key, ln_cfg = ("ln", c, contig), tk._ln_cfg(c, contig)
    plain_key, plain_cfg = ("gemm", c, c, dt, False, False, contig), tk._gemm_cfg(c, c, dt, False, False, contig)
    launches = first + [
        ("conv3+SCA+res", plain_key, plain_cfg, GEMM_CANDIDATES, 3,
         lambda: tk.conv1x1_fused(x1, p.w3, p.b3, in_scale=s, residual=x, coef=p.beta, out=y)),
        ("conv4+gate" + ("" if sep else "+LN2"), ("gemm", c, c, dt, True, not sep, contig),
         tk._gemm_cfg(c, c, dt, True, not sep, contig),
         GEMM_CANDIDATES, 2, lambda: tk.conv1x1_fused(t2, p.w4, p.b4, ln=ln2, gate=True, out=x2)),
        ("conv5+res", plain_key, plain_cfg, GEMM_CANDIDATES, 3,
         lambda: tk.conv1x1_fused(x2, p.w5, p.b5, residual=y, coef=p.gamma, out=out)),
    ]
    if sep:
        launches.insert(0, ("LN1", ln_key, ln_cfg, LN_CANDIDATES, 2,
                            lambda: tk.ln_modulate(x, p.g1, m.scale_att, m.shift_att, out=t1)))
        launches.insert(5, ("LN2", ln_key, ln_cfg, LN_CANDIDATES, 2,
                            lambda: tk.ln_modulate(y, p.g2, m.scale_ffn, m.shift_ffn, out=t2)))
    return launches


def bench_breakdown(args, dev, timer, deadline, results):
    """Each of the fused block's launches timed on its own (fp16 by default), to show which one
    is furthest from the bandwidth ceiling."""
    from tilediff.kernels import nafblock as nb
    if args.dry_run or not nb.kernels_available(dev):
        return
    B, (H, W) = args.batch, args.size
    out = results.setdefault("breakdown", [])
    for dname in args.breakdown_dtypes:
        for c in args.breakdown_channels:
            if time.time() > deadline:
                out.append(dict(dtype=dname, c=c, skipped="time budget"))
                continue
            row = dict(dtype=dname, c=c, stages={})
            try:
                x, p, mods = make_block(B, c, H, W, DTYPES[dname], dev, args.channels_last)
                pool = torch.zeros((B, c), device=dev, dtype=torch.float32)
                with torch.inference_mode():
                    launches = block_launches(x, p, mods, pool)
                total = 0.0
                for name, _, _, _, elems, fn in launches:
                    ms = timer(fn)
                    total += ms
                    nbytes = elems * B * c * H * W * x.element_size()
                    row["stages"][name] = dict(ms=ms, GBps=(nbytes / (ms * 1e-3) / 1e9) if nbytes else None)
                row["sum_ms"] = total
                act = torch.empty_like(x)
                row["copy_activation_ms"] = timer(lambda: act.copy_(x))   # one c-channel read + write
                del x, p, mods, pool, launches, act
            except Exception as exc:
                row["error"] = f"{type(exc).__name__}: {exc}"
                traceback.print_exc()
            finally:
                torch.cuda.empty_cache()
            out.append(row)
            print(f"[breakdown] {dname} c={c}: " + ", ".join(
                f"{k} {v['ms']:.3f} ms" + (f" ({v['GBps']:.0f} GB/s)" if v["GBps"] else "")
                for k, v in row["stages"].items()) + f"; activation copy {row.get('copy_activation_ms', float('nan')):.3f} ms",
                flush=True)


COPY_BW = None   # measured device-to-device copy bandwidth (bytes/s), set by main


# launch-configuration candidates tried by --sweep (merged into the heuristic's configuration)
GEMM_CANDIDATES = [dict(BLOCK_N=64, num_warps=4, num_stages=2), dict(BLOCK_N=128, num_warps=4, num_stages=3),
                   dict(BLOCK_N=128, num_warps=8, num_stages=3), dict(BLOCK_N=64, num_warps=2, num_stages=3),
                   dict(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=2), dict(BLOCK_N=32, num_warps=2, num_stages=2),
                   # a longer K step (fewer, larger loads in flight: the deep 512-channel GEMMs)
                   dict(BLOCK_N=64, BLOCK_K=128, num_warps=4, num_stages=3),
                   dict(BLOCK_N=128, BLOCK_K=128, num_warps=8, num_stages=3)]
# (BLOCK_N=256 and BLOCK_M=32 were the slowest at every shape of the 2026-11-27 run 2: dropped)
DW_CANDIDATES = ([dict(BLOCK_C=bc, BLOCK_P=bp, num_warps=w) for bc, bp, w in [(4, 512, 4), (2, 1024, 4)]]
                 # the 2-D-tile kernel (no per-element division by W)
                 + [dict(BLOCK_C=bc, TILE_H=th, TILE_W=tw, num_warps=w)
                    for bc, th, tw, w in [(1, 8, 128, 4), (2, 8, 64, 4), (2, 16, 64, 4), (2, 8, 128, 8), (4, 8, 32, 4),
                                          (2, 32, 32, 4), (1, 4, 128, 4), (1, 16, 128, 8), (1, 8, 64, 2),
                                          (1, 16, 64, 4), (2, 4, 128, 4)]])
LN_CANDIDATES = [dict(BLOCK_C=bc, BLOCK_P=bp, num_warps=w)
                 for bc, bp, w in [(32, 128, 4), (16, 256, 4), (64, 64, 4), (8, 256, 4), (32, 256, 8),
                                   (64, 32, 4), (128, 32, 4)]]
# only configurations that were right in both layouts on the H200 (run 6 probe: BLOCK_N 32 or 16 with
# 4 warps is wrong on channels-last, 32 with 8 warps faults on NCHW; triton 3.6)
FFN_CANDIDATES = [dict(BLOCK_N=bn, num_warps=w, num_stages=1) for bn, w in [(128, 8), (32, 2)]]
SCA_CANDIDATES = [dict(BLOCK_M=bm, BLOCK_K=bk, num_warps=w)
                  for bm, bk, w in [(8, 128, 4), (8, 512, 4), (32, 128, 4), (16, 64, 2), (64, 64, 4)]]
SWEEP_GAIN = 0.97   # a candidate is kept only when it takes under 97% of the heuristic's time


def sweep_groups(launches):
    """block_launches grouped by launch-configuration key (launches that share one, e.g. conv3 and
    conv5, are timed together): [(name, key, heuristic cfg, candidates, fn)]; fn() runs the group
    and returns its last output."""
    groups = {}
    for name, key, default, candidates, _, fn in launches:
        if key is not None:
            groups.setdefault(key, []).append((name, default, candidates, fn))
    return [(" & ".join(n for n, *_ in members), key, members[0][1], members[0][2],
             lambda fns=[f for *_, f in members]: [f() for f in fns][-1])
            for key, members in groups.items()]


def bench_sweep(args, dev, timer, deadline, results):
    """Try the candidate launch configurations of every fused launch at each --sweep-shapes (fp16);
    keep the fastest where it beats the heuristic by > 3% (in tk.CONFIG_OVERRIDES, so the rest of
    the run uses it), then time the whole block with and without the kept ones, back to back."""
    from tilediff.kernels import nafblock as nb
    from tilediff.kernels import triton_kernels as tk
    if not args.sweep or args.dry_run or not nb.kernels_available(dev):
        return
    out = results.setdefault("sweep", [])
    for text in args.sweep_shapes:
        B, c, H, W = (int(v) for v in text.lower().split("x"))
        entry = dict(shape=[B, c, H, W], dtype="fp16", groups={})
        out.append(entry)
        try:
            x, p, mods = make_block(B, c, H, W, torch.float16, dev, seed=3)
            pool = torch.zeros((B, c), device=dev, dtype=torch.float32)
            with torch.inference_mode():
                groups = sweep_groups(block_launches(x, p, mods, pool))
            for name, key, default, candidates, fn in groups:
                if time.time() > deadline:
                    entry["groups"][name] = dict(skipped="time budget")
                    continue
                tk.CONFIG_OVERRIDES.pop(key, None)
                with torch.inference_mode():
                    ref = fn().clone()
                g = dict(key=tk.override_key_to_text(key), default=default, default_ms=timer(fn), candidates=[])
                best_cfg, best_ms = None, g["default_ms"]
                for cand in candidates:
                    if time.time() > deadline:
                        break
                    cfg = dict(cand) if "TILE_W" in cand else dict(default, **cand)   # another kernel: its own keys
                    if cfg == default:
                        continue
                    tk.CONFIG_OVERRIDES[key] = cfg
                    try:
                        with torch.inference_mode():
                            err = rel_err(fn(), ref)
                        ms = timer(fn)
                        g["candidates"].append(dict(cfg=cfg, ms=ms, rel_err=err))
                        if err <= 1e-2 and ms < SWEEP_GAIN * g["default_ms"] and ms < best_ms:
                            best_cfg, best_ms = cfg, ms
                    except Exception as exc:
                        g["candidates"].append(dict(cfg=cfg, error=f"{type(exc).__name__}: {str(exc)[:200]}"))
                    finally:
                        tk.CONFIG_OVERRIDES.pop(key, None)
                if best_cfg is not None:
                    tk.CONFIG_OVERRIDES[key] = best_cfg
                g["chosen"], g["chosen_ms"] = best_cfg, best_ms
                entry["groups"][name] = g
                print(f"[sweep] {text} {name}: heuristic {g['default_ms']:.3f} ms, "
                      + (f"kept {best_cfg} {best_ms:.3f} ms" if best_cfg else "heuristic kept"), flush=True)
            # the whole block, heuristic vs kept configurations, back to back
            kept = {k: v for k, v in tk.CONFIG_OVERRIDES.items()}
            tk.CONFIG_OVERRIDES.clear()
            entry["block_heuristic_ms"] = timer(lambda: nb.fused_nafblock_forward(x, p, mods))
            tk.CONFIG_OVERRIDES.update(kept)
            entry["block_kept_ms"] = timer(lambda: nb.fused_nafblock_forward(x, p, mods))
            with torch.inference_mode():
                entry["block_kept_rel_err"] = rel_err(nb.fused_nafblock_forward(x, p, mods),
                                                      nb.reference_nafblock_forward(x, p, mods))
            print(f"[sweep] {text} whole block: heuristic {entry['block_heuristic_ms']:.3f} ms, "
                  f"kept configurations {entry['block_kept_ms']:.3f} ms", flush=True)
            del x, p, mods, pool, groups
        except Exception as exc:
            entry["error"] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
        finally:
            torch.cuda.empty_cache()
    results["config_overrides"] = {tk.override_key_to_text(k): v for k, v in tk.CONFIG_OVERRIDES.items()}
    if results["config_overrides"]:
        path = os.path.join(args.out_dir, "kernel_configs.json")
        with open(path, "w") as f:
            json.dump(results["config_overrides"], f, indent=1)
        print(f"[sweep] kept configurations written to {path} (TILEDIFF_KERNEL_CONFIGS={path} applies them)")


def derived(row, peak):
    out = {}
    for k in ("eager_ms", "compile_ms", "fused_ms", "fused_ln_fused_ms", "fused_ln_separate_ms",
              "fused_ffn_off_ms", "eager_graph_ms", "fused_graph_ms", "fused_tuned_ms"):
        ms = row.get(k)
        if ms and row.get("min_bytes"):
            bw = row["min_bytes"] / (ms * 1e-3)
            out[k.replace("_ms", "_GBps")] = bw / 1e9
            if peak:
                out[k.replace("_ms", "_frac_peak")] = bw / peak
    if row.get("fused_ms") and row.get("fused_model_bytes"):
        bw = row["fused_model_bytes"] / (row["fused_ms"] * 1e-3)
        out["fused_model_GBps"] = bw / 1e9
        if peak:
            out["fused_model_frac_peak"] = bw / peak
        if COPY_BW:
            out["fused_model_frac_copy"] = bw / COPY_BW
    if row.get("fused_graph_ms") and row.get("eager_graph_ms"):
        out["speedup_graph_fused_vs_eager"] = row["eager_graph_ms"] / row["fused_graph_ms"]
    for k in ("compile_ms", "fused_ms"):
        if row.get(k) and row.get("eager_ms"):
            out[f"speedup_{k[:-3]}_vs_eager"] = row["eager_ms"] / row[k]
    if row.get("fused_ms") and row.get("compile_ms"):
        out["speedup_fused_vs_compile"] = row["compile_ms"] / row["fused_ms"]
    return out


def _f(v, fmt):
    return "—" if v is None else format(v, fmt)


def print_row(row, peak, tag="block"):
    d = derived(row, peak)
    msg = (f"[{tag}] {row['dtype']} c={row['c']}: eager {_f(row.get('eager_ms'), '.3f')} ms, "
           f"compile {_f(row.get('compile_ms'), '.3f')} ms, fused {_f(row.get('fused_ms'), '.3f')} ms "
           f"(LN in GEMM {_f(row.get('fused_ln_fused_ms'), '.3f')}, separate {_f(row.get('fused_ln_separate_ms'), '.3f')}, "
           f"ffn_fused off {_f(row.get('fused_ffn_off_ms'), '.3f')}; "
           f"graphs: eager {_f(row.get('eager_graph_ms'), '.3f')}, fused {_f(row.get('fused_graph_ms'), '.3f')}), fused {_f(d.get('fused_GBps'), '.0f')} GB/s "
           f"min-bytes, rel err {_f(row.get('fused_rel_err'), '.1e')}")
    if row.get("error") or row.get("compile_error"):
        msg += f"  ERROR {row.get('error') or row.get('compile_error')}"
    print(msg, flush=True)


# ---------------------------------------------------------------------------------------------
# whole network (pending until tilediff.models.build exists)
# ---------------------------------------------------------------------------------------------

def _cast_linear_inputs(net):
    """Forward pre-hooks that cast each nn.Linear's input to its weight dtype (the network builds
    its time embedding in float32).  Returns the number of hooks."""
    n = 0
    for mod in net.modules():
        if isinstance(mod, torch.nn.Linear):
            mod.register_forward_pre_hook(
                lambda m, inp: tuple(i.to(m.weight.dtype) if torch.is_tensor(i) and i.is_floating_point() else i
                                     for i in inp))
            n += 1
    return n


def bench_network(args, dev, timer, deadline, results, compile_phase=False):
    """=== WHOLE-NETWORK TIMINGS ===  build('latent', NETWORK_CONFIG) with random weights, one
    forward net(x, cond, t) on a 1x8x500x750 input per dtype: eager (TILEDIFF_KERNELS=0),
    torch.compile (TILEDIFF_KERNELS=0) and eager with TILEDIFF_KERNELS=1 (the network's NAFBlock
    calls fused_nafblock_forward when kernels_available(x.device)).  Skipped with a 'pending'
    message while tilediff.models.build does not exist."""
    try:
        from tilediff.models import build
    except (ImportError, AttributeError):
        build = None
    if build is None:
        print("pending: needs tilediff.models (tilediff.models.build does not exist yet); "
              "network timings skipped")
        results["network"] = {"pending": "needs tilediff.models"}
        return
    if compile_phase and (args.no_compile or args.dry_run):
        return
    from tilediff.kernels import nafblock as nb
    net_res = results.setdefault("network", {"variant": "latent", "config": NETWORK_CONFIG, "runs": []})
    shape = (1, 8, 500, 750) if not args.dry_run else (1, 8, 20, 30)
    net_res["input_shape"] = list(shape)
    old_env = os.environ.get("TILEDIFF_KERNELS")
    try:
        # CPU half-precision convolutions take minutes: the dry run checks the network in fp32 only
        dnames = ["fp32"] if args.dry_run else args.dtypes
        for dname in dnames:
            dtype = DTYPES[dname]
            if time.time() > deadline:
                net_res["runs"].append(dict(dtype=dname, skipped="time budget", phase="compile" if compile_phase else "eager"))
                continue
            try:
                torch.manual_seed(0)
                net = build("latent", dict(NETWORK_CONFIG))
                with torch.no_grad():
                    for prm in net.parameters():
                        prm.normal_(0.0, 0.05)
                net = net.to(device=dev, dtype=dtype).eval()
                n_hooks = _cast_linear_inputs(net)
                if n_hooks:
                    net_res["note"] = ("nn.Linear inputs are cast to the weight dtype by a forward pre-hook "
                                       "(the float32 time embedding would not meet fp16/bf16 weights)")
                x = torch.randn(*shape, device=dev, dtype=dtype)
                cond = torch.randn(*shape, device=dev, dtype=dtype)
                t = torch.full((shape[0],), 50.0, device=dev)
                run = dict(dtype=dname)
                if not compile_phase:
                    os.environ["TILEDIFF_KERNELS"] = "0"
                    run["eager_ms"] = timer(lambda: net(x, cond, t))
                    if not args.no_graph and dev.type == "cuda":
                        run["eager_graph_ms"] = timer(graph_replay(lambda: net(x, cond, t)))
                    os.environ["TILEDIFF_KERNELS"] = "1"
                    if not args.dry_run and nb.kernels_available(dev):
                        os.environ["TILEDIFF_KERNELS"] = "1"
                        before = getattr(nb, "CALLS", 0)
                        with torch.inference_mode():
                            net(x, cond, t)
                        run["fused_calls_per_forward"] = getattr(nb, "CALLS", 0) - before
                        if run["fused_calls_per_forward"] == 0:
                            run["note"] = "the network did not call fused_nafblock_forward"
                        run["kernels_ms"] = timer(lambda: net(x, cond, t))
                        with torch.inference_mode():   # same forward, eager vs fused (same TF32 flags)
                            out_k = net(x, cond, t)
                            os.environ["TILEDIFF_KERNELS"] = "0"
                            out_e = net(x, cond, t)
                            os.environ["TILEDIFF_KERNELS"] = "1"
                        run["kernels_rel_err"] = rel_err(out_k, out_e)
                        try:   # the same forward captured once as a CUDA graph (as the sampler does)
                            from tilediff.engine.cuda_graphs import GraphedNoise
                            graphed = GraphedNoise(lambda xx, tt: net(xx, cond, tt), dev)
                            with torch.inference_mode():
                                run["graph_rel_err"] = rel_err(graphed(x, 50), out_k)
                            if graphed.failed:
                                run["graph_note"] = "capture failed (see stderr)"
                            run["kernels_graph_ms"] = timer(lambda: graphed(x, 50))
                            del graphed
                        except Exception as exc:
                            run["graph_note"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
                    net_res["runs"].append(run)
                elif not args.no_compile and not args.dry_run:
                    if dname != args.dtypes[0] or deadline - time.time() < 150:
                        # compiling the 36-block network takes minutes: first dtype only, if time allows
                        net_res["runs"].append(dict(dtype=dname, compile_skipped="time budget"))
                        continue
                    os.environ["TILEDIFF_KERNELS"] = "0"
                    torch._dynamo.reset()
                    fn = torch.compile(net, dynamic=False)
                    t0 = time.time()
                    with torch.inference_mode():
                        fn(x, cond, t)
                    torch.cuda.synchronize()
                    run["compile_time_s"] = round(time.time() - t0, 1)
                    run["compile_ms"] = timer(lambda: fn(x, cond, t))
                    net_res["runs"].append(run)
                print(f"[network {'compile' if compile_phase else 'eager'}] {dname}: {run}", flush=True)
                del net, x, cond
            except Exception as exc:
                net_res["runs"].append(dict(dtype=dname, error=f"{type(exc).__name__}: {exc}"))
                traceback.print_exc()
            finally:
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
    finally:
        if old_env is None:
            os.environ.pop("TILEDIFF_KERNELS", None)
        else:
            os.environ["TILEDIFF_KERNELS"] = old_env


# ---------------------------------------------------------------------------------------------
# output
# ---------------------------------------------------------------------------------------------

def markdown(results):
    peak = results["device"].get("peak_bw_Bps")
    lines = [f"# NAFBlock timings on {results['device']['name']}", "",
             f"{results['date']}; torch {results['versions']['torch']}, triton {results['versions']['triton']}; "
             f"batch {results['config']['batch']}x c x {results['config']['size'][0]}x{results['config']['size'][1]}; "
             f"median of {results['config']['iters']} runs (CUDA events, L2 flushed).", ""]
    if results.get("verify"):
        v = results["verify"]
        lines += [f"Fused-vs-reference verification at small odd shapes: {v.get('passed')} passed, "
                  f"{v.get('failed')} failed {v.get('error') or ''}", ""]
    if results.get("pytest"):
        lines += [f"Tests (compiled, `tests/test_kernels.py`): rc={results['pytest'].get('rc')} "
                  f"{results['pytest'].get('summary') or ''}", ""]
    lines += [f"min bytes = (2·B·c·H·W + params + 4·B·c)·elem; fused model bytes = (k·B·c·H·W + params + 4·B·c)·elem with k = 9 up to c = 64 (ffn_fused), else 14; "
              f"peak = {peak / 1e12:.2f} TB/s (datasheet)" if peak else "peak bandwidth unknown for this device", ""]
    copy = results["device"].get("copy") or {}
    if copy.get("Bps"):
        lines += [f"Measured ceiling: a {copy['bytes_moved'] / 2 ** 31:.0f} GiB device-to-device copy moves "
                  f"{copy['Bps'] / 1e12:.2f} TB/s (read + write, median of 20); '% copy' columns use it.", ""]
    lines += ["Columns: 'fused' is the default dispatch (LayerNorm in the GEMM below c = 128, its own kernel "
              "from 128 up; conv3..conv5 as one ffn_fused launch up to c = 64); 'LN in GEMM' / 'LN separate' "
              "force one mode (TILEDIFF_KERNELS_LN; 'separate' also turns ffn_fused off); 'ffn_fused off' is the "
              "default with conv3..conv5 as three launches (TILEDIFF_KERNELS_FFN=0); 'graph' columns "
              "replay each path from a CUDA graph (device time without host launch gaps).", "",
              "| dtype | c | eager ms | compile ms | fused ms | LN in GEMM ms | LN separate ms | ffn_fused off ms "
              "| eager graph ms | fused graph ms | fused vs eager | fused vs compile | graphs: fused vs eager "
              "| fused GB/s (min) | % copy (fused model) | rel err |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in results["block"]:
        d = derived(row, peak)
        pct = (lambda v: "—" if v is None else f"{100 * v:.0f}%")
        x_ = (lambda v: "—" if not v else f"{v:.2f}x")
        note = row.get("error") or row.get("skipped") or ""
        lines.append("| " + " | ".join([
            row["dtype"], str(row["c"]), _f(row.get("eager_ms"), ".3f"),
            _f(row.get("compile_ms"), ".3f") if row.get("compile_ms") else (row.get("compile_skipped") or row.get("compile_error") or "—"),
            _f(row.get("fused_ms"), ".3f"), _f(row.get("fused_ln_fused_ms"), ".3f"),
            _f(row.get("fused_ln_separate_ms"), ".3f"), _f(row.get("fused_ffn_off_ms"), ".3f"),
            _f(row.get("eager_graph_ms"), ".3f"),
            _f(row.get("fused_graph_ms"), ".3f"),
            x_(d.get("speedup_fused_vs_eager")), x_(d.get("speedup_fused_vs_compile")),
            x_(d.get("speedup_graph_fused_vs_eager")),
            _f(d.get("fused_GBps"), ".0f"), pct(d.get("fused_model_frac_copy")),
            _f(row.get("fused_rel_err"), ".1e") + (f" {note}" if note else "")]) + " |")
    if results.get("breakdown"):
        names = list(dict.fromkeys(k for r in results["breakdown"] for k in r.get("stages", {})))
        lines += ["", "## fused launches one by one", "",
                  "| dtype | c | " + " | ".join(names) + " | sum ms | activation copy ms |",
                  "|---|---:|" + "---:|" * (len(names) + 2)]
        for r in results["breakdown"]:
            st = r.get("stages", {})
            cells = [(_f(st[k]["ms"], ".3f") + (f" ({st[k]['GBps']:.0f} GB/s)" if st[k].get("GBps") else ""))
                     if k in st else "—" for k in names]
            lines.append(f"| {r['dtype']} | {r['c']} | " + " | ".join(cells) +
                         f" | {_f(r.get('sum_ms'), '.3f')} | {_f(r.get('copy_activation_ms'), '.3f')} |"
                         + (f" {r.get('error') or r.get('skipped')}" if r.get("error") or r.get("skipped") else ""))
    if results.get("sweep"):
        lines += ["", "## launch-configuration sweep (fp16; kept when < 97% of the heuristic's time)", ""]
        for e in results["sweep"]:
            shape = "x".join(map(str, e["shape"]))
            lines.append(f"{shape}: whole block heuristic {_f(e.get('block_heuristic_ms'), '.3f')} ms, with the kept "
                         f"configurations {_f(e.get('block_kept_ms'), '.3f')} ms (rel err vs reference "
                         f"{_f(e.get('block_kept_rel_err'), '.1e')}) {e.get('error') or ''}")
            lines += ["", "| launch group | heuristic | heuristic ms | best candidate ms | kept |",
                      "|---|---|---:|---:|---|"]
            for name, g in e["groups"].items():
                if g.get("skipped"):
                    lines.append(f"| {name} | — | — | — | {g['skipped']} |")
                    continue
                timed = [cd for cd in g["candidates"] if cd.get("ms")]
                best = min(timed, key=lambda cd: cd["ms"]) if timed else None
                lines.append(f"| {name} | `{json.dumps(g['default'])}` | {g['default_ms']:.3f} | "
                             f"{_f(best['ms'] if best else None, '.3f')} | "
                             f"{('`' + json.dumps(g['chosen']) + '`') if g.get('chosen') else 'heuristic'} |")
            lines.append("")
    net = results.get("network")
    if net:
        lines += ["", "## latent noise network, one forward", ""]
        if net.get("pending"):
            lines.append(f"pending: {net['pending']}")
        else:
            lines += [f"config {json.dumps(net.get('config'))}, input {net.get('input_shape')}", "",
                      "| dtype | eager ms | compile ms | kernels (TILEDIFF_KERNELS=1) ms | kernels vs eager "
                      "| eager + CUDA graph ms | kernels + CUDA graph ms | graphs: kernels vs eager "
                      "| fused calls/forward | rel err fused/eager | rel err graph/fused | note |",
                      "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
            merged = {}
            for r in net.get("runs", []):
                merged.setdefault(r["dtype"], {}).update(r)
            for dname, r in merged.items():
                ratio = (lambda a, b: f"{r[a] / r[b]:.2f}x" if r.get(a) and r.get(b) else "—")
                lines.append(f"| {dname} | {_f(r.get('eager_ms'), '.2f')} | {_f(r.get('compile_ms'), '.2f')} | "
                             f"{_f(r.get('kernels_ms'), '.2f')} | {ratio('eager_ms', 'kernels_ms')} | "
                             f"{_f(r.get('eager_graph_ms'), '.2f')} | {_f(r.get('kernels_graph_ms'), '.2f')} | "
                             f"{ratio('eager_graph_ms', 'kernels_graph_ms')} | "
                             f"{r.get('fused_calls_per_forward', '—')} | {_f(r.get('kernels_rel_err'), '.1e')} | "
                             f"{_f(r.get('graph_rel_err'), '.1e')} | "
                             f"{r.get('error') or r.get('note') or r.get('graph_note') or r.get('skipped') or r.get('compile_skipped') or ''} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    args = parse_args(argv)
    if args.iters < 20 and not args.dry_run:
        print(f"note: --iters {args.iters} < 20; using 20")
        args.iters = 20
    t_start = time.time()
    deadline = t_start + args.budget_s
    if args.dry_run:
        dev = torch.device("cpu")
        name = "cpu-dryrun"
    else:
        if not torch.cuda.is_available():
            sys.exit("no CUDA device (use --dry-run for a CPU smoke test)")
        dev = torch.device("cuda")
        name = torch.cuda.get_device_name(dev)
    peak = args.peak_tbps * 1e12 if args.peak_tbps else (None if args.dry_run else peak_bandwidth(name))
    try:
        import triton
        triton_version = triton.__version__
    except Exception:
        triton_version = None
    now = _dt.datetime.now()
    results = dict(
        date=now.isoformat(timespec="seconds"),
        device=dict(name=name, peak_bw_Bps=peak, slug=slug(name),
                    capability=list(torch.cuda.get_device_capability(dev)) if dev.type == "cuda" else None),
        versions=dict(torch=torch.__version__, triton=triton_version, python=platform.python_version()),
        config=dict(batch=args.batch, size=args.size, channels=args.channels, dtypes=args.dtypes,
                    iters=args.iters, warmup=args.warmup, dry_run=args.dry_run,
                    channels_last=args.channels_last,
                    cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
                    matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32,
                    TILEDIFF_KERNELS=os.environ.get("TILEDIFF_KERNELS")),
        formulas=dict(min_bytes="(2*B*c*H*W + n_params + 4*B*c) * elem_size",
                      fused_model_bytes="(k*B*c*H*W + n_params + 4*B*c) * elem_size, k = 9 with ffn_fused (c <= 64), else 14",
                      bandwidth="bytes / median_time", frac_peak="bandwidth / peak_bw_Bps"),
        block=[],
    )
    if args.pytest_rc is not None:
        results["pytest"] = dict(rc=args.pytest_rc, summary=args.pytest_summary)
    if dev.type == "cuda":
        try:
            results["device"]["copy"] = measure_copy_bandwidth(dev)
            print(f"device-to-device copy: {results['device']['copy']['Bps'] / 1e12:.2f} TB/s (read + write)")
        except Exception as exc:
            results["device"]["copy"] = dict(error=f"{type(exc).__name__}: {exc}")
    global COPY_BW
    COPY_BW = results["device"].get("copy", {}).get("Bps")
    print(f"device: {name}, peak {peak / 1e12 if peak else float('nan'):.2f} TB/s, budget {args.budget_s:.0f}s")
    timer = Timer(dev, args.iters, args.warmup)

    os.makedirs(args.out_dir, exist_ok=True)
    stem = os.path.join(args.out_dir, f"gpu_{slug(name)}_{now.strftime('%Y-%m-%d')}")
    if os.path.exists(stem + ".json"):
        stem += now.strftime("-%H%M%S")

    def save(final=False):
        """Write JSON + markdown (after every phase, so a run cut short still leaves its numbers)."""
        results["wall_s"] = round(time.time() - t_start, 1)
        results["complete"] = final
        for row in results["block"]:
            row.update(derived(row, peak))
        with open(stem + ".json", "w") as f:
            json.dump(results, f, indent=2, default=str)
        md = markdown(results)
        with open(stem + ".md", "w") as f:
            f.write(md)
        return md

    if args.verify:
        verify(args, dev, results)
        save()
    # order: what the issue's criteria need first (block, its torch.compile baseline, the network),
    # then the exploratory parts (per-launch breakdown, configuration sweep), then network compile
    rows = bench_block(args, dev, timer, deadline, results, peak)
    save()
    bench_block_compile(args, dev, timer, deadline, rows, peak)
    save()
    if not args.no_network:
        bench_network(args, dev, timer, deadline, results)
        save()
    bench_breakdown(args, dev, timer, deadline, results)
    save()
    bench_sweep(args, dev, timer, min(deadline, time.time() + args.sweep_budget_s), results)
    save()
    if not args.no_network:
        bench_network(args, dev, timer, deadline, results, compile_phase=True)
    md = save(final=True)
    print()
    print(md)
    print(f"wrote {stem}.json and {stem}.md ({results['wall_s']}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
