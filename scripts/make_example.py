"""Make the bundled example: tilediff/data/example_clean.png (the held-out scikit-image ``rocket``
photo, resized to 512 px wide) and tilediff/data/example_hazy.png (moderate synthetic haze, seed 0).

    python scripts/make_example.py        # needs scikit-image (not a runtime dependency)
"""
from pathlib import Path

import numpy as np
from PIL import Image
import skimage.data

from tilediff.tasks.dehaze.haze import add_haze

out = Path(__file__).resolve().parents[1] / "tilediff" / "data"
out.mkdir(parents=True, exist_ok=True)
im = Image.fromarray(skimage.data.rocket())
w, h = im.size
im = im.resize((512, round(h * 512 / w)), Image.LANCZOS)
clean = np.asarray(im, dtype=np.float32) / 255
hazy, info = add_haze(clean, np.random.default_rng(0), density="moderate")
im.save(out / "example_clean.png", optimize=True)
Image.fromarray((hazy * 255 + 0.5).astype(np.uint8)).save(out / "example_hazy.png", optimize=True)
print(f"{out}: {im.size[0]}x{im.size[1]}, beta {info['beta']:.2f}, mean transmission {info['mean_transmission']:.2f}")
