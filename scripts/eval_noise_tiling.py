"""Mean PSNR over held-out photos × haze seeds 0-2, whole vs 32-latent noise tiles (posterior sampler).

    python scripts/eval_noise_tiling.py THREADS CLEAN_DIR MODEL.safetensors [MODEL ...]
"""
import sys, json, torch, numpy as np
torch.set_num_threads(int(sys.argv[1]))
from tilediff.io import read_image
from tilediff.training import list_images, haze_for_eval
from tilediff.training.metrics import psnr
from tilediff.tasks.dehaze.dcp import dark_channel_prior
from tilediff.restorer import Restorer
models = sys.argv[3:]
folder = sys.argv[2]
seeds = [0, 1, 2]
configs = [("whole", {}), ("t32o16", dict(mode="tiled", tile=32, overlap=16))]
imgs = [(p.name, read_image(p).rgb) for p in list_images(folder)]
hazy = {(n, s): haze_for_eval(c, n, s, "moderate")[0] for n, c in imgs for s in seeds}
res = {"hazy": [psnr(hazy[(n, s)], c) for n, c in imgs for s in seeds],
       "dcp": [psnr(dark_channel_prior(hazy[(n, s)]), c) for n, c in imgs for s in seeds]}
print("hazy", np.mean(res["hazy"]), "dcp", np.mean(res["dcp"]), flush=True)
for m in models:
    r = Restorer(weights=m, device="cpu")
    for cname, kw in configs:
        vals = [psnr(r.restore(hazy[(n, s)], sampler="posterior", seed=s, **kw), c) for n, c in imgs for s in seeds]
        res[f"{m}:{cname}"] = vals
        print(m, cname, round(float(np.mean(vals)), 2), [round(v, 1) for v in vals], flush=True)
json.dump(res, open("eval_noise_tiling.json", "w"))
