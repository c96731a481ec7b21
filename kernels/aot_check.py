"""Compile every fused-NAFBlock kernel launch for a CUDA target without a GPU (ptxas included).

    python -m tilediff.kernels.aot_check [--arch 90] [--channels 64 128 256 512] [--verbose]

Runs ``fused_nafblock_forward`` (both LayerNorm modes — the first with ``ffn_fused`` up to 64
channels —, with and without cam, NCHW and channels-last, fp16/bf16/fp32) on ``meta`` tensors with the kernel launches intercepted, then
compiles each distinct launch with ``triton.compile`` for ``cuda:<arch>``, emulating the JIT's
argument specialisation (ints equal to 1 become constants, multiples of 16 and all pointers get
divisibility 16).  Catches compile errors of the CUDA path on a machine with no GPU and reports
shared memory and whether the K loop was software-pipelined (async copies).
TRITON_INTERPRET must be unset.  Not part of the test suite (about 30-60 s).
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import time


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", type=int, default=90)
    ap.add_argument("--channels", type=int, nargs="+", default=[16, 48, 64, 128, 256, 512])
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        sys.exit("unset TRITON_INTERPRET: the kernels must be built for compilation")

    import torch
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from . import nafblock as nb
    from . import triton_kernels as tk

    tymap = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
    launches = {}

    class Recorder:
        def __init__(self, fn):
            self.fn = fn

        def __getitem__(self, grid):
            def launch(*a, **kw):
                opts = {k: kw.pop(k) for k in ("num_warps", "num_stages") if k in kw}
                names = self.fn.arg_names
                sig, consts, attrs = {}, dict(kw), {}
                for i, (n, v) in enumerate(zip(names, a)):
                    if isinstance(v, torch.Tensor):  # pointer
                        sig[n] = "*" + tymap[v.dtype]
                        attrs[(i,)] = [["tt.divisibility", 16]]
                    elif isinstance(v, bool):
                        consts[n] = v
                    elif isinstance(v, int):
                        if v == 1:
                            consts[n] = 1
                        else:
                            sig[n] = "i32" if abs(v) < 2 ** 31 else "i64"
                            if v % 16 == 0:
                                attrs[(i,)] = [["tt.divisibility", 16]]
                    elif isinstance(v, float):
                        sig[n] = "fp32"
                    else:
                        raise TypeError(f"{n}: {type(v)}")
                for n in consts:
                    sig[n] = "constexpr"
                sig = {n: sig[n] for n in names}
                key = (self.fn.__name__, tuple(sorted(sig.items())), tuple(sorted((k, str(v)) for k, v in consts.items())),
                       tuple(sorted(attrs)), tuple(sorted(opts.items())))
                launches.setdefault(key, (self.fn, sig, consts, attrs, opts))
            return launch

    for name in ("_ln_modulate_kernel", "_dwconv_gate_pool_kernel", "_dwconv_tile_gate_pool_kernel",
                 "_conv1x1_kernel", "_ffn_fused_kernel", "_sca_kernel"):
        setattr(tk, name, Recorder(getattr(tk, name)))

    dev = "meta"
    for dt in (torch.float16, torch.bfloat16, torch.float32):
        for c in args.channels:
            for cl in (False, True):
                x = torch.empty(16, c, 128, 128, dtype=dt, device=dev)
                if cl:
                    x = x.to(memory_format=torch.channels_last)
                p = nb.NAFBlockParams(**{f: torch.empty(s, dtype=dt, device=dev) for f, s in dict(
                    g1=(1, c, 1, 1), g2=(1, c, 1, 1), w1=(2 * c, c, 1, 1), b1=(2 * c,), w2=(2 * c, 1, 3, 3),
                    b2=(2 * c,), w_sca=(c, c, 1, 1), b_sca=(c,), w3=(c, c, 1, 1), b3=(c,),
                    w4=(2 * c, c, 1, 1), b4=(2 * c,), w5=(c, c, 1, 1), b5=(c,), beta=(1, c, 1, 1),
                    gamma=(1, c, 1, 1)).items()})
                mods = torch.empty(16, 4 * c, 1, 1, dtype=dt, device=dev).chunk(4, dim=1)
                cam = torch.empty(16, 2 * c, 1, 1, dtype=dt, device=dev).chunk(2, dim=1)
                for ln_mode in ("fused", "separate"):
                    os.environ["TILEDIFF_KERNELS_LN"] = ln_mode
                    with torch.no_grad():
                        nb.fused_nafblock_forward(x, p, mods, None)
                        nb.fused_nafblock_forward(x, p, mods, cam)
                # another depthwise configuration (2-D tiles on channels-last too)
                tk.CONFIG_OVERRIDES[("dw", c, cl)] = dict(BLOCK_C=2, TILE_H=8, TILE_W=64, num_warps=4)
                with torch.no_grad():
                    nb.fused_nafblock_forward(x, p, mods, None)
                tk.CONFIG_OVERRIDES.clear()
    os.environ.pop("TILEDIFF_KERNELS_LN", None)

    target = GPUTarget("cuda", args.arch, 32)
    t0 = time.time()
    failures = 0
    for key, (fn, sig, consts, attrs, opts) in launches.items():
        try:
            k = triton.compile(ASTSource(fn, sig, consts, attrs), target=target, options=opts)
        except Exception as exc:  # report all, fail at the end
            failures += 1
            print(f"FAIL {fn.__name__} {consts} {opts}: {exc}")
            continue
        if args.verbose:
            ttgir = k.asm["ttgir"]
            pipelined = len(re.findall("async_copy_global_to_local|async_tma_copy", ttgir))
            flags = {n: v for n, v in consts.items() if isinstance(v, bool) and v}
            blocks = {n: v for n, v in consts.items() if n.startswith("BLOCK")}
            print(f"ok {fn.__name__:26s} {sig.get('x_ptr') or sig.get('u_ptr')} {blocks} {opts} "
                  f"smem={k.metadata.shared} async_copies={pipelined} {sorted(flags)}")
    print(f"{len(launches)} distinct launches compiled for {target} in {time.time() - t0:.1f}s, "
          f"{failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
