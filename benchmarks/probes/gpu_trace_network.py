"""Run the official latent noise network once with every fused-kernel launch traced, to find which
launch faults (an illegal memory access is reported at the next synchronisation, far from its cause).

  CUDA_LAUNCH_BLOCKING=1 python benchmarks/gpu_trace_network.py [--layout cl|nchw] [--size 500x750]
                                                                 [--precision fp16]

Each public wrapper of tilediff.kernels.triton_kernels is wrapped: before the launch it prints the
wrapper's name, the shapes/strides of its tensor arguments and the launch configuration that applies;
after it, it synchronises.  The last line printed before a CUDA error names the launch that faulted.
Then the output is compared with the eager network (TILEDIFF_KERNELS=0).  Honours
TILEDIFF_KERNEL_CONFIGS like the engine.
"""
import argparse
import functools
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import torch  # noqa: E402


def describe(v):
    if torch.is_tensor(v):
        return f"{tuple(v.shape)}{'/' + str(v.stride()) if v.dim() == 4 else ''}:{str(v.dtype)[6:]}"
    if isinstance(v, (tuple, list)):
        return "(" + ", ".join(describe(e) for e in v) + ")"
    return repr(v) if isinstance(v, (int, float, bool, type(None))) else type(v).__name__


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--layout", choices=["cl", "nchw"], default="cl")
    ap.add_argument("--size", default="500x750", help="latent HxW")
    ap.add_argument("--precision", default="fp16", choices=["fp16", "bf16", "fp32"])
    args = ap.parse_args(argv)
    from tilediff.kernels import triton_kernels as tk
    from tilediff.models import build
    from tilediff.tasks import TASKS
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[args.precision]
    counter = [0]

    def traced(name, fn):
        @functools.wraps(fn)
        def wrapper(*a, **k):
            counter[0] += 1
            print(f"[{counter[0]}] {name} " + " ".join(describe(v) for v in a)
                  + "".join(f" {kk}={describe(vv)}" for kk, vv in k.items() if kk != "out"), flush=True)
            out = fn(*a, **k)
            torch.cuda.synchronize()
            return out
        return wrapper

    for name in ("ln_modulate", "dwconv_gate_pool", "sca_vector", "conv1x1_fused", "ffn_fused"):
        setattr(tk, name, traced(name, getattr(tk, name)))
    print("configuration overrides:", {tk.override_key_to_text(k): v for k, v in tk.CONFIG_OVERRIDES.items()})
    h, w = (int(v) for v in args.size.split("x"))
    torch.manual_seed(0)
    net = build("latent", dict(TASKS["dehaze"].noise_config)).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, 0.05)
    net = net.to(device="cuda", dtype=dtype)
    fmt = torch.channels_last if args.layout == "cl" else torch.contiguous_format
    x = torch.randn(1, 8, h, w, device="cuda", dtype=dtype).contiguous(memory_format=fmt)
    mu = torch.randn(1, 8, h, w, device="cuda", dtype=dtype).contiguous(memory_format=fmt)
    t = torch.full((1,), 50.0, device="cuda")
    with torch.inference_mode():
        os.environ["TILEDIFF_KERNELS"] = "1"
        fused = net(x, mu, t).float()
        torch.cuda.synchronize()
        os.environ["TILEDIFF_KERNELS"] = "0"
        eager = net(x, mu, t).float()
    err = ((fused - eager).norm() / eager.norm()).item()
    print(f"traced network OK: {counter[0]} launches, layout {args.layout}, rel err fused/eager {err:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
