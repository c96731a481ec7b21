"""The streamed path: region sources in, band sinks out, canvases in RAM or scratch files, the plan's
budget; the same results as the whole-array path and the whole-image computations."""
import os

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from tilediff import engine
from tilediff.engine.bands import map_bands
from tilediff.engine.canvas import Canvas
from tilediff.engine.plan import MemoryBudgetError, make_plan
from tilediff.engine.tiled_compressor import TiledCompressor
from tilediff.io import ImageReadError, ImageWriteError, open_sink, open_source, read_image, write_image
from tilediff.io.sources import ArraySource
from tilediff.options import RestoreOptions
from tilediff.restorer import Restorer
from tilediff.tasks.dehaze import pipeline
from tilediff.tasks.dehaze.dcp import airlight_of, dark_channel_prior, default_radius
from tilediff.tasks.dehaze.recompose import haze_recompose

RNG = np.random.default_rng(0)


def srgb_profile():
    from PIL import ImageCms
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def samples(h, w, s, dtype):
    top = {np.uint8: 255, np.uint16: 65535}.get(dtype, 1)
    return (RNG.random((h, w, s)) * top).astype(dtype)


def bands_of(rows, height):
    return [(y, rows[y:y + height]) for y in range(0, rows.shape[0], height)]


@pytest.fixture(scope="module")
def restorer(dehaze_model):
    return Restorer("dehaze", weights=dehaze_model, device="cpu")


# ---- sources ------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", [dict(tile=(32, 48)), dict(rowsperstrip=7), dict(rowsperstrip=7, planarconfig="separate")])
@pytest.mark.parametrize("dtype, nchan", [(np.uint8, 3), (np.uint16, 4), (np.float32, 1)])
def test_tiff_source_regions_equal_the_whole_read(tmp_path, layout, dtype, nchan):
    data = samples(83, 101, nchan, dtype)
    path = tmp_path / "a.tif"
    kw = dict(layout)
    if kw.get("planarconfig") == "separate" and nchan > 1:
        data_w = np.moveaxis(data, -1, 0)
    else:
        kw.pop("planarconfig", None)
        data_w = data[..., 0] if nchan == 1 else data
    tifffile.imwrite(path, data_w, photometric="rgb" if nchan >= 3 else "minisblack", compression="zlib",
                     extrasamples=(2,) if nchan == 4 else None, metadata=None, **kw)
    whole = read_image(path)
    with open_source(path) as source:
        assert (source.shape, source.dtype, source.mode, source.has_alpha) == (
            (83, 101), whole.dtype, whole.mode, whole.alpha is not None)
        source.set_cache(4096)                      # a tiny cache: segments are decoded again
        for y0, y1, x0, x1 in [(0, 83, 0, 101), (5, 40, 33, 99), (82, 83, 100, 101), (31, 70, 0, 10)]:
            region = source.region(y0, y1, x0, x1)
            assert region.dtype == np.float32 and region.shape == (3, y1 - y0, x1 - x0)
            np.testing.assert_array_equal(region, whole.rgb[y0:y1, x0:x1].transpose(2, 0, 1))
            if whole.alpha is not None:
                np.testing.assert_array_equal(source.alpha(y0, y1, x0, x1), whole.alpha[y0:y1, x0:x1])


def test_png_and_jpeg_sources_hold_their_own_samples(tmp_path):
    rgba16 = samples(37, 29, 4, np.uint16)
    import imagecodecs
    (tmp_path / "a.png").write_bytes(imagecodecs.png_encode(rgba16))
    Image.fromarray(samples(37, 29, 2, np.uint8)[..., 0]).save(tmp_path / "b.png")
    Image.fromarray(samples(37, 29, 3, np.uint8)).save(tmp_path / "c.jpg")
    for name, dtype in [("a.png", np.uint16), ("b.png", np.uint8), ("c.jpg", np.uint8)]:
        whole = read_image(tmp_path / name)
        with open_source(tmp_path / name) as source:
            assert source.data.dtype == dtype                      # not float32
            np.testing.assert_array_equal(source.region(3, 30, 2, 20), whole.rgb[3:30, 2:20].transpose(2, 0, 1))
    with pytest.raises(ImageReadError, match="not a valid image"):
        (tmp_path / "x.png").write_text("no")
        open_source(tmp_path / "x.png")


def test_array_source_converts_like_to_float_rgb():
    from tilediff.io import to_float_rgb
    for array in (samples(9, 7, 3, np.uint8), samples(9, 7, 2, np.uint16), RNG.random((9, 7)) * 1.5 - 0.2):
        np.testing.assert_array_equal(ArraySource(array, nan_is_error=True).region(0, 9, 0, 7),
                                      to_float_rgb(array).transpose(2, 0, 1))
    with pytest.raises(ValueError, match="NaN"):
        ArraySource(np.full((4, 4, 3), np.nan), nan_is_error=True).region(0, 4, 0, 4)


# ---- sinks --------------------------------------------------------------------------------------

@pytest.mark.parametrize("ext, dtype, nchan, layout", [
    ("tif", np.uint16, 4, dict(tile=(32, 32), compression="zlib", predictor=2)),
    ("tif", np.uint8, 3, dict(rowsperstrip=5, compression="lzw")),
    ("tif", np.float32, 1, dict(rowsperstrip=64)),
    ("tif", np.uint8, 3, dict(tile=(16, 16), planarconfig="separate", compression="zlib")),
    ("png", np.uint8, 4, {}), ("png", np.uint16, 3, {}), ("png", np.uint16, 1, {}), ("png", np.uint8, 2, {}),
    ("jpg", np.uint8, 3, {}),
])
def test_sinks_write_what_write_image_writes(tmp_path, ext, dtype, nchan, layout):
    """Bands through a file sink give the file write_image gives (TIFF: the same bytes; PNG: the same
    samples and chunks; JPEG: the same bytes), with alpha, ICC and EXIF."""
    data = samples(70, 53, nchan, dtype)
    src = tmp_path / f"in.{'tif' if ext == 'tif' else 'png'}"
    if ext == "tif":
        kw = dict(layout)
        d = data[..., 0] if nchan == 1 else (np.moveaxis(data, -1, 0) if kw.get("planarconfig") else data)
        tifffile.imwrite(src, d, photometric="rgb" if nchan >= 3 else "minisblack", metadata=None,
                         extrasamples=(2,) if nchan == 4 else None, iccprofile=srgb_profile(), **kw)
    else:
        write_image(src, data[..., :3].astype(np.float32) / np.float32(np.iinfo(dtype).max) if nchan >= 3
                    else np.repeat(data[..., :1], 3, 2).astype(np.float32) / np.iinfo(dtype).max)
        like = read_image(src)
        like.alpha = data[..., -1] if nchan in (2, 4) else None
        like.mode, like.dtype, like.icc = ("rgb" if nchan >= 3 else "gray"), np.dtype(dtype), srgb_profile()
    like = read_image(src) if ext == "tif" else like
    restored = RNG.random((70, 53, 3)).astype(np.float32)
    whole, streamed = tmp_path / f"whole.{ext}", tmp_path / f"streamed.{ext}"
    write_image(whole, restored, like=like)
    sink = open_sink(streamed, like=like)
    assert sink.write(bands_of(restored, 16)) == streamed
    a, b = read_image(whole), read_image(streamed)
    np.testing.assert_array_equal(a.rgb, b.rgb)
    assert (a.dtype, a.mode, a.icc, a.exif) == (b.dtype, b.mode, b.icc, b.exif)
    if a.alpha is not None:
        np.testing.assert_array_equal(a.alpha, b.alpha)
    if ext in ("tif", "jpg"):
        assert whole.read_bytes() == streamed.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([src.name, whole.name, streamed.name])


def test_sink_checks_before_work_and_leaves_nothing_on_errors(tmp_path):
    like = ArraySource(samples(20, 10, 4, np.uint8))
    with pytest.raises(ImageWriteError, match="JPEG cannot store the alpha"):
        open_sink(tmp_path / "a.jpg", like=like)
    with pytest.raises(ImageWriteError, match="zlib level"):
        open_sink(tmp_path / "a.png", like=like, compression=12)
    (tmp_path / "keep.png").write_bytes(b"old")

    def failing():
        yield 0, np.zeros((8, 10, 3), np.float32)
        raise KeyError("the engine failed")
    with pytest.raises(KeyError, match="the engine failed"):           # the engine's error, unchanged
        open_sink(tmp_path / "keep.png", like=like).write(failing())

    def interrupted():
        yield 0, np.zeros((8, 10, 3), np.float32)
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        open_sink(tmp_path / "new.tif", like=like).write(interrupted())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.png"]
    assert (tmp_path / "keep.png").read_bytes() == b"old"


# ---- canvases and bands -------------------------------------------------------------------------

def test_file_canvas_reads_what_was_written(tmp_path):
    values = torch.randn(1, 5, 23, 31)
    ram, disk = Canvas(5, 23, 31), Canvas(5, 23, 31, folder=tmp_path)
    assert os.listdir(tmp_path) == []                                   # an unnamed file
    for canvas in (ram, disk):
        canvas.write(0, 0, values[:, :, :10])
        canvas.write(10, 0, values[:, :, 10:, :7])
        canvas.write(10, 7, values[:, :, 10:, 7:])
        assert torch.equal(canvas.whole(), values)
        assert torch.equal(canvas.read(3, 19, 4, 30), values[:, :, 3:19, 4:30])
    disk.close()


def test_tiled_compressor_with_scratch_canvases_equals_ram(golden_net, tmp_path):
    net = golden_net("unet_dehaze")
    image = torch.rand(1, 3, 75, 98, generator=torch.Generator().manual_seed(3))
    outs = []
    for where in ({}, {n: str(tmp_path) for n in ("latent", "deepest", "deep_x", "deep_a", "skips", "levels")}):
        with torch.no_grad():
            tiled = TiledCompressor(net, torch.device("cpu"), tile=3, keep_from=1, where=where)
            encoded = tiled.encode(image)
            outs.append((encoded.latent.whole().clone(), tiled.decode(encoded.latent, encoded, image)))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
    with torch.no_grad():
        latent, hidden = net.encode(image)
        assert (outs[0][1] - net.decode(latent, hidden)).abs().max() < 1e-5


def test_map_bands_is_the_whole_computation():
    rows = RNG.random((97, 5, 3)).astype(np.float32)

    def fn(a0, a1, block):       # depends on the 4 rows each side, truncated at the block's edges
        padded = np.pad(block, ((4, 4), (0, 0), (0, 0)))
        counts = np.pad(np.ones(len(block)), 4)
        sums = sum(padded[k:k + len(block)] for k in range(9))
        return sums / sum(counts[k:k + len(block)] for k in range(9))[:, None, None]
    whole = fn(0, 97, rows)
    for height in (1, 3, 20, 200):
        got = list(map_bands(iter(bands_of(rows, height)), 97, 4, fn))
        assert [y for y, _ in got] == list(range(0, 97, height))
        np.testing.assert_allclose(np.concatenate([b for _, b in got]), whole, rtol=1e-6)


# ---- dehazing's pipeline over a source -----------------------------------------------------------

@pytest.fixture(scope="module")
def hazy():
    from scipy import ndimage
    clean = ndimage.gaussian_filter(RNG.random((300, 1300, 3)), (4, 4, 0)).astype(np.float32)
    return np.clip(0.6 * clean + 0.35, 0, 1).astype(np.float32)


def test_airlight_of_a_source_is_the_whole_images(hazy):
    np.testing.assert_array_equal(pipeline.airlight_of_source(ArraySource(hazy), band_rows=37), airlight_of(hazy))


def test_dark_channel_prior_source_and_banded_recomposition_are_the_whole_images(hazy):
    source = ArraySource(hazy)
    air = airlight_of(hazy)
    dcp = pipeline.DarkChannelPriorSource(source, air, chunk_rows=70)
    whole = dark_channel_prior(hazy)
    for y0, y1, x0, x1 in [(0, 96, 0, 700), (0, 96, 650, 1300), (60, 200, 0, 1300), (150, 300, 1, 1299)]:
        np.testing.assert_allclose(dcp.region(y0, y1, x0, x1), whole[y0:y1, x0:x1].transpose(2, 0, 1), atol=2e-6)
    restored = np.clip(hazy * 1.1 - 0.1, 0, 1)
    options = RestoreOptions.build("dehaze", recompose=True, prior="none").replace(
        task_options=RestoreOptions.build("dehaze", recompose=True).task_options.resolve({}))
    finish = pipeline.prepare(source, options, 100, torch.device("cpu")).finish
    assert finish.halo == 15 + 2 * default_radius(300, 1300) + 1
    got = np.concatenate([b for _, b in map_bands(iter(bands_of(restored, 64)), 300, finish.halo, finish.fn)])
    np.testing.assert_allclose(got, haze_recompose(hazy, restored), atol=2e-6)


# ---- the streamed restoration ---------------------------------------------------------------------

def test_streamed_file_restoration_equals_the_whole_array_path(restorer, tmp_path):
    """A tiled 16-bit RGBA TIFF with ICC and EXIF: restore_file (streamed in, streamed out) gives the
    file write_image(restore(read_image(...))) gives, with its alpha, ICC, EXIF, layout and depth."""
    data = samples(150, 203, 4, np.uint16)
    src = tmp_path / "in.tif"
    tifffile.imwrite(src, data, tile=(32, 64), compression="zlib", predictor=2, photometric="rgb",
                     extrasamples=(2,), iccprofile=b"icc", metadata=None)
    exif_src = tmp_path / "exif.tif"
    write_image(exif_src, data[..., :3].astype(np.float32) / 65535, like=read_image(src))
    options = dict(steps=2, seed=3, mode="tiled", tile=16, overlap=4, prior="dcp", recompose=True)
    stats = {}
    restorer.restore_file(src, tmp_path / "out.tif", stats=stats, **options)
    image = read_image(src)
    write_image(tmp_path / "ref.tif", restorer.restore(image.rgb, **options), like=image)
    assert (tmp_path / "out.tif").read_bytes() == (tmp_path / "ref.tif").read_bytes()
    out = read_image(tmp_path / "out.tif")
    assert out.dtype == np.uint16 and out.tiff.tile == (32, 64) and out.icc == b"icc"
    np.testing.assert_array_equal(out.alpha, data[..., 3])
    assert {"encode", "sample", "decode", "prior", "recompose"} <= set(stats["seconds"])
    assert "canvases:" in stats["plan"].describe()


def test_tiled_equals_whole_on_streamed_files(restorer, tmp_path):
    """Exact compressor tiling and position-keyed noise on streamed inputs and outputs: with ε ≡ 0
    the tiled restoration of a file is the whole-image one."""
    noise = restorer.model.noise
    saved = noise.ending.weight.data.clone(), noise.ending.bias.data.clone()
    noise.ending.weight.data.zero_()
    noise.ending.bias.data.zero_()
    try:
        Image.fromarray(samples(131, 170, 3, np.uint8)).save(tmp_path / "in.png")
        for mode, kw in (("whole", {}), ("tiled", dict(tile=16, overlap=4, compressor_tile=3))):
            restorer.restore_file(tmp_path / "in.png", tmp_path / f"{mode}.png", steps=2, sampler="sde", seed=2,
                                  mode=mode, prior="none", **kw)
        a, b = read_image(tmp_path / "whole.png").rgb, read_image(tmp_path / "tiled.png").rgb
        assert np.abs(a - b).max() <= 1 / 255
    finally:
        noise.ending.weight.data.copy_(saved[0])
        noise.ending.bias.data.copy_(saved[1])


def test_a_plan_that_cannot_fit_fails_before_any_work(restorer, tmp_path, monkeypatch):
    model = restorer.model
    with monkeypatch.context() as m:   # the budget is what is short, not this machine's RAM or disk
        m.setattr("tilediff.engine.plan.available_memory", lambda device: 16 << 30)
        m.setattr("tilediff.engine.plan._free_disk", lambda folder: 1 << 40)
        with pytest.raises(MemoryBudgetError, match="needs at least .* GB"):
            make_plan(model, (40000, 40000), 3, RestoreOptions(memory_budget=64 << 20), torch.device("cpu"))
    Image.fromarray(samples(64, 64, 3, np.uint8)).save(tmp_path / "in.png")
    monkeypatch.setattr("tilediff.engine.stages.TiledCodec.encode", lambda *a: pytest.fail("work was done"))
    with pytest.raises(MemoryBudgetError):
        restorer.restore_file(tmp_path / "in.png", tmp_path / "out.png", memory_budget="64MB")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png"]


def test_plans_put_canvases_in_scratch_files_when_ram_is_short(restorer):
    model = restorer.model
    cpu = torch.device("cpu")
    small = make_plan(model, (400, 600), 3, RestoreOptions(), cpu)
    assert set(small.where.values()) == {"ram"} or small.where["latent"] == "ram"
    big = make_plan(model, (8000, 12000), 3, RestoreOptions(memory_budget=2 << 30), cpu)
    assert "disk" in big.where.values() and "scratch file" in big.describe()
    assert big.expected_peak <= 2 << 30


# ---- the banded sampler -------------------------------------------------------------------------

@pytest.mark.parametrize("sampler, samples, ensemble, prior", [
    ("sde", 1, False, None), ("mrs", 1, False, None), ("posterior", 2, True, "dcp"), ("ode", 3, True, None)])
def test_banded_sampler_is_the_whole_canvas_sampler_bit_for_bit(restorer, monkeypatch, tmp_path, sampler, samples,
                                                               ensemble, prior):
    """With a tiled noise network on the CPU the sampler runs a band at a time over the canvases (in
    RAM, or in scratch files); every number is the whole-canvas sampler's."""
    from tilediff.engine import sampling
    image = RNG.random((290, 157, 3)).astype(np.float32)
    options = dict(steps=3, sampler=sampler, seed=4, samples=samples, ensemble=ensemble, prior=prior or "none",
                   mode="tiled", tile=12, overlap=5, batch=3)
    banded = restorer.restore(image, **options)
    monkeypatch.setattr(sampling, "BANDED_ON_CPU", False)            # the whole-canvas sde.sample
    monkeypatch.setattr(sampling, "_memory_format", lambda mu: torch.channels_last)
    whole = restorer.restore(image, **options)
    np.testing.assert_array_equal(banded, whole)
    monkeypatch.undo()
    monkeypatch.setattr("tilediff.engine.plan.KEPT_SHARE", 0)         # every canvas in a scratch file
    stats = {}
    on_disk = restorer.restore(image, stats=stats, **options)
    assert stats["plan"].where["latent"] == "disk"
    np.testing.assert_array_equal(on_disk, whole)


def test_peak_memory_stays_within_the_budget(tmp_path):
    """A 3000 × 2000 tiled TIFF with a tiny model under a 700 MB budget (a fresh process: its peak
    resident set, VmHWM, is the run's): at most 1.2 × the budget. Not ru_maxrss: Linux keeps it
    across exec, so a child of a large pytest process starts at its parent's resident set."""
    import subprocess
    import sys
    script = f"""
import numpy as np, tifffile, torch
from tilediff import Restorer
from tilediff.models import build
from tilediff.tasks import TASKS
from tilediff.weights import save_model
task = TASKS["dehaze"]
noise_config = dict(task.noise_config, width=8, enc_blk_nums=[1, 1, 1, 1], middle_blk_num=1, dec_blk_nums=[1, 1, 1, 1])
comp_config = dict(in_ch=3, out_ch=3, ch=4, ch_mult=[1, 1, 1, 1], embed_dim=8)
torch.manual_seed(0)
save_model(r"{tmp_path}/tiny.safetensors", build("latent", noise_config).state_dict(), "latent", noise_config,
           build("compressor", comp_config).state_dict(), comp_config, task="dehaze", sde=task.sde)
rows = (np.arange(2000)[:, None, None] + np.arange(3000)[None, :, None] * 3 + np.arange(3)) % 251
tifffile.imwrite(r"{tmp_path}/in.tif", rows.astype(np.uint8), tile=(256, 256), photometric="rgb", metadata=None)
del rows
r = Restorer("dehaze", weights=r"{tmp_path}/tiny.safetensors", device="cpu")
r.restore_file(r"{tmp_path}/in.tif", r"{tmp_path}/out.tif", steps=1, memory_budget="700MB")
print([int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmHWM:")][0])
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stderr[-2000:]
    peak = int(done.stdout.split()[-1])
    assert peak <= 1.2 * (700 << 20), f"peak {peak / 2**20:.0f} MB"
    assert read_image(tmp_path / "out.tif").shape == (2000, 3000)
