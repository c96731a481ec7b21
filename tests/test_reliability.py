"""Bad inputs and faults (issue 19): each ends in exit 1 or 2 with at most three lines, no traceback and
nothing left in the output folder, or in a correct result (with a one-line warning where data was
changed); special files and inputs stay untouched; a small bomb stays small.

The network is replaced by an identity (``identity_restore``) except in the signal tests, which run
the real command line in a subprocess with the small golden model.
"""
import errno
import json
import re
import os
import signal
import stat
import struct
import subprocess
import sys
import textwrap
import threading
import time
import zlib

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner
from PIL import Image

from conftest import signal_during_sampling
import tilediff.io as tio
from tilediff.cli import main
from tilediff.io import ImageReadError, read_image
from tilediff.restorer import Restorer

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# ---- helpers ------------------------------------------------------------------------------------

@pytest.fixture
def identity_restore(monkeypatch):
    """The network replaced by an identity, on both the whole-array and the streamed path; returns the
    list of restored inputs (empty when no restoration started)."""
    calls = []

    def restore(self, image, options=None, **changes):
        self.options(options, **changes)
        calls.append(image)
        if isinstance(image, tuple):
            return tuple(np.asarray(v, dtype=np.float32) for v in image)
        return np.asarray(image, dtype=np.float32)
    monkeypatch.setattr(Restorer, "restore", restore)
    if hasattr(Restorer, "restore_source"):
        def restore_source(self, source, sink, options=None, *, stats=None, **changes):
            self.options(options, **changes)
            calls.append(source)
            h, w = source.shape
            return sink.write([(0, source.region(0, h, 0, w).transpose(1, 2, 0))])
        monkeypatch.setattr(Restorer, "restore_source", restore_source)
    return calls


def cli(*args):
    return CliRunner().invoke(main, [*map(str, args)])


def restore(model, *args):
    return cli("restore", *args, "--task", "dehaze", "--weights", model, "--steps", "2", "--device", "cpu")


def lines(text):
    return [line for line in text.splitlines() if line.strip()]


def assert_refused(result, *expected, code=1):
    """Exit ``code``, at most three lines on stderr, one ``tilediff: error:`` line holding ``expected``."""
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    err = lines(result.stderr)
    assert 1 <= len(err) <= 3 and "Traceback" not in result.output, result.stderr
    errors = [line for line in err if line.startswith("tilediff: error: ")]
    assert errors and all(text in errors[-1] for text in expected), result.stderr
    return errors[-1]


def snapshot(folder):
    """{name: (bytes or node kind, mtime_ns)} of everything under folder, hidden files and links included."""
    out = {}
    for p in sorted(folder.rglob("*")):
        st = os.lstat(p)
        if stat.S_ISREG(st.st_mode):
            out[p.relative_to(folder).as_posix()] = (p.read_bytes(), st.st_mtime_ns)
        else:
            out[p.relative_to(folder).as_posix()] = (stat.S_IFMT(st.st_mode), os.readlink(p) if p.is_symlink() else None)
    return out


def write_png(path, h=16, w=16, seed=0):
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def chunk(kind, payload):
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_bytes(width, height, idat, *, depth=8, colour=2, extra=()):
    ihdr = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0))
    return PNG_SIGNATURE + ihdr + b"".join(extra) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def smooth_jpeg(path, h=64, w=64):
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack([(x * 4) % 256, (y * 4) % 256, ((x + y) * 2) % 256], -1).astype(np.uint8)
    Image.fromarray(rgb).save(path, quality=90)
    return path


def child_env():
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


# ---- 1. tracebacks instead of one line -------------------------------------------------------

def test_symlink_loop_input_is_one_line(dehaze_model, tmp_path, identity_restore):
    os.symlink("loop_b.png", tmp_path / "loop_a.png")
    os.symlink("loop_a.png", tmp_path / "loop_b.png")
    before = snapshot(tmp_path)
    assert_refused(restore(dehaze_model, tmp_path / "loop_a.png"), "loop_a.png")
    result = restore(dehaze_model, write_png(tmp_path / "ok.png"), "-o", tmp_path / "loop_b.png", "--overwrite")
    assert_refused(result, "loop_b.png")
    assert snapshot(tmp_path) == dict(before, **{"ok.png": snapshot(tmp_path)["ok.png"]})


@pytest.mark.parametrize("budget, expected", [
    ("inf", "cannot read memory size"), ("1e400GB", "cannot read memory size"), ("-5GB", "positive number"),
    ("0", "positive number"), ("1KB", "below the least"), ("lots", "cannot read memory size")])
def test_bad_memory_budgets_are_one_line(dehaze_model, tmp_path, identity_restore, budget, expected):
    result = restore(dehaze_model, write_png(tmp_path / "a.png"), "--memory-budget", budget)
    assert_refused(result, "--memory-budget", expected)
    assert not identity_restore and sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]


def test_steps_above_the_models_T_is_one_line(dehaze_model, tmp_path, identity_restore):
    result = cli("restore", write_png(tmp_path / "a.png"), "--task", "dehaze", "--weights", dehaze_model,
                 "--steps", "100000")
    assert_refused(result, "--steps (100000) must be at most the model's T = 100")
    assert not identity_restore


def test_malformed_command_lines_are_one_line_with_status_2(dehaze_model, tmp_path, identity_restore):
    src = write_png(tmp_path / "a.png")
    assert_refused(cli("restore", src, "--task", "dehaze", "--weights", dehaze_model, "--steps", "abc"), "--steps",
                   code=2)
    assert_refused(restore(dehaze_model, src, "-o", tmp_path / "x.png", "--out-dir", tmp_path / "out"),
                   "-o/--output", "--out-dir", code=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"] and not identity_restore


def test_help_lists_exit_status_2_and_the_budget_units():
    text = " ".join(cli("restore", "--help").output.split())
    assert "2 a malformed command line" in text and "143 terminated (SIGTERM)" in text
    assert all(unit in text for unit in ("B, KB, MB, GB or TB", "KiB", "at least 64MB"))


def test_ctrl_c_while_torch_imports_ends_with_one_line_and_130(tmp_path):
    """-X importtime prints each import as it finishes: the interrupt is sent once the command line's
    own module has started (host_memory imported) and before the commands (torch) are in. On a busy
    machine the child may get past torch before the signal lands; such a try proves nothing and is
    repeated (three tries)."""
    src = write_png(tmp_path / "a.png")
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, "-X", "importtime", "-m", "tilediff.cli", "restore", str(src),
                                 "--task", "dehaze"], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                env=child_env(), cwd=tmp_path)
        seen, sent = [], False
        try:
            for raw in proc.stderr:
                line = raw.decode(errors="replace")
                seen.append(line)
                if not sent and "tilediff.engine.host_memory" in line:
                    proc.send_signal(signal.SIGINT)
                    sent = True
            code = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert sent
        if not any(re.search(r"\|\s+torch$", line.rstrip()) for line in seen):   # torch never finished
            break
    else:
        pytest.skip("the child imported torch before the interrupt landed, three times (machine too busy)")
    own = [line for line in seen if not line.startswith("import time:")]
    assert code == 130, "".join(own)
    assert [line.strip() for line in own if line.strip()] == ["tilediff: interrupted"], "".join(own)


# ---- 2. temporary files left behind ----------------------------------------------------------

def test_sigterm_during_a_folder_batch_cleans_up_says_interrupted_and_exits_143(dehaze_model, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    write_png(folder / "a.png", 32, 32)
    out = tmp_path / "in_dehaze"
    code, text = signal_during_sampling(["restore", folder, "--task", "dehaze", "--weights", dehaze_model,
                                         "--samples", "1000", "--device", "cpu"], signal.SIGTERM,
                                        tmp_path / "stderr.txt", env=child_env(), cwd=tmp_path)
    assert code == 143, text
    assert text.rstrip().endswith("tilediff: interrupted (SIGTERM)") and "Traceback" not in text
    assert sorted(p.name for p in out.iterdir()) == ["tilediff_summary.json"]        # no image, no temporary
    assert json.loads((out / "tilediff_summary.json").read_text())["interrupted"] is True


def test_a_killed_writers_temporary_is_removed_by_the_next_run(dehaze_model, tmp_path, identity_restore):
    out = tmp_path / "out"
    out.mkdir()
    kill_mid_write = textwrap.dedent(f"""
        import os, signal
        from tilediff.io.atomic import replacing
        with replacing({str(out / 'a_dehaze.png')!r}) as tmp:
            open(tmp, 'wb').write(b'partial')
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    assert subprocess.run([sys.executable, "-c", kill_mid_write]).returncode == -signal.SIGKILL
    stale = [p.name for p in out.iterdir()]
    assert len(stale) == 1 and stale[0].startswith(".a_dehaze.png.tilediff-") and stale[0].endswith(".tmp")
    # a writer still at work (holding its lock), a file not ours and one of another name are left alone
    hold = textwrap.dedent(f"""
        import sys, time
        from tilediff.io.atomic import replacing
        with replacing({str(out / 'b_dehaze.png')!r}) as tmp:
            print(tmp, flush=True)
            sys.stdin.read()
    """)
    holder = subprocess.Popen([sys.executable, "-c", hold], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        live = holder.stdout.readline().strip()
        (out / ".notes.txt.tmp").write_text("mine")
        (out / ".c.png.tilediff-12345678.tmp.bak").write_text("mine")
        time.sleep(0.05)
        result = restore(dehaze_model, write_png(tmp_path / "a.png"), "--out-dir", out, "-q")
        assert result.exit_code == 0, result.output
        names = sorted(p.name for p in out.iterdir())
        assert names == sorted(["a_dehaze.png", os.path.basename(live), ".notes.txt.tmp",
                                ".c.png.tilediff-12345678.tmp.bak"])
    finally:
        holder.communicate("", timeout=30)
    assert not os.path.exists(live)          # the live writer finished normally


# ---- 3. data loss through outputs ------------------------------------------------------------

def _special_outputs(folder):
    os.mkfifo(folder / "fifo.png")
    (folder / "target.png").write_bytes(b"keep me")
    os.symlink("target.png", folder / "link.png")
    (folder / "dir.png").mkdir()
    names = ["fifo.png", "link.png", "dir.png"]
    if os.geteuid() == 0:                     # a character device of our own, like /dev/null
        os.mknod(folder / "null.png", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        names.append("null.png")
    return names


def test_outputs_that_are_not_regular_files_are_refused_even_with_overwrite(dehaze_model, tmp_path, identity_restore):
    src = write_png(tmp_path / "a.png")
    names = _special_outputs(tmp_path)
    before = snapshot(tmp_path)
    for name in names:
        result = restore(dehaze_model, src, "-o", tmp_path / name, "--overwrite")
        if name == "dir.png":      # click's -o refuses a folder itself, as a malformed command line
            assert_refused(result, name, "is a directory", code=2)
        else:
            assert_refused(result, name, "not a regular file")
    assert snapshot(tmp_path) == before and not identity_restore
    # and no writer replaces such a node, whoever calls it
    for name in names:
        with pytest.raises(tio.ImageWriteError, match="not a regular file"):
            tio.write_image(tmp_path / name, np.zeros((4, 4, 3), np.float32))
    assert snapshot(tmp_path) == before


def test_an_output_that_is_an_input_is_refused_for_every_command(dehaze_model, golden_dir, tmp_path, identity_restore):
    src = write_png(tmp_path / "a.png")
    os.symlink("a.png", tmp_path / "alias.png")
    os.link(src, tmp_path / "hard.png")
    before = snapshot(tmp_path)
    for target in ("a.png", "alias.png", "hard.png"):
        assert_refused(restore(dehaze_model, src, "-o", tmp_path / target, "--overwrite"), target)
    ckpt = tmp_path / "victim.pth"
    ckpt.write_bytes((golden_dir / "nafnet_pixel_small.pth").read_bytes())
    before = snapshot(tmp_path)
    assert_refused(cli("convert", ckpt, "-o", ckpt, "--task", "deshadow", "--overwrite"), "victim.pth",
                   "refusing to overwrite an input")
    assert snapshot(tmp_path) == before


def test_convert_needs_overwrite_to_replace_a_model_file(golden_dir, tmp_path):
    out = tmp_path / "m.safetensors"
    out.write_bytes(b"an earlier model")
    ckpt = golden_dir / "nafnet_pixel_small.pth"
    assert_refused(cli("convert", ckpt, "-o", out, "--task", "deshadow"), "m.safetensors", "--overwrite")
    assert out.read_bytes() == b"an earlier model"
    result = cli("convert", ckpt, "-o", out, "--task", "deshadow", "--overwrite")
    assert result.exit_code == 0 and out.stat().st_size > 1000


def test_demo_refuses_a_special_output(tmp_path):
    os.mkfifo(tmp_path / "demo.png")
    assert_refused(cli("demo", "-o", tmp_path / "demo.png", "--overwrite"), "demo.png", "not a regular file")


# ---- 4. silent loss on valid inputs ----------------------------------------------------------

def test_multi_page_tiff_and_animated_png_are_refused_naming_the_count(dehaze_model, tmp_path, identity_restore):
    tifffile.imwrite(tmp_path / "pages.tif", np.zeros((3, 16, 16, 3), np.uint8), metadata=None)
    frames = [Image.new("RGB", (16, 16), (40 * i, 0, 0)) for i in range(4)]
    frames[0].save(tmp_path / "anim.png", save_all=True, append_images=frames[1:])
    before = snapshot(tmp_path)
    assert_refused(restore(dehaze_model, tmp_path / "pages.tif"), "pages.tif", "multi-page TIFF (3 pages)")
    assert_refused(restore(dehaze_model, tmp_path / "anim.png"), "anim.png", "animated PNG (4 frames)")
    assert snapshot(tmp_path) == before and not identity_restore


def test_a_tiff_with_a_thumbnail_page_is_one_image(tmp_path):
    with tifffile.TiffWriter(tmp_path / "thumb.tif") as tw:
        tw.write(np.full((32, 32, 3), 7, np.uint8), metadata=None)
        tw.write(np.zeros((8, 8, 3), np.uint8), subfiletype=1, metadata=None)   # reduced-resolution copy
    assert read_image(tmp_path / "thumb.tif").shape == (32, 32)


def test_float_samples_outside_0_1_are_one_warning_naming_the_file(tmp_path):
    values = np.linspace(-0.5, 2.5, 16 * 16 * 3, dtype=np.float32).reshape(16, 16, 3)
    values[0, 0, 0] = np.nan
    tifffile.imwrite(tmp_path / "hdr.tif", values, photometric="rgb", metadata=None)
    from tilediff.io.errors import collecting_warnings
    with collecting_warnings(tmp_path / "hdr.tif") as notes:
        image = read_image(tmp_path / "hdr.tif")
    assert image.rgb.min() == 0.0 and image.rgb.max() == 1.0
    assert len(notes) == 1 and "hdr.tif" in notes[0] and "clipped to [0, 1]" in notes[0] and "1 NaN" in notes[0]
    # a region source reads by windows: the range of all of them, said once
    from tilediff.io.samples import FloatRange
    seen = FloatRange()
    for window in (values[:8], values[8:]):
        seen.update(window)
    assert seen.note() == notes[0].split(": ", 1)[1]


def test_float_tiff_outside_0_1_says_what_was_clipped_once_even_with_quiet(dehaze_model, tmp_path, identity_restore):
    values = np.linspace(-0.5, 2.5, 16 * 16 * 3, dtype=np.float32).reshape(16, 16, 3)
    tifffile.imwrite(tmp_path / "hdr.tif", values, photometric="rgb", tile=(16, 16), metadata=None)
    result = restore(dehaze_model, tmp_path / "hdr.tif", "--out-dir", tmp_path / "out", "-q")
    assert result.exit_code == 0, result.output
    warnings = [line for line in lines(result.stderr) if line.startswith("tilediff: warning: ")]
    assert len(warnings) == 1 and len(lines(result.stderr)) == 1, result.stderr
    assert "hdr.tif" in warnings[0] and "-0.5 to 2.5" in warnings[0] and "clipped to [0, 1]" in warnings[0]
    assert tifffile.imread(tmp_path / "out" / "hdr_dehaze.tif").max() <= 1.0


# ---- 5. decompression bombs --------------------------------------------------------------------

def _bombs(folder):
    # a 16-bit PNG declaring 12000 x 8000 (576 MB of pixels) in 0.1 MB of valid deflate data
    row = bytes(1 + 12000 * 6)
    comp = zlib.compressobj(9)
    idat = comp.compress(row * 20) + comp.flush(zlib.Z_SYNC_FLUSH)
    (folder / "bomb16.png").write_bytes(png_bytes(12000, 8000, idat, depth=16, colour=2))
    # an 8-bit PNG carrying a 100 MiB ICC profile (0.1 MB compressed)
    icc = chunk(b"iCCP", b"ICC profile\x00\x00" + zlib.compress(bytes(100 << 20), 9))
    pixels = zlib.compress(b"".join(b"\x00" + bytes(12) for _ in range(4)))
    (folder / "icc.png").write_bytes(png_bytes(4, 4, pixels, extra=[icc]))
    # a 200-byte zlib TIFF claiming 100000 x 100000 pixels in one strip of 10 bytes
    entries = [(256, 4, 100000), (257, 4, 100000), (258, 3, 8), (259, 3, 8), (262, 3, 1), (273, 4, 190),
               (277, 3, 1), (278, 4, 100000), (279, 4, 10)]
    ifd = struct.pack("<H", len(entries)) + b"".join(
        struct.pack("<HHII", code, typ, 1, value) if typ == 4 else struct.pack("<HHIHH", code, typ, 1, value, 0)
        for code, typ, value in entries) + struct.pack("<I", 0)
    head = b"II*\x00" + struct.pack("<I", 8) + ifd
    (folder / "bomb.tif").write_bytes(head + bytes(190 - len(head)) + zlib.compress(bytes(100))[:10])
    return {"bomb16.png": "inflate to at most", "icc.png": "ICC profile", "bomb.tif": "zlib expands at most 1032x"}


def test_bombs_are_refused_before_anything_is_allocated(tmp_path):
    bombs = _bombs(tmp_path)
    code = ("import sys\nfrom tilediff.io import read_image, ImageReadError\nfor p in sys.argv[1:]:\n"
            "    try:\n        read_image(p)\n    except ImageReadError as e:\n        print(e)\n"
            "print([int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith('VmHWM:')][0])\n")
    done = subprocess.run([sys.executable, "-c", code, *[str(tmp_path / n) for n in bombs]], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    *out, peak = done.stdout.splitlines()
    assert len(out) == len(bombs)
    for line, (name, expected) in zip(out, bombs.items()):
        assert name in line and expected in line, line
    assert int(peak) < 1 << 30   # the child's own VmHWM (ru_maxrss would carry pytest's over exec)


def test_bombs_on_the_command_line(dehaze_model, tmp_path, identity_restore):
    bombs = _bombs(tmp_path)
    before = snapshot(tmp_path)
    for name, expected in bombs.items():
        assert_refused(restore(dehaze_model, tmp_path / name, "--out-dir", tmp_path / "out"), name, expected)
    assert snapshot(tmp_path) == before and not identity_restore


def test_pillows_size_limit_is_one_line(tmp_path, monkeypatch):
    write_png(tmp_path / "big.png", 40, 40)
    smooth_jpeg(tmp_path / "big.jpg", 40, 40)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)
    for name in ("big.png", "big.jpg"):
        with pytest.raises(ImageReadError, match="larger than Pillow allows") as info:
            read_image(tmp_path / name)
        assert "\n" not in str(info.value) and name in str(info.value)


# ---- 6. misleading messages and unchecked options ------------------------------------------------

def test_a_missing_decoder_is_named_with_how_to_get_it(tmp_path, monkeypatch):
    tifffile.imwrite(tmp_path / "z.tif", np.zeros((16, 16, 3), np.uint8), compression="zstd", metadata=None)
    decoders = tifffile.TIFF.DECOMPRESSORS
    decoders[50000]

    def missing(*args, **kwargs):
        raise ModuleNotFoundError("No module named 'compression'")
    monkeypatch.setitem(decoders._codecs, 50000, missing)
    with pytest.raises(ImageReadError) as info:
        read_image(tmp_path / "z.tif")
    text = str(info.value)
    assert "ZSTD" in text and "pip install imagecodecs" in text and "corrupt" not in text


def test_a_codec_that_cannot_be_written_is_refused_before_any_work(dehaze_model, tmp_path, identity_restore,
                                                                  monkeypatch):
    tifffile.imwrite(tmp_path / "a.tif", np.zeros((16, 16, 3), np.uint8), metadata=None)
    result = restore(dehaze_model, tmp_path / "a.tif", "--compression", "ccitt_t4")
    assert_refused(result, "--compression ccitt_t4", "cannot be written")
    # imagecodecs missing: tifffile would write zlib instead, with a raw UserWarning
    import tifffile.tifffile as tt
    monkeypatch.setattr(tt, "imagecodecs", None)
    monkeypatch.setattr(tifffile.TIFF, "COMPRESSORS", tt.CompressionCodec(encode=True))
    for codec in ("lzw", "jpeg"):
        result = restore(dehaze_model, tmp_path / "a.tif", "--compression", codec, "-q")
        assert_refused(result, f"--compression {codec}", "pip install imagecodecs")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tif"] and not identity_restore


def test_an_output_extension_that_is_not_an_image_format_is_refused(dehaze_model, tmp_path, identity_restore):
    src = write_png(tmp_path / "a.png")
    for name in ("x.bmp", "x", "x.png.txt"):
        assert_refused(restore(dehaze_model, src, "-o", tmp_path / name), name, "output extension")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"] and not identity_restore


def test_damaged_png_and_jpeg_data_are_refused(dehaze_model, tmp_path, identity_restore):
    data = bytearray(write_png(tmp_path / "crc.png", 24, 24).read_bytes())
    at = data.find(b"IDAT")
    length = struct.unpack(">I", data[at - 4:at])[0]
    data[at + 4 + length] ^= 0xFF                        # IDAT's CRC: Pillow does not check it
    (tmp_path / "crc.png").write_bytes(bytes(data))
    jpeg = smooth_jpeg(tmp_path / "fine.jpg").read_bytes()
    sos = jpeg.find(b"\xff\xda")
    mid = sos + (len(jpeg) - sos) // 2
    garbage = bytes(np.random.default_rng(0).integers(0, 255, 100, dtype=np.uint8)).replace(b"\xff", b"\x00")
    (tmp_path / "scan.jpg").write_bytes(jpeg[:mid] + garbage + jpeg[mid + 100:])     # garbage over the scan
    (tmp_path / "cut.jpg").write_bytes(jpeg[:mid] + jpeg[mid + 40:])                  # a piece of the scan lost
    for name in ("scan.jpg", "cut.jpg"):
        with Image.open(tmp_path / name) as im:
            im.load()                                     # Pillow alone decodes them without a word
    before = snapshot(tmp_path)
    assert_refused(restore(dehaze_model, tmp_path / "crc.png"), "crc.png", "CRC error in chunk IDAT")
    for name in ("scan.jpg", "cut.jpg"):
        assert_refused(restore(dehaze_model, tmp_path / name), name, "corrupt")
    assert snapshot(tmp_path) == before and not identity_restore
    assert read_image(tmp_path / "fine.jpg").shape == (64, 64)      # an intact JPEG passes the check


def test_a_fifo_input_is_not_a_regular_file_and_is_never_opened(dehaze_model, tmp_path, identity_restore):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)

    def unblock():             # should the reader open the FIFO, let it go after a while (the test then fails)
        time.sleep(5)
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            os.close(fd)
        except OSError:
            pass
    threading.Thread(target=unblock, daemon=True).start()
    start = time.monotonic()
    assert_refused(restore(dehaze_model, fifo), "pipe.png", "not a regular file (FIFO)")
    assert time.monotonic() - start < 4
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_a_parent_that_is_a_file_names_the_output(dehaze_model, tmp_path, identity_restore):
    src = write_png(tmp_path / "a.png")
    (tmp_path / "afile").write_text("x")
    line = assert_refused(restore(dehaze_model, src, "-o", tmp_path / "afile" / "x.png"), "parent")
    assert "afile/x.png" in line and "is not a folder" in line and "a.png:" not in line


def test_a_damaged_icc_tag_is_one_warning_not_a_log_line(dehaze_model, tmp_path, identity_restore, capfd):
    path = tmp_path / "icc.tif"
    tifffile.imwrite(path, np.zeros((8, 8, 3), np.uint8), iccprofile=b"x" * 200, metadata=None)
    data = bytearray(path.read_bytes())
    ifd = struct.unpack("<I", data[4:8])[0]
    for k in range(struct.unpack("<H", data[ifd:ifd + 2])[0]):
        entry = ifd + 2 + 12 * k
        if struct.unpack("<H", data[entry:entry + 2])[0] == 34675:
            data[entry + 8:entry + 12] = struct.pack("<I", 10_000_000)     # the profile's offset: past the end
    path.write_bytes(bytes(data))
    result = restore(dehaze_model, path, "--out-dir", tmp_path / "out", "-q")
    assert result.exit_code == 0, result.output
    assert lines(result.stderr) == [line for line in lines(result.stderr) if line.startswith("tilediff: warning: ")]
    assert len(lines(result.stderr)) == 1 and "icc.tif" in result.stderr and "34675" in result.stderr
    assert "TiffTag" not in capfd.readouterr().err


def test_libpng_warnings_become_one_warning_line(tmp_path, capfd):
    rows = b"".join(b"\x00" + bytes(8 * 6) for _ in range(8))
    path = tmp_path / "extra.png"
    path.write_bytes(png_bytes(8, 8, zlib.compress(rows) + b"junk", depth=16, colour=2))
    from tilediff.io.errors import collecting_warnings
    with collecting_warnings(path) as notes:
        image = read_image(path)
    assert image.dtype == np.uint16
    assert "PNG warning" not in capfd.readouterr().err
    assert len(notes) == 1 and "extra.png" in notes[0] and "libpng" in notes[0] and "Extra compressed data" in notes[0]


# ---- 7. a full disk in a folder batch ------------------------------------------------------------

def test_a_full_disk_stops_a_folder_batch_naming_the_file(dehaze_model, tmp_path, identity_restore, monkeypatch):
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(4):
        write_png(folder / f"{i}.png", seed=i)
    import tilediff.io.atomic as atomic
    real = atomic.atomic_write
    written, state = [], {"full": False}

    def fills_up(path, write):          # the second image fills the disk; from then on nothing fits
        if not str(path).endswith(".json"):
            if written:
                state["full"] = True
            written.append(path)
        if state["full"]:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(path, write)
    for module in [atomic, tio] + [m for m in (getattr(tio, "sinks", None),) if m is not None]:
        if hasattr(module, "atomic_write"):
            monkeypatch.setattr(module, "atomic_write", fills_up)
    import tilediff.batch as batch
    monkeypatch.setattr(batch, "atomic_write", fills_up)
    out = tmp_path / "out"
    result = restore(dehaze_model, folder, "--out-dir", out)
    assert result.exit_code == 1
    err = lines(result.stderr)
    assert "Traceback" not in result.output and len(err) <= 3, result.stderr
    errors = [line for line in err if line.startswith("tilediff: error:")]
    assert "1_dehaze.png" in errors[0] and "disk full" in errors[0]
    assert "stopped, the disk is full" in errors[-1] and "1 restored, 1 failed" in errors[-1] and "2 not tried" in errors[-1]
    assert sorted(p.name for p in out.iterdir()) == ["0_dehaze.png", "tilediff_summary.json"]
