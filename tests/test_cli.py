"""The command line and the batch API: real-world files, folders, errors, interrupts.

The networks are the golden tiny ones (converted to model files once per module); images are small
and runs use 2 steps. Tests about options, names and write errors replace ``Restorer.restore`` by an
identity so they cost no network time; the others run the real model.
"""
import errno
import json
import os
import signal

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner
from PIL import Image

from conftest import signal_during_sampling, torch_threads
import tilediff
import tilediff.io as tio
from tilediff.batch import find_jobs, pair_stereo, stereo_side, write_options
from tilediff.cli import main
from tilediff.io import read_image
from tilediff.restorer import Restorer
from tilediff.weights import convert

STEPS = ["--steps", "2"]


# ---- fixtures and helpers ---------------------------------------------------------------------

@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny networks gain nothing from threads, and on a busy machine OpenMP's spinning threads make a
    60 ms forward take seconds; run this module single-threaded (and restore the setting after)."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def stereo_model(golden_dir, tmp_path_factory):
    return convert(golden_dir / "nafnet_stereo_small.pth", None, task="stereo-sr",
                   output=tmp_path_factory.mktemp("models") / "s.safetensors")


@pytest.fixture
def identity_restore(monkeypatch):
    """Replace the network by an identity; returns the list of (restorer, image, options) calls."""
    calls = []

    def restore(self, image, options=None, **changes):
        resolved = self.options(options, **changes)
        calls.append((self, image, dict(resolved.as_json(), progress=resolved.progress)))
        if isinstance(image, tuple):
            return tuple(np.asarray(v, dtype=np.float32) for v in image)
        return np.asarray(image, dtype=np.float32)

    def restore_source(self, source, sink, options=None, *, stats=None, **changes):   # the streamed path
        resolved = self.options(options, **changes)
        calls.append((self, source, dict(resolved.as_json(), progress=resolved.progress)))
        h, w = source.shape
        return sink.write([(0, source.region(0, h, 0, w).transpose(1, 2, 0))])
    monkeypatch.setattr(Restorer, "restore", restore)
    monkeypatch.setattr(Restorer, "restore_source", restore_source)
    return calls


def restore(*args):
    """Run `tilediff restore ARGS`; returns the click Result (stdout/stderr separate)."""
    return CliRunner().invoke(main, ["restore", *map(str, args)])


def error_lines(result):
    return [line for line in result.stderr.splitlines() if line.startswith("tilediff: error:")]


def srgb_profile():
    from PIL import ImageCms
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def make_exif():
    exif = Image.Exif()
    exif[271] = "TestCam"
    exif.get_ifd(0x8769)[0x829A] = (1, 250)    # ExposureTime
    return exif.tobytes()


def noise_image(h, w, c=3, dtype=np.uint8, seed=0):
    rng = np.random.default_rng(seed)
    top = np.iinfo(dtype).max
    shape = (h, w) if c == 1 else (h, w, c)
    return rng.integers(0, top + 1, size=shape, dtype=np.uint64).astype(dtype)


def write_png(path, h=16, w=16, seed=0):
    Image.fromarray(noise_image(h, w, seed=seed)).save(path)
    return path


def snapshot(folder):
    """{relative path: (bytes, mtime_ns)} of every file under folder (hidden ones included)."""
    return {p.relative_to(folder).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def temp_files(folder):
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


# ---- real files keep bit depth, alpha, ICC and EXIF --------------------------------------------

def test_restore_keeps_depth_alpha_icc_and_exif(dehaze_model, tmp_path):
    icc = srgb_profile()
    rgba16 = noise_image(32, 48, 4, np.uint16, seed=1)
    tifffile.imwrite(tmp_path / "scan.tif", rgba16, photometric="rgb", extrasamples=[2], tile=(16, 16),
                     compression="zlib", iccprofile=icc, metadata=None)
    Image.fromarray(noise_image(24, 32, seed=2)).save(tmp_path / "photo.png", icc_profile=icc)
    Image.fromarray(noise_image(20, 28, 1, seed=3)).save(tmp_path / "grey.png")
    Image.fromarray(noise_image(24, 32, seed=4)).save(tmp_path / "camera.jpg", quality=95, exif=make_exif())
    before = snapshot(tmp_path)
    names = ["scan.tif", "photo.png", "grey.png", "camera.jpg"]

    result = restore(*[tmp_path / n for n in names], "--task", "dehaze", "--weights", dehaze_model, *STEPS,
                     "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert snapshot(tmp_path).items() >= before.items()          # inputs untouched (bytes and mtime)
    # one summary line per image: size, seconds, peak memory
    assert sum("peak memory" in line for line in result.stderr.splitlines()) == 4

    with tifffile.TiffFile(tmp_path / "scan_dehaze.tif") as tif:
        page = tif.pages.first
        out = page.asarray()
        assert out.dtype == np.uint16 and out.shape == rgba16.shape
        assert np.array_equal(out[..., 3], rgba16[..., 3])       # alpha bit for bit
        assert page.tags["InterColorProfile"].value == icc       # ICC profile bytes unchanged
        assert page.is_tiled and (page.tilelength, page.tilewidth) == (16, 16)
    assert not np.array_equal(out[..., :3], rgba16[..., :3])      # the colour planes were restored

    png = read_image(tmp_path / "photo_dehaze.png")
    assert png.dtype == np.uint8 and png.mode == "rgb" and png.alpha is None
    assert png.shape == (24, 32) and png.icc == icc
    grey = Image.open(tmp_path / "grey_dehaze.png")
    assert grey.mode == "L" and grey.size == (28, 20)
    with Image.open(tmp_path / "camera_dehaze.jpg") as jpg:
        assert jpg.format == "JPEG" and jpg.size == (32, 24)
        exif = jpg.getexif()
        assert exif[271] == "TestCam" and exif.get_ifd(0x8769)[0x829A] == Image.open(
            tmp_path / "camera.jpg").getexif().get_ifd(0x8769)[0x829A]
    assert read_image(tmp_path / "camera_dehaze.jpg").exif == read_image(tmp_path / "camera.jpg").exif
    assert not temp_files(tmp_path)


# ---- bad inputs: one line, non-zero exit, nothing written ---------------------------------------

def _truncated_tiff(path):
    tifffile.imwrite(path, noise_image(64, 64, 3, seed=5), tile=(16, 16), compression="zlib", metadata=None)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) * 2 // 3])


@pytest.mark.parametrize("name, make", [
    ("cut.tif", _truncated_tiff),
    ("notes.png", lambda p: p.write_text("this is not an image\n")),
    ("empty.png", lambda p: p.write_bytes(b"")),
    ("paint.bmp", lambda p: Image.new("RGB", (8, 8)).save(p)),
    ("print.jpg", lambda p: Image.new("CMYK", (8, 8)).save(p)),
    ("ints.tif", lambda p: tifffile.imwrite(p, np.zeros((8, 8), np.int32))),
])
def test_bad_input_gives_one_line_and_no_output(dehaze_model, tmp_path, name, make):
    make(tmp_path / name)
    before = snapshot(tmp_path)
    result = restore(tmp_path / name, "--task", "dehaze", "--weights", dehaze_model, *STEPS)
    assert result.exit_code != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tilediff: error: ") and name in lines[0], result.stderr
    assert snapshot(tmp_path) == before                          # no output, no temp file, input untouched


def test_wrong_task_weights_missing_weights_and_bad_options(dehaze_model, tmp_path):
    src = write_png(tmp_path / "a.png")
    for args, expected in [
        (["--task", "deshadow", "--weights", dehaze_model], "for task dehaze, not deshadow"),
        (["--task", "dehaze", "--weights", tmp_path / "missing.safetensors"], "missing.safetensors"),
        (["--task", "dehaze", "--weights", dehaze_model, "--device", "tpu9"], "--device"),
        (["--task", "dehaze", "--weights", dehaze_model, "--memory-budget", "lots"], "--memory-budget: cannot read"),
        (["--task", "dehaze", "--weights", dehaze_model, "--compression", "gzip9"], "--compression"),
        (["--task", "dehaze", "--weights", dehaze_model, "-o", tmp_path / "x.png", src], "-o/--output"),
        (["--task", "deshadow", "--weights", dehaze_model, "--recompose"], "--recompose applies to dehaze only"),
        (["--task", "deshadow", "--weights", dehaze_model, "--prior", "dcp"], "--prior applies to dehaze only"),
    ]:
        result = restore(src, *args)
        assert result.exit_code == 1, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("tilediff: error:") and expected in lines[0], lines
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]


def test_bokeh_refuses_to_run_without_lens_flags(tmp_path):
    src = write_png(tmp_path / "a.png")
    for missing in ["--src-lens", "--tgt-lens", "--disparity"]:
        flags = {"--src-lens": "Sony50mmf16.0BS", "--tgt-lens": "Canon50mmf1.8BS", "--disparity": "30"}
        del flags[missing]
        result = restore(src, "--task", "bokeh", "--weights", tmp_path / "any.safetensors",
                         *[v for kv in flags.items() for v in kv])
        assert result.exit_code == 1
        assert "needs --src-lens, --tgt-lens and --disparity" in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    result = restore(src, "--task", "bokeh", "--weights", tmp_path / "any.safetensors", "--src-lens", "Nikon50mmf2",
                     "--tgt-lens", "-18", "--disparity", "1")
    assert result.exit_code == 1 and "Nikon50mmf2" in result.stderr
    with pytest.raises(ValueError, match="bokeh task needs"):
        tilediff.restore_folder(tmp_path, tmp_path / "out", task="bokeh", src_lens=160)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]


# ---- options, names, overwriting, full disk (identity network) ----------------------------------

def test_every_option_reaches_the_restorer_and_the_writer(dehaze_model, tmp_path, identity_restore, monkeypatch):
    writes = []
    real_write = Restorer.restore_file      # the streamed read-restore-write of one file
    monkeypatch.setattr(Restorer, "restore_file", lambda self, *a, **kw: writes.append(
        {k: v for k, v in kw.items() if k != "stats"}) or real_write(self, *a, **kw))
    write_png(tmp_path / "a.png")
    Image.fromarray(noise_image(16, 16, seed=1)).save(tmp_path / "b.jpg")
    tifffile.imwrite(tmp_path / "c.tif", noise_image(16, 16, 3, seed=2), metadata=None)
    result = restore(tmp_path / "a.png", tmp_path / "b.jpg", tmp_path / "c.tif", "--task", "dehaze", "--weights",
                     dehaze_model, "--steps", "3", "--sampler", "ode", "--seed", "7", "--samples", "2", "--ensemble",
                     "--no-recompose", "--prior", "dcp", "--prior-t", "0.25", "--mode", "tiled", "--tile",
                     "16", "--overlap", "4", "--memory-budget", "1.5GB", "--device", "cpu", "--precision", "bf16",
                     "--jpeg-quality", "40", "--compression", "9", "-q")
    assert result.exit_code == 0, result.output
    assert result.stderr == ""                                    # --quiet: no bar, no summary lines
    assert len(identity_restore) == 3
    restorer, _, options = identity_restore[0]
    assert restorer.precision == "bf16" and restorer.device.type == "cpu"
    assert {k: options[k] for k in ("steps", "sampler", "seed", "samples", "ensemble", "recompose", "prior", "prior_t",
                                    "mode", "tile", "overlap", "memory_budget")} == \
        dict(steps=3, sampler="ode", seed=7, samples=2, ensemble=True, recompose=False, prior="dcp", prior_t=0.25,
             mode="tiled", tile=16, overlap=4, memory_budget=int(1.5 * 2**30))
    assert options["progress"] is None
    assert writes == [dict(jpeg_quality=40, compression=9), dict(jpeg_quality=40), dict(jpeg_quality=40)]
    # names: NAME_TASK.EXT beside the input
    assert {p.name for p in tmp_path.iterdir()} >= {"a_dehaze.png", "b_dehaze.jpg", "c_dehaze.tif"}
    # a TIFF codec name goes to TIFF outputs only
    result = restore(tmp_path / "c.tif", "--task", "dehaze", "--weights", dehaze_model, "--compression", "none",
                     "--overwrite", "-q")
    assert result.exit_code == 0 and writes[-1] == dict(compression="none")
    assert tifffile.TiffFile(tmp_path / "c_dehaze.tif").pages.first.compression == 1


def test_write_options_apply_to_their_format():
    assert write_options("x.png", None, 80, 3) == {"jpeg_quality": 80, "compression": 3}
    assert write_options("x.tif", None, None, "3") == {}
    assert write_options("x.tif", None, None, "lzw") == {"compression": "lzw"}
    assert write_options("x.png", None, None, "lzw") == {}


def test_outputs_never_replace_inputs_and_need_overwrite(dehaze_model, tmp_path, identity_restore):
    src = write_png(tmp_path / "a.png")
    original = src.read_bytes()
    result = restore(src, "--task", "dehaze", "--weights", dehaze_model, "-o", src, "--overwrite")
    assert result.exit_code == 1 and "refusing to overwrite an input" in result.stderr
    assert src.read_bytes() == original
    out = tmp_path / "result" / "a.png"                           # -o into a folder that does not exist yet
    assert restore(src, "--task", "dehaze", "--weights", dehaze_model, "-o", out, "-q").exit_code == 0
    out.write_bytes(b"keep me")
    result = restore(src, "--task", "dehaze", "--weights", dehaze_model, "-o", out)
    assert result.exit_code == 1 and "--overwrite" in result.stderr and out.read_bytes() == b"keep me"
    result = restore(src, "--task", "dehaze", "--weights", dehaze_model, "-o", out, "--overwrite")
    assert result.exit_code == 0 and read_image(out).shape == (16, 16)
    assert src.read_bytes() == original


def test_full_disk_leaves_no_partial_output_and_the_input_untouched(dehaze_model, tmp_path, identity_restore,
                                                                    monkeypatch):
    src = write_png(tmp_path / "a.png")
    before = snapshot(tmp_path)

    def full_disk(fh, *args, **kw):
        fh.write(b"\x89PNG partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(tio.png, "write_png", full_disk)
    monkeypatch.setattr(tio.sinks, "write_png_rows", full_disk)      # the streamed PNG writer
    result = restore(src, "--task", "dehaze", "--weights", dehaze_model, "--out-dir", tmp_path / "out")
    assert result.exit_code == 1
    assert error_lines(result) == [line for line in result.stderr.splitlines() if line.strip()][-1:]
    assert "a_dehaze.png" in result.stderr and "disk full" in result.stderr
    assert snapshot(tmp_path) == before                           # nothing written, input bytes and mtime same
    assert not (tmp_path / "out").exists()                       # not even an empty output folder


# ---- dry run -------------------------------------------------------------------------------------

def test_dry_run_prints_the_plan_and_writes_nothing(dehaze_model, tmp_path, monkeypatch):
    import tilediff.batch as batch

    def no_decoding(*a, **kw):
        raise AssertionError("--dry-run must not decode pixels")
    monkeypatch.setattr(batch, "read_image", no_decoding)
    monkeypatch.setattr(Restorer, "restore", no_decoding)
    tifffile.imwrite(tmp_path / "big.tif", noise_image(40, 72, 3, seed=1), tile=(16, 16), metadata=None)
    folder = tmp_path / "photos"
    folder.mkdir()
    write_png(folder / "p.png", 24, 40)
    before = snapshot(tmp_path)
    result = restore(tmp_path / "big.tif", folder, "--task", "dehaze", "--weights", dehaze_model, "--dry-run",
                     "--steps", "5", "--memory-budget", "2GB")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "big_dehaze.tif" in out and "image 72x40" in out and "image 40x24" in out
    assert out.count("5 steps") == 2 and out.count("expected peak memory") == 2 and "2.00 GB budget" in out
    assert f"{tmp_path / 'photos_dehaze'}" in out                  # default output folder: DIR_TASK beside DIR
    assert snapshot(tmp_path) == before and not (tmp_path / "photos_dehaze").exists()
    # a bad file is reported in a dry run too
    (tmp_path / "bad.png").write_text("no")
    result = restore(tmp_path / "bad.png", "--task", "dehaze", "--weights", dehaze_model, "--dry-run")
    assert result.exit_code == 1 and error_lines(result) == [result.stderr.strip()] and "bad.png" in result.stderr


# ---- folders -------------------------------------------------------------------------------------

def test_folder_with_a_corrupt_file_restores_the_rest_and_resumes(dehaze_model, tmp_path):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    write_png(src / "a.png", seed=1)
    Image.fromarray(noise_image(16, 24, seed=2)).save(src / "b.jpg")
    write_png(src / "sub" / "c.png", seed=3)
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)  # corrupt
    (src / "readme.txt").write_text("not an image, ignored")
    before = snapshot(src)
    out = tmp_path / "out"

    result = restore(src, "--task", "dehaze", "--weights", dehaze_model, *STEPS, "--out-dir", out, "--recursive")
    assert result.exit_code == 1                                  # one file failed
    assert len(error_lines(result)) == 1 and "broken.png" in error_lines(result)[0]
    for name in ["a_dehaze.png", "b_dehaze.jpg", "sub/c_dehaze.png"]:  # subfolders mirrored
        assert read_image(out / name).shape == read_image(src / name.replace("_dehaze", "")).shape
    summary = json.loads((out / "tilediff_summary.json").read_text())
    assert summary["counts"] == {"succeeded": 3, "failed": 1, "skipped": 0, "total": 4}
    assert [e["input"] for e in summary["succeeded"]] == [str(src / n) for n in ["a.png", "b.jpg", "sub/c.png"]]
    assert summary["succeeded"][1]["output"] == str(out / "b_dehaze.jpg")
    assert summary["succeeded"][1]["size"] == [24, 16] and summary["succeeded"][1]["seconds"] > 0
    assert summary["failed"][0]["input"] == str(src / "broken.png")
    assert "broken.png" in summary["failed"][0]["error"] and "\n" not in summary["failed"][0]["error"]
    assert snapshot(src) == before and not temp_files(tmp_path)

    # a rerun (the Python API) skips what is done and tries the broken file again
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*_dehaze.*")}
    summary = tilediff.restore_folder(src, out, task="dehaze", weights=dehaze_model, recursive=True, steps=2)
    assert summary["counts"] == {"succeeded": 0, "failed": 1, "skipped": 3, "total": 4}
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*_dehaze.*")} == mtimes
    assert json.loads((out / "tilediff_summary.json").read_text())["counts"] == summary["counts"]

    # no --recursive: only the top folder; the summary can go elsewhere
    summary = tilediff.restore_folder(src, out, task="dehaze", restorer=Restorer("dehaze", weights=dehaze_model),
                                      pattern="*.png", summary_path=tmp_path / "s.json")
    assert [e["input"] for e in summary["skipped"]] == [str(src / "a.png")]
    assert (tmp_path / "s.json").exists()


def test_interrupted_batch_keeps_its_summary_and_resumes(dehaze_model, tmp_path, identity_restore):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(3):
        write_png(src / f"{i}.png", seed=i)
    starts = []

    def stop_at_the_second(event, entry):
        if event == "start":
            starts.append(entry["input"])
            if len(starts) == 2:
                raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        tilediff.restore_folder(src, tmp_path / "out", task="dehaze", weights=dehaze_model,
                                on_file=stop_at_the_second)
    summary = json.loads((tmp_path / "out" / "tilediff_summary.json").read_text())
    assert summary["interrupted"] and summary["counts"]["succeeded"] == 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["0_dehaze.png", "tilediff_summary.json"]
    summary = tilediff.restore_folder(src, tmp_path / "out", task="dehaze", weights=dehaze_model)
    assert not summary["interrupted"]
    assert summary["counts"] == {"succeeded": 2, "failed": 0, "skipped": 1, "total": 3}


def test_outputs_in_the_input_folder_are_not_taken_as_inputs(tmp_path):
    for name in ["a.png", "a_dehaze.png", ".a.png.x1.tmp", "b.TIF", "c.txt"]:
        (tmp_path / name).write_bytes(b"x")
    jobs = find_jobs(tmp_path, tmp_path, "dehaze")
    assert [(j.inputs[0].name, j.outputs[0].name) for j in jobs] == [("a.png", "a_dehaze.png"),
                                                                    ("b.TIF", "b_dehaze.TIF")]


# ---- stereo pairs ---------------------------------------------------------------------------------

def test_stereo_pairing_rule():
    assert stereo_side("d/x_L.png")[1] == 0 and stereo_side("d/x_R.png")[1] == 1
    assert stereo_side("d/x-left.jpg")[1] == 0 and stereo_side("d/x-Right.jpg")[1] == 1
    assert stereo_side("d/im0.png")[1] == 0 and stereo_side("d/im1.png")[1] == 1
    assert stereo_side("d/photo.png") is None
    from pathlib import Path
    files = [Path(f"d/{n}") for n in ["0001_L.png", "0001_R.png", "im0.png", "im1.png", "a_left.png",
                                      "a_right.png", "b_L.png", "c.png"]]
    pairs, problems = pair_stereo(files)
    assert [(l.name, r.name) for l, r in pairs] == [("0001_L.png", "0001_R.png"), ("a_left.png", "a_right.png"),
                                                    ("im0.png", "im1.png")]
    assert [p.name for p, _ in problems] == ["b_L.png", "c.png"]
    assert "no right view" in problems[0][1]


def test_stereo_pair_from_two_files_and_from_a_folder(stereo_model, tmp_path):
    write_png(tmp_path / "left.png", 16, 20, seed=1)
    write_png(tmp_path / "right.png", 16, 20, seed=2)
    result = restore(tmp_path / "left.png", tmp_path / "right.png", "--task", "stereo-sr", "--weights", stereo_model,
                     *STEPS)
    assert result.exit_code == 0, result.output
    for name in ["left_stereo-sr.png", "right_stereo-sr.png"]:
        assert read_image(tmp_path / name).shape == (64, 80)       # ×4
    result = restore(tmp_path / "left.png", "--task", "stereo-sr", "--weights", stereo_model)
    assert result.exit_code == 1 and "pairs" in result.stderr

    views = tmp_path / "views"
    views.mkdir()
    write_png(views / "scene_L.png", 16, 16, seed=3)
    write_png(views / "scene_R.png", 16, 16, seed=4)
    write_png(views / "alone_L.png", 16, 16, seed=5)
    result = restore(views, "--task", "stereo-sr", "--weights", stereo_model, *STEPS)
    assert result.exit_code == 1                                    # alone_L has no partner
    out = tmp_path / "views_stereo-sr"                              # default: DIR_TASK beside DIR
    assert sorted(p.name for p in out.iterdir()) == ["scene_L_stereo-sr.png", "scene_R_stereo-sr.png",
                                                      "tilediff_summary.json"]
    summary = json.loads((out / "tilediff_summary.json").read_text())
    assert summary["succeeded"][0]["input"] == [str(views / "scene_L.png"), str(views / "scene_R.png")]
    assert summary["failed"][0]["input"] == str(views / "alone_L.png")
    assert "alone_L.png" in error_lines(result)[0]


# ---- interrupt ----------------------------------------------------------------------------------

def test_sigint_leaves_no_partial_output(dehaze_model, tmp_path):
    write_png(tmp_path / "a.png", 32, 32)
    out = tmp_path / "out"
    code, text = signal_during_sampling(["restore", tmp_path / "a.png", "--task", "dehaze", "--weights", dehaze_model,
                                         "--samples", "1000", "--out-dir", out], signal.SIGINT,
                                        tmp_path / "stderr.txt", env=dict(os.environ, OMP_NUM_THREADS="1"),
                                        cwd=tmp_path)
    assert code == 130, text
    assert text.rstrip().endswith("tilediff: interrupted")
    assert "Traceback" not in text
    assert not out.exists() or not list(out.iterdir())             # no output, no temp file
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["a.png", "stderr.txt"] + (["out"] if out.exists() else []))
