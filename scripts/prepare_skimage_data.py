"""Export the photos scikit-image ships into training / held-out folders of PNGs.

    python scripts/prepare_skimage_data.py OUT_DIR

Writes OUT_DIR/train/*.png (training photos) and OUT_DIR/heldout/*.png (never used in training); with
matplotlib installed also OUT_DIR/heldout_extra/grace_hopper.png (matplotlib's sample photo, a fifth
unseen photo for evaluation only). Needs scikit-image (training/evaluation only; not a runtime
dependency of tilediff).
``cat`` is the same photo as ``chelsea`` and is left out; the two stereo_motorcycle views are both
training images. Images wider than 800 px are halved (retina, hubble_deep_field).
"""
import sys
from pathlib import Path

import numpy as np
from PIL import Image
import skimage.data as data

TRAIN = ["astronaut", "stereo_motorcycle", "immunohistochemistry", "hubble_deep_field", "retina",
         "brick", "grass", "gravel", "moon", "coins", "clock"]
HELDOUT = ["rocket", "coffee", "chelsea", "camera"]


def get(name):
    img = getattr(data, name)()
    if name == "stereo_motorcycle":
        return {"motorcycle_left": img[0], "motorcycle_right": img[1]}
    return {name: img}


def save(folder, name, img):
    img = np.asarray(img)
    if img.ndim == 3 and img.shape[2] == 4:
        img = img[..., :3]
    im = Image.fromarray(img)
    if max(im.size) > 800:
        im = im.resize((im.size[0] // 2, im.size[1] // 2), Image.LANCZOS)
    im = im.convert("RGB")
    folder.mkdir(parents=True, exist_ok=True)
    im.save(folder / f"{name}.png")


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else ".train_state/data")
    for split, names in (("train", TRAIN), ("heldout", HELDOUT)):
        for n in names:
            for key, img in get(n).items():
                save(out / split, key, img)
        print(split, sorted(p.name for p in (out / split).iterdir()))
    try:
        from matplotlib import cbook
    except ImportError:
        print("heldout_extra: skipped (matplotlib is not installed)")
    else:
        with cbook.get_sample_data("grace_hopper.jpg") as f:
            save(out / "heldout_extra", "grace_hopper", np.asarray(Image.open(f).convert("RGB")))
        print("heldout_extra", sorted(p.name for p in (out / "heldout_extra").iterdir()))
