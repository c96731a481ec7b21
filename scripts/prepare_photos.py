"""Freely licensed photographs for dehazing v2: Debian wallpaper packages + scikit-image's photos.

    python scripts/prepare_photos.py [OUT_DIR]          # default .train_state/photos (git-ignored)
    python scripts/prepare_photos.py OUT_DIR --deb-dir DIR   # reuse .deb files already in DIR

Fetches the Debian packages below with ``apt-get download`` into a temporary folder (needs the
package lists: ``apt-get update`` once; nothing is installed), unpacks them with ``dpkg -x``, keeps the
photographs named in ``PHOTOS`` (decided by looking at every candidate; what was left out and why is in
``LEFT_OUT``), reads each one's author and licence from the package's ``usr/share/doc/PKG/copyright``
(machine-readable DEP-5: the last ``Files:`` paragraph that matches wins), downsizes it so that the
long side is at most 2048 px (Lanczos, aspect kept, EXIF orientation applied) and writes

    OUT_DIR/train/NAME.png, OUT_DIR/eval/NAME.png   the split below (deterministic: explicit lists)
    OUT_DIR/manifest.json                           every file: split, source, package version,
                                                    original path and size, author, licence, sha256
    OUT_DIR/LICENSES.md                             the same as a table, for attribution
    OUT_DIR/copyright/PKG                           each package's copyright file, verbatim
                                                    (the full licence texts are in there)

scikit-image's real photographs are added (astronaut and the stereo_motorcycle pair to train; camera,
chelsea, coffee and rocket to eval), and matplotlib's ``grace_hopper.jpg`` to eval (from the Debian
package ``python-matplotlib-data``, or an installed matplotlib). Not photographs of scenes and left out:
coins, hubble_deep_field, immunohistochemistry, moon, retina, text, checkerboard, ...; ``cat`` is
``chelsea``; the gray texture and clock photos (brick, grass, gravel, clock) are left out too, the new
set has colour photos of real scenes.

Needs Pillow, numpy and scikit-image (training / evaluation only; not a runtime dependency).
"""
from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

LONG_SIDE = 2048

PACKAGES = ["mate-backgrounds", "lomiri-wallpapers-16.04", "lomiri-wallpapers-20.04"]
MPL_PACKAGE = "python-matplotlib-data"   # grace_hopper.jpg
MPL_PATH = "usr/share/matplotlib/mpl-data/sample_data/grace_hopper.jpg"

MATE = "usr/share/backgrounds/mate/nature/"
LOMIRI = "usr/share/backgrounds/"

# (name, package, path in the package, split). Every candidate was looked at (thumbnails): these are
# photographs. Eval: 7 of the new photos (landscapes with depth: aitzgorri, life, dune; close and
# middle distance: dragonfly, friends, wine, kleiber), the rest train.
PHOTOS = [
    ("aqua", "mate-backgrounds", MATE + "Aqua.jpg", "train"),                  # water drop, macro
    ("blinds", "mate-backgrounds", MATE + "Blinds.jpg", "train"),              # backlit leaf, macro
    ("dune", "mate-backgrounds", MATE + "Dune.jpg", "eval"),                   # dune grass, sea, sky
    ("freshflower", "mate-backgrounds", MATE + "FreshFlower.jpg", "train"),    # orange flower, macro
    ("garden", "mate-backgrounds", MATE + "Garden.jpg", "train"),              # marigold, bokeh
    ("greenmeadow", "mate-backgrounds", MATE + "GreenMeadow.jpg", "train"),    # grass close-up
    ("ladybird", "mate-backgrounds", MATE + "LadyBird.jpg", "train"),          # ladybird, flowers
    ("raindrops", "mate-backgrounds", MATE + "RainDrops.jpg", "train"),        # leaves with drops
    ("storm", "mate-backgrounds", MATE + "Storm.jpg", "train"),                # storm clouds, road (motion blur)
    ("twowings", "mate-backgrounds", MATE + "TwoWings.jpg", "train"),          # dandelion seeds, bokeh
    ("wood", "mate-backgrounds", MATE + "Wood.jpg", "train"),                  # wooden planks, low angle
    ("yellowflower", "mate-backgrounds", MATE + "YellowFlower.jpg", "train"),  # yellow flower, macro
    ("bridge", "lomiri-wallpapers-16.04", LOMIRI + "Bridge_by_Sander_Klootwijk.jpg", "train"),   # cables, estuary
    ("dragonfly", "lomiri-wallpapers-16.04", LOMIRI + "Dragonfly_by_Bolly.jpg", "eval"),         # dragonfly, tree, sky
    ("fig", "lomiri-wallpapers-16.04", LOMIRI + "Picture_0B_by_freespace.jpg", "train"),         # fig in a bowl
    ("brushes", "lomiri-wallpapers-16.04", LOMIRI + "Picture_1A_by_freespace.jpg", "train"),     # paint brushes
    ("wine", "lomiri-wallpapers-16.04", LOMIRI + "Wine_by_Jakkub_Mede.jpg", "eval"),             # interior (portrait)
    ("aitzgorri", "lomiri-wallpapers-16.04", LOMIRI + "aitzgorri_by_Aitzol_Berasategi.jpg", "eval"),  # mountains
    ("free", "lomiri-wallpapers-16.04", LOMIRI + "free_by_Peter_Nerlich.jpg", "train"),          # lamp, bird figure
    ("friends", "lomiri-wallpapers-16.04", LOMIRI + "friends_by_Aitzol_Berasategi.jpg", "eval"),  # dogs (portrait)
    ("greentock", "lomiri-wallpapers-16.04", LOMIRI + "greentock_by_Peter_Nerlich.jpg", "train"),  # wall clock
    ("life", "lomiri-wallpapers-16.04", LOMIRI + "life_by_Aitzol_Berasategi.jpg", "eval"),       # forest stream
    ("picosdeeuropa", "lomiri-wallpapers-16.04", LOMIRI + "picosdeeuropa_by_Aitzol_Berasategi.jpg",
     "train"),                                                                                  # mountains
    ("seeding", "lomiri-wallpapers-16.04", LOMIRI + "seeding_by_Clements_Engelhardt.jpg", "train"),  # dandelions, sun
    ("sunset", "lomiri-wallpapers-16.04", LOMIRI + "sunset_by_Aitzol_Berasategi.jpg", "train"),  # hills at sunset
    ("kleiber", "lomiri-wallpapers-20.04", LOMIRI + "Kleiber_by_Lukas_Baubkus.jpg", "eval"),     # nuthatch, tree
]

# Looked at and left out.
LEFT_OUT = [
    ("lomiri-wallpapers-16.04", LOMIRI + "umang_by_Abhishek_Mudgal.jpg", "render: smooth abstract colour gradients"),
    ("lomiri-wallpapers-16.04", LOMIRI + "analogpattern_by_Peter_Nerlich.jpg",
     "close-up of a textured surface under a strong green-to-purple colour grade: no scene, unnatural colours"),
    ("lomiri-wallpapers-20.04", LOMIRI + "Fossa_by_Jasper_Roks.jpg", "render: abstract shapes (Ubuntu 20.04 artwork)"),
    ("lomiri-wallpapers-20.04", LOMIRI + "Infinite-Sea_by_Aury88.jpg",
     "digital composite: a Milky Way photo under a magenta graphic overlay and a rendered sea"),
    ("lomiri-wallpapers-20.04", LOMIRI + "Painting-Colors_by__herobrine7gamer.jpg",
     "digital painting: flat colour bands"),
    ("mate-backgrounds", "usr/share/backgrounds/mate/abstract/*", "abstract artwork (Elephants is a painting)"),
    ("mate-backgrounds", "usr/share/backgrounds/mate/desktop/*", "desktop artwork and logos"),
]

# scikit-image photographs: (name, skimage.data function, split, author, licence), from its docstrings
MIDDLEBURY = "Middlebury 2014 stereo benchmark (Nesic, Westling, Wang, Kitajima, Krathwohl, Scharstein)"
SKIMAGE = [
    ("astronaut", "astronaut", "train", "NASA (Eileen Collins)", "public domain (no known copyright restrictions)"),
    ("motorcycle_left", "stereo_motorcycle", "train", MIDDLEBURY, "none stated in scikit-image's docstring"),
    ("motorcycle_right", "stereo_motorcycle", "train", MIDDLEBURY, "none stated in scikit-image's docstring"),
    ("camera", "camera", "eval", "Lav Varshney", "CC0"),
    ("chelsea", "chelsea", "eval", "Stefan van der Walt", "CC0"),
    ("coffee", "coffee", "eval", "Rachel Michetti (courtesy of Pikolo Espresso Bar)", "CC0"),
    ("rocket", "rocket", "eval", "SpaceX (DSCOVR launch on Falcon 9)", "public domain"),
]
GRACE_HOPPER = ("Grace Hopper portrait, commonly credited as an official US Navy photograph",
                "no separate notice; the package's copyright file covers its files (`Files: *`) with the "
                "matplotlib licence (PSF-based, BSD-compatible); US Navy photographs are public domain")


# ---- Debian packages -----------------------------------------------------------------------------
def fetch(packages, work, deb_dir=None):
    """{package: (unpacked root, version)}: ``apt-get download`` (or .deb files from ``deb_dir``), ``dpkg -x``."""
    out = {}
    for pkg in packages:
        debs = sorted(Path(deb_dir).glob(f"{pkg}_*.deb")) if deb_dir else []
        if not debs:
            subprocess.run(["apt-get", "download", "-q", pkg], cwd=work, check=True,
                           stdout=subprocess.DEVNULL)
            debs = sorted(Path(work).glob(f"{pkg}_*.deb"))
        if not debs:
            raise RuntimeError(f"apt-get download {pkg} left no .deb file (run `apt-get update` first?)")
        deb = debs[-1]
        version = subprocess.run(["dpkg-deb", "-f", str(deb), "Version"], check=True, capture_output=True,
                                 text=True).stdout.strip()
        root = Path(work) / "x" / pkg
        root.mkdir(parents=True, exist_ok=True)
        subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True)
        out[pkg] = (root, version)
    return out


def parse_copyright(text):
    """The ``Files:`` paragraphs of a DEP-5 copyright file: [(patterns, copyright, licence)]."""
    paragraphs = []
    for block in text.split("\n\n"):
        fields, key = {}, None
        for line in block.splitlines():
            if line[:1] in (" ", "\t") and key:
                fields[key] += "\n" + line.strip()
            elif ":" in line:
                key, value = line.split(":", 1)
                key = key.strip().lower()
                fields[key] = value.strip()
        if "files" in fields:
            patterns = fields["files"].split()
            licence = fields.get("license", "").splitlines()[0].strip() if fields.get("license") else ""
            holders = " ; ".join(h.strip() for h in fields.get("copyright", "").splitlines() if h.strip())
            paragraphs.append((patterns, holders, licence))
    return paragraphs


def licence_of(paragraphs, installed_path):
    """(copyright, licence) of an installed file: the last paragraph with a pattern matching the end of
    its path (source and installed trees differ in their leading folders: ``nature/Aqua.jpg`` is installed
    as ``.../mate/nature/Aqua.jpg``), else one whose pattern names the same file without wildcards in
    another folder (``16.04/x.jpg`` installed as ``usr/share/backgrounds/x.jpg``)."""
    parts = Path(installed_path).parts
    by_path, by_name = None, None
    for patterns, holders, licence in paragraphs:
        for pat in patterns:
            pat_parts = Path(pat).parts
            if fnmatch.fnmatch("/".join(parts[-len(pat_parts):]), pat) and pat != "*":
                by_path = (holders, licence)
            elif not any(c in pat_parts[-1] for c in "*?[") and pat_parts[-1] == parts[-1]:
                by_name = (holders, licence)
    best = by_path or by_name
    if best is None:
        raise ValueError(f"{installed_path}: no Files paragraph of the copyright file matches")
    return best


# ---- images --------------------------------------------------------------------------------------
def downsize(im, long_side=LONG_SIDE):
    im = ImageOps.exif_transpose(im).convert("RGB")
    w, h = im.size
    if max(w, h) > long_side:
        k = long_side / max(w, h)
        im = im.resize((max(1, round(w * k)), max(1, round(h * k))), Image.LANCZOS)
    return im


def write_png(im, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, optimize=False)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def skimage_images():
    import skimage.data as data
    cache = {}
    for name, fn, split, author, licence in SKIMAGE:
        if fn not in cache:
            cache[fn] = getattr(data, fn)()
        img = cache[fn]
        if fn == "stereo_motorcycle":
            img = img[0] if name.endswith("left") else img[1]
        img = np.asarray(img)
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        yield name, fn, split, author, licence, Image.fromarray(img[..., :3].astype(np.uint8))


def grace_hopper(work, deb_dir):
    """(PIL image, source description, package version or None)."""
    try:
        root, version = fetch([MPL_PACKAGE], work, deb_dir)[MPL_PACKAGE]
        return Image.open(root / MPL_PATH), f"{MPL_PACKAGE}:{MPL_PATH}", version, root
    except (subprocess.CalledProcessError, RuntimeError, FileNotFoundError) as e:
        print(f"note: {MPL_PACKAGE} not available ({e}); trying matplotlib", file=sys.stderr)
    from matplotlib import cbook
    with cbook.get_sample_data("grace_hopper.jpg") as f:
        return Image.open(f).copy(), "matplotlib sample_data/grace_hopper.jpg", None, None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", nargs="?", default=".train_state/photos")
    ap.add_argument("--deb-dir", help="use the .deb files in this folder instead of downloading them")
    ap.add_argument("--long-side", type=int, default=LONG_SIDE)
    args = ap.parse_args(argv)
    out = Path(args.out)
    for split in ("train", "eval"):
        if (out / split).exists():
            shutil.rmtree(out / split)   # a rebuild leaves nothing stale behind
    entries, versions = [], {}
    with tempfile.TemporaryDirectory(prefix="tilediff_photos_") as work:
        unpacked = fetch(PACKAGES, work, args.deb_dir)
        (out / "copyright").mkdir(parents=True, exist_ok=True)
        paragraphs = {}
        for pkg, (root, version) in unpacked.items():
            versions[pkg] = version
            cfile = root / "usr/share/doc" / pkg / "copyright"
            shutil.copyfile(cfile, out / "copyright" / pkg)
            paragraphs[pkg] = parse_copyright(cfile.read_text(encoding="utf-8", errors="replace"))
        for name, pkg, rel, split in PHOTOS:
            root, version = unpacked[pkg]
            src = root / rel
            holders, licence = licence_of(paragraphs[pkg], rel)
            with Image.open(src) as im:
                orig = ImageOps.exif_transpose(im).size
                small = downsize(im, args.long_side)
            sha = write_png(small, out / split / f"{name}.png")
            entries.append({"name": name, "file": f"{split}/{name}.png", "split": split, "source": "debian",
                            "package": pkg, "package_version": version, "original_path": "/" + rel,
                            "original_size": list(orig), "size": list(small.size), "copyright": holders,
                            "license": licence, "sha256": sha})
        for name, fn, split, author, licence, im in skimage_images():
            small = downsize(im, args.long_side)
            sha = write_png(small, out / split / f"{name}.png")
            entries.append({"name": name, "file": f"{split}/{name}.png", "split": split, "source": "scikit-image",
                            "original_path": f"skimage.data.{fn}()", "original_size": list(im.size),
                            "size": list(small.size), "copyright": author, "license": licence, "sha256": sha})
        im, where, version, root = grace_hopper(work, args.deb_dir)
        if root is not None:
            versions[MPL_PACKAGE] = version
            shutil.copyfile(root / "usr/share/doc" / MPL_PACKAGE / "copyright", out / "copyright" / MPL_PACKAGE)
        small = downsize(im, args.long_side)
        sha = write_png(small, out / "eval" / "grace_hopper.png")
        entries.append({"name": "grace_hopper", "file": "eval/grace_hopper.png", "split": "eval",
                        "source": "matplotlib", "package": MPL_PACKAGE if version else None,
                        "package_version": version, "original_path": where, "original_size": list(im.size),
                        "size": list(small.size), "copyright": GRACE_HOPPER[0], "license": GRACE_HOPPER[1],
                        "sha256": sha})

    split = {s: sorted(e["name"] for e in entries if e["split"] == s) for s in ("train", "eval")}
    manifest = {"format": "tilediff-photos/1", "long_side": args.long_side, "packages": versions,
                "split": split, "photos": entries,
                "left_out": [{"package": p, "path": "/" + r, "reason": why} for p, r, why in LEFT_OUT]}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    write_licenses(out / "LICENSES.md", manifest)
    for s in ("train", "eval"):
        print(f"{s} ({len(split[s])}): {', '.join(split[s])}")
    print(f"wrote {out}/manifest.json and {out}/LICENSES.md")


def write_licenses(path, manifest):
    lines = ["# Licences of the photographs in this folder", "",
             "Made by `scripts/prepare_photos.py` (downsized to a long side of at most "
             f"{manifest['long_side']} px and converted to PNG: modified from the originals). Authors and "
             "licences as recorded in each Debian package's `usr/share/doc/PKG/copyright` (copied verbatim, "
             "with the full licence texts, into `copyright/`) or in scikit-image's docstrings.", "",
             "Packages: " + ", ".join(f"{p} {v}" for p, v in manifest["packages"].items()), "",
             "| file | split | source | original | size | author / copyright | licence |",
             "|---|---|---|---|---|---|---|"]
    for e in manifest["photos"]:
        src = e.get("package") or e["source"]
        lines.append(f"| {e['file']} | {e['split']} | {src} | `{e['original_path']}` "
                     f"({e['original_size'][0]}×{e['original_size'][1]}) | {e['size'][0]}×{e['size'][1]} | "
                     f"{e['copyright']} | {e['license']} |")
    lines += ["", "## Looked at and left out", ""]
    lines += [f"- `{e['path']}` ({e['package']}): {e['reason']}" for e in manifest["left_out"]]
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
