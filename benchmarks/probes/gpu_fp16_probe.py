"""Where does a 16-bit restoration with the shipped dehazing model go non-finite? (GPU probe)

  python benchmarks/gpu_fp16_probe.py [--size 1024]

For fp16 / bf16 / fp32 and fused kernels on / off (TILEDIFF_KERNELS, FFN fusion): encodes a hazy
crop, runs the noise network at a few steps on the whole latent and on the tiled engine, decodes,
and prints whether each stage's output is finite and its largest magnitude.
"""
import argparse
import os

import numpy as np
import torch

import tilediff
from pathlib import Path
from tilediff import engine
from tilediff.io import read_image
from tilediff.restorer import Restorer, to_float_rgb

p = argparse.ArgumentParser()
p.add_argument("--size", type=int, default=1024)
args = p.parse_args()
data = Path(tilediff.__file__).parent / "data"
hazy = to_float_rgb(read_image(data / "example_hazy.png").rgb)
reps = (args.size // hazy.shape[0] + 1, args.size // hazy.shape[1] + 1)
img = np.tile(hazy, (reps[0], reps[1], 1))[:args.size, :args.size]
x = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))[None]


def stat(t):
    t = t.float()
    return f"finite={bool(torch.isfinite(t).all())} max={t.abs().nan_to_num(0, 0, 0).max().item():.3g}"


for kernels, ffn in (("1", "1"), ("1", "0"), ("0", "1")):
    os.environ["TILEDIFF_KERNELS"], os.environ["TILEDIFF_KERNELS_FFN"] = kernels, ffn
    for precision in ("fp16", "bf16", "fp32"):
        r = Restorer("dehaze", device="cuda", precision=precision)
        m, dt = r.model, engine.DTYPES[precision]
        m.to(device="cuda", dtype=dt)
        with torch.no_grad():
            mu, hidden = m.compressor.encode(x.to("cuda", dt))
            line = [f"kernels={kernels} ffn={ffn} {precision}: mu {stat(mu)}",
                    f"hidden {all(bool(torch.isfinite(h.float()).all()) for h in hidden)}"]
            for t in (100, 50, 1):
                line.append(f"eps@{t} {stat(m.noise(mu, mu, t))}")
            line.append(f"decode {stat(m.compressor.decode(mu, hidden))}")
        out = r.restore(img, steps=10, prior="none", recompose=False, samples=1)
        line.append(f"restore(auto) finite={bool(np.isfinite(out).all())}")
        out = r.restore(img, steps=10, prior="none", recompose=False, samples=1, mode="tiled", tile=32)
        line.append(f"restore(tiled) finite={bool(np.isfinite(out).all())}")
        print(" | ".join(line), flush=True)
