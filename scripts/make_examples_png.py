"""Before/after grid for the model card: rows = held-out photos, columns = hazy | DCP | model | clean.

    python scripts/make_examples_png.py EVAL_DIR CLEAN_DIR OUT.png [--height 150] [--column LABEL=DIR ...]

EVAL_DIR is what `tilediff eval --save-images` wrote (<stem>_hazy/_dcp/_out.png); each --column adds
the <stem>_out.png of another such folder (e.g. the model with other options) before the model's.
"""
import argparse
from pathlib import Path

from PIL import Image, ImageDraw

ap = argparse.ArgumentParser()
ap.add_argument("eval_dir")
ap.add_argument("clean_dir")
ap.add_argument("out")
ap.add_argument("--height", type=int, default=150)
ap.add_argument("--column", action="append", default=[], help="LABEL=DIR: another folder's <stem>_out.png")
ap.add_argument("--label", default="tilediff (this model)", help="label of EVAL_DIR's outputs")
args = ap.parse_args()

extra = [(label, str(Path(folder) / "{}_out.png")) for label, folder in (c.split("=", 1) for c in args.column)]
cols = [("hazy input", "{}_hazy.png"), ("dark channel prior", "{}_dcp.png"), *extra, (args.label, "{}_out.png"),
        ("clean", None)]
stems = sorted(p.name[:-len("_out.png")] for p in Path(args.eval_dir).glob("*_out.png"))
rows = []
for stem in stems:
    tiles = []
    for _, pattern in cols:
        if pattern is None:
            path = next(Path(args.clean_dir).glob(stem + ".*"))
        else:
            path = Path(pattern.format(stem)) if "/" in pattern else Path(args.eval_dir) / pattern.format(stem)
        im = Image.open(path).convert("RGB")
        tiles.append(im.resize((round(im.width * args.height / im.height), args.height), Image.LANCZOS))
    rows.append(tiles)
label_h, gap = 18, 4
widths = [max(r[c].width for r in rows) for c in range(len(cols))]
canvas = Image.new("RGB", (sum(widths) + gap * (len(cols) - 1), label_h + len(rows) * (args.height + gap)), "white")
draw = ImageDraw.Draw(canvas)
x = 0
for c, (label, _) in enumerate(cols):
    draw.text((x + 4, 3), label, fill="black")
    for r, row in enumerate(rows):
        canvas.paste(row[c], (x, label_h + r * (args.height + gap)))
    x += widths[c] + gap
canvas.save(args.out, optimize=True)
print(f"wrote {args.out} ({canvas.width}x{canvas.height})")
