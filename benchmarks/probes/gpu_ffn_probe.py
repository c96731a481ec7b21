"""Which launches of ffn_fused fault (illegal memory access), each case in its own process.

  python benchmarks/gpu_ffn_probe.py OUT_DIR

Run 4 on an H200 (2026-11-27): ffn_fused on a channels-last (1, 64, 512, 752) fp16 tensor with
BLOCK_N = 32, 4 warps faulted; BLOCK_N = 64 in channels-last and BLOCK_N = 32 in NCHW did not.
Each case compares with the reference and prints OK / WRONG / FAULT; Triton's cache (TTGIR, PTX)
of the big fp16 BLOCK_N 32/64, 4-warp cases goes to OUT_DIR/triton_cache_<case> for reading offline.
"""
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CASE = r'''
import sys, torch
sys.path.insert(0, {repo!r})
from tilediff.kernels import triton_kernels as tk
from tilediff.kernels import reference as R
B, C, H, W = {shape}
dt = getattr(torch, {dtype!r})
g = torch.Generator(device="cpu").manual_seed(0)
def r(*s, scale=1.0):
    return (scale * torch.randn(*s, generator=g)).to("cuda", dt)
fmt = torch.channels_last if {cl} else torch.contiguous_format
x1 = r(B, C, H, W).contiguous(memory_format=fmt); x = r(B, C, H, W).contiguous(memory_format=fmt)
s = torch.randn(B, C, generator=g).cuda()
args = (x1, x, s, r(C, C, 1, 1, scale=C ** -0.5), r(C, scale=0.1), r(1, C, 1, 1), 1 + 0.1 * r(1, C, 1, 1),
        0.3 * r(B, C, 1, 1), 0.3 * r(B, C, 1, 1), r(2 * C, C, 1, 1, scale=C ** -0.5), r(2 * C, scale=0.1),
        r(C, C, 1, 1, scale=C ** -0.5), r(C, scale=0.1), r(1, C, 1, 1))
tk.CONFIG_OVERRIDES[("ffn", C, dt)] = {cfg!r}
out = tk.ffn_fused(*args)
torch.cuda.synchronize()
ref = R.reference_ffn_fused(*args)
err = ((out.float() - ref.float()).norm() / ref.float().norm()).item()
print("OK" if err < 1e-2 else "WRONG", f"rel err {{err:.1e}}")
'''


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else "."
    big, small = (1, 64, 512, 752), (1, 64, 64, 96)
    cases = []
    for shape in (big, small):
        for cl in (True, False):
            for bn, w in ((32, 4), (32, 2), (32, 8), (16, 4), (64, 4), (128, 8)):
                cases.append((shape, "float16", cl, dict(BLOCK_N=bn, num_warps=w, num_stages=1)))
    cases += [(big, "float32", True, dict(BLOCK_N=32, num_warps=4, num_stages=1)),
              (big, "bfloat16", True, dict(BLOCK_N=32, num_warps=4, num_stages=1))]
    results = []
    for shape, dtype, cl, cfg in cases:
        name = f"{'x'.join(map(str, shape))}_{dtype}_{'cl' if cl else 'nchw'}_n{cfg['BLOCK_N']}_w{cfg['num_warps']}"
        keep = shape == big and dtype == "float16" and cfg["BLOCK_N"] in (32, 64) and cfg["num_warps"] == 4
        env = dict(os.environ, TRITON_CACHE_DIR=os.path.join(out_dir if keep else "/tmp", "triton_cache_" + name))
        code = CASE.format(repo=REPO, shape=shape, dtype=dtype, cl=cl, cfg=cfg)
        try:
            p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=90, env=env)
            text = (p.stdout.strip().splitlines() or [""])[-1]
            status = text if p.returncode == 0 else ("FAULT" if "illegal memory access" in p.stderr
                                                      else "ERROR " + p.stderr.strip().splitlines()[-1][:200])
        except subprocess.TimeoutExpired:
            status = "TIMEOUT"
        results.append(dict(case=name, status=status))
        print(f"{name:45s} {status}", flush=True)
    with open(os.path.join(out_dir, "ffn_probe.json"), "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
