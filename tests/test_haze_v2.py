"""Haze v2 (tilediff.tasks.dehaze.haze.add_haze_v2 and its parts) and the training-data options that use
it (HazeSource scale_range / haze_v2 / clear_fraction, `tilediff train --haze-v2 ...`)."""
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from conftest import image_folder, torch_threads
from tilediff import training as T
from tilediff.tasks.dehaze import haze
from tilediff.training import data as D
from tilediff.weights import read_metadata


def _photo(rng, h=48, w=64):
    """A smooth colourful image with an edge and some texture."""
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.stack([0.5 + 0.35 * np.sin(2 * np.pi * (a * xx + b * yy) + c)
                    for a, b, c in rng.uniform(0.3, 2.0, size=(3, 3))], axis=2)
    img[h // 3:, : w // 2] *= 0.6
    img += 0.05 * rng.standard_normal(img.shape)
    return np.clip(img, 0, 1).astype(np.float32)


@pytest.fixture(scope="module")
def clean():
    return _photo(np.random.default_rng(0))


@pytest.fixture(autouse=True)
def one_thread():
    with torch_threads(1):
        yield


# ----------------------------------------------------------------------------- add_haze_v2
def test_v2_is_deterministic_per_generator_and_consumes_the_same_stream(clean):
    a_rng, b_rng = np.random.default_rng(5), np.random.default_rng(5)
    a, ia = haze.add_haze_v2(clean, a_rng, "moderate", clear_prob=0.3)
    b, ib = haze.add_haze_v2(clean, b_rng, "moderate", clear_prob=0.3)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ia["airlight_field"], ib["airlight_field"])
    np.testing.assert_array_equal(ia["depth"], ib["depth"])
    assert ia["beta"] == ib["beta"] and a_rng.random() == b_rng.random()   # the same draws were made
    c, _ = haze.add_haze_v2(clean, 6, "moderate")
    assert not np.array_equal(a, c)
    np.testing.assert_array_equal(haze.add_haze_v2(clean, 7)[0], haze.add_haze_v2(clean, 7)[0])  # int seeds
    assert a.dtype == np.float32 and a.shape == clean.shape and 0 <= a.min() and a.max() <= 1


def test_v2_formula_with_given_depth_beta_and_airlight_field(clean):
    h, w = clean.shape[:2]
    depth = np.linspace(0, 1, h, dtype=np.float32)[:, None] * np.ones((1, w), np.float32)
    field = np.ones((h, w, 3), np.float32) * np.array([0.8, 0.85, 0.95], np.float32)
    field[:, : w // 2] *= 0.9
    hazy, info = haze.add_haze_v2(clean, 0, beta=1.2, depth=depth, airlight=field)
    t = np.exp(-1.2 * depth.astype(np.float64))[..., None]
    np.testing.assert_allclose(hazy, clean * t + field * (1 - t), atol=1e-6)
    np.testing.assert_allclose(info["mean_transmission"], t.mean(), atol=1e-6)
    assert info["depth_info"] is None and info["airlight_info"] is None and not info["clear"]
    # a 3-vector airlight is broadcast over the image
    hazy3, info3 = haze.add_haze_v2(clean, 0, beta=1.2, depth=depth, airlight=[0.9, 0.9, 0.9])
    assert info3["airlight_field"].shape == (h, w, 3)
    np.testing.assert_allclose(hazy3, clean * t + 0.9 * (1 - t), atol=1e-6)


def test_haze_free_pairs_are_the_clean_image_exactly(clean):
    for seed in range(5):
        hazy, info = haze.add_haze_v2(clean, seed, "dense", clear_prob=1.0)
        np.testing.assert_array_equal(hazy, clean)
        assert info["clear"] and info["beta"] == 0.0 and info["mean_transmission"] == 1.0
    hazy, info = haze.add_haze_v2(clean, 0, beta=0.0)
    np.testing.assert_array_equal(hazy, clean)
    # the haze-free draw is one uniform made first, so the rest of the stream does not depend on it
    _, hazy_info = haze.add_haze_v2(clean, 3, clear_prob=0.0)
    _, clear_info = haze.add_haze_v2(clean, 3, clear_prob=1.0)
    np.testing.assert_array_equal(hazy_info["depth"], clear_info["depth"])
    # and it is drawn with the given probability
    rng = np.random.default_rng(1)
    small = clean[:16, :16]
    n = sum(haze.add_haze_v2(small, rng, clear_prob=0.3)[1]["clear"] for _ in range(400))
    assert 90 <= n <= 150   # 120 expected, sd ~9


def test_v2_argument_errors(clean):
    with pytest.raises(ValueError, match="unknown haze density"):
        haze.add_haze_v2(clean, 0, "foggy")
    with pytest.raises(ValueError, match="clear_prob"):
        haze.add_haze_v2(clean, 0, clear_prob=1.5)
    with pytest.raises(ValueError, match="unknown depth mode"):
        haze.add_haze_v2(clean, 0, depth_mode="stereo")
    with pytest.raises(ValueError, match="unknown tint"):
        haze.add_haze_v2(clean, 0, tint="green")
    with pytest.raises(ValueError, match="non-negative"):
        haze.add_haze_v2(clean, 0, beta=-1.0)
    with pytest.raises(ValueError, match="H x W x 3"):
        haze.add_haze_v2(clean[..., 0], 0)


@pytest.mark.parametrize("density", sorted(haze.BETA_RANGES))
def test_v2_mean_transmission_in_documented_range(density, clean):
    lo, hi = haze.MEAN_TRANSMISSION_RANGE_V2[density]
    blo, bhi = haze.BETA_RANGES[density]
    rng = np.random.default_rng(11)
    images = [clean, _photo(np.random.default_rng(1), 40, 56), np.full((32, 48, 3), 0.5, np.float32)]
    means = []
    for i in range(60):
        _, info = haze.add_haze_v2(images[i % 3], rng, density)
        assert blo <= info["beta"] <= bhi
        means.append(info["mean_transmission"])
        # the extreme betas on the same depth map
        means += [float(np.exp(-blo * info["depth"]).mean()), float(np.exp(-bhi * info["depth"]).mean())]
    assert lo <= min(means) and max(means) <= hi, (min(means), max(means))


# ----------------------------------------------------------------------------- depth
@pytest.mark.parametrize("mode", haze.DEPTH_V2_MODES)
def test_depth_v2_ranges(mode, clean):
    flat = 0
    for seed in range(40):
        d, info = haze.depth_v2(clean, seed, mode)
        assert d.dtype == np.float32 and d.shape == clean.shape[:2]
        assert 0.0 <= d.min() and d.max() <= 1.0
        assert abs(float(d.mean()) - 0.5) < 0.03
        assert info["mode"] == mode and 0.0 <= info["mix"] <= 1.0
        assert info["mix"] == {"smooth": 0.0, "cues": 1.0}.get(mode, info["mix"])
        if info["flat_contrast"] is None:
            assert d.min() < 0.02 and d.max() > 0.98          # spans [0, 1]
        else:
            flat += 1
            c = info["flat_contrast"]
            assert 0.0 <= c <= 0.5 and float(d.max() - d.min()) <= c + 1e-6
    assert 1 <= flat <= 15   # probability 0.15 of 40


def test_cue_depth_follows_brightness_height_and_detail():
    # top: bright and smooth (sky); bottom: dark and textured (near ground): every cue says far at the top
    rng = np.random.default_rng(0)
    h, w = 64, 64
    img = np.empty((h, w, 3), np.float32)
    img[: h // 2] = 0.9
    img[h // 2:] = 0.25 + 0.2 * rng.random((h - h // 2, w, 1))
    for seed in range(20):
        d = haze.cue_depth(img, seed)
        assert d.min() == pytest.approx(0.0, abs=1e-6) and d.max() == pytest.approx(1.0, abs=1e-6)
        assert abs(float(d.mean()) - 0.5) < 0.03
        assert d[: h // 4].mean() > d[-h // 4:].mean() + 0.3
    # a flat image has only the height cue: far at the top, the same along each row
    d = haze.cue_depth(np.full((40, 30, 3), 0.5, np.float32), 1)
    assert d[0].mean() > d[-1].mean() and float(np.ptp(d, axis=1).max()) < 1e-5


def test_resize_helpers_are_exact_where_they_should_be():
    a = np.random.default_rng(0).random((40, 24)).astype(np.float32)
    np.testing.assert_allclose(haze._resize(a, 10, 6, area=True), a.reshape(10, 4, 6, 4).mean(axis=(1, 3)),
                               atol=1e-6)
    up = haze._resize(a, 97, 61)
    assert up.shape == (97, 61) and a.min() - 1e-6 <= up.min() and up.max() <= a.max() + 1e-6
    np.testing.assert_allclose(haze._resize(a, 40, 24), a)
    assert float(haze._resize(a, 13, 7, area=True).mean()) == pytest.approx(float(a.mean()), abs=1e-5)


def test_smooth_field_range_and_smoothness():
    for seed in range(10):
        f = haze.smooth_field(60, 90, seed)
        assert f.shape == (60, 90) and f.dtype == np.float32
        assert f.min() == pytest.approx(-1.0, abs=1e-6) and f.max() == pytest.approx(1.0, abs=1e-6)
        # smooth: neighbouring pixels differ by a small fraction of the range
        assert np.abs(np.diff(f, axis=0)).max() < 0.25 and np.abs(np.diff(f, axis=1)).max() < 0.25
    np.testing.assert_array_equal(haze.smooth_field(60, 90, 3), haze.smooth_field(60, 90, 3))


# ----------------------------------------------------------------------------- airlight
def test_airlight_field_tint_bounds_and_directions():
    counts = {name: 0 for name in haze.AIRLIGHT_V2_TINTS}
    nonuniform = 0
    for seed in range(300):
        field, info = haze.random_airlight_field(24, 32, seed)
        counts[info["tint"]] += 1
        nonuniform += info["nonuniform"]
        g = info["local_gray"]
        assert field.shape == (24, 32, 3) and field.dtype == np.float32
        assert 0.0 <= field.min() and field.max() <= 1.0
        assert np.abs(field - g[..., None]).max() <= haze.AIRLIGHT_V2_TINT_MAX + 1e-6
        assert haze.AIRLIGHT_V2_GRAY_RANGE[0] <= info["gray"] <= haze.AIRLIGHT_V2_GRAY_RANGE[1]
        assert 0.6 - 1e-6 <= g.min() and g.max() <= 1.0 + 1e-6
        lo, hi = haze.AIRLIGHT_V2_TINT_STRENGTH
        assert lo <= info["tint_strength"] <= hi
        if info["tint"] == "bluish":
            assert (field[..., 2] >= field[..., 0]).all()
        elif info["tint"] == "yellowish":
            assert (field[..., 0] >= field[..., 2]).all()
        else:   # neutral: the per-channel jitter only
            assert (field.max(axis=2) - field.min(axis=2)).max() <= 2 * haze.AIRLIGHT_V2_JITTER + 1e-6
        if info["nonuniform"]:
            assert 0.0 <= info["amplitude"] <= haze.AIRLIGHT_V2_FIELD_AMPLITUDE[1]
        else:
            assert info["amplitude"] == 0.0 and float(np.ptp(field.reshape(-1, 3), axis=0).max()) == 0.0
    # drawn with the documented probabilities (300 draws: sd ~8.5 for 0.4, ~7.9 for 0.3, ~7.9 for 0.7)
    for name, p in haze.AIRLIGHT_V2_TINT_PROBS.items():
        assert abs(counts[name] - 300 * p) < 35, counts
    assert abs(nonuniform - 210) < 35
    # a forced tint keeps the draws
    a, ia = haze.random_airlight_field(8, 8, 4, tint="bluish")
    b, ib = haze.random_airlight_field(8, 8, 4, tint="bluish")
    np.testing.assert_array_equal(a, b)
    assert ia["tint"] == "bluish" and (a[..., 2] > a[..., 0]).all()


def test_nonuniform_airlight_varies_smoothly():
    for seed in range(40):
        field, info = haze.random_airlight_field(40, 40, seed, nonuniform=True)
        if info["amplitude"] > 0.1 and info["gray"] < 0.85:   # no clipping at 1.0 to flatten it
            spread = float(np.ptp(field[..., 1]))
            assert spread > 0.05
            assert np.abs(np.diff(field, axis=0)).max() < 0.05
            return
    pytest.fail("no strongly non-uniform field drawn in 40 seeds")


def test_v1_functions_are_unchanged_by_v2(clean):
    """add_haze's stream is untouched: the same seed gives what it gave before the v2 functions."""
    hazy, info = haze.add_haze(clean, 0)
    again, _ = haze.add_haze(clean, np.random.default_rng(0))
    np.testing.assert_array_equal(hazy, again)
    assert set(info) == {"beta", "airlight", "depth", "transmission", "mean_transmission", "density"}


# ----------------------------------------------------------------------------- training data
@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return image_folder(tmp_path_factory, "photos", _photo, [(160, 240), (200, 150), (96, 128)], "p")


def test_haze_source_defaults_keep_the_description_and_stream(folder):
    src = T.make_source(clean=str(folder))
    assert not {"scale_range", "clear_fraction"} & set(src.description)
    assert "add_haze (" in src.description["haze"]
    a = T.batch(src, np.random.default_rng(0), 2, 32)
    b = T.batch(T.make_source(clean=str(folder), scale_range=None, haze_v2=False, clear_fraction=0.0),
                np.random.default_rng(0), 2, 32)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_haze_source_v2_clear_fraction_and_scales(folder):
    src = T.make_source(clean=str(folder), haze_v2=True, clear_fraction=1.0)
    lq, gt = T.batch(src, np.random.default_rng(0), 3, 32)
    torch.testing.assert_close(lq, gt, rtol=0, atol=0)          # all haze-free
    assert "add_haze_v2" in src.description["haze"] and src.description["clear_fraction"] == 1.0
    v1_clear = T.make_source(clean=str(folder), clear_fraction=1.0)
    lq, gt = T.batch(v1_clear, np.random.default_rng(0), 2, 32)
    torch.testing.assert_close(lq, gt, rtol=0, atol=0)
    src = T.make_source(clean=str(folder), haze_v2=True, clear_fraction=0.25, scale_range="0.3,1")
    assert src.description["scale_range"] == [0.3, 1.0]
    lq, gt = T.batch(src, np.random.default_rng(1), 4, 32)
    assert lq.shape == gt.shape == (4, 3, 32, 32) and torch.isfinite(lq).all() and (lq != gt).any()
    clear = sum(bool(np.array_equal(hazy, cl)) for hazy, cl in src.pool)
    assert 1 <= clear <= 16   # 8 of 32 windows expected
    # deterministic per seed
    again = T.make_source(clean=str(folder), haze_v2=True, clear_fraction=0.25, scale_range="0.3,1")
    torch.testing.assert_close(T.batch(again, np.random.default_rng(1), 4, 32), (lq, gt), rtol=0, atol=0)


def test_scale_range_parsing_and_downscaled_windows(folder):
    assert D.parse_scale_range(None) is None and D.parse_scale_range("0.5") == (0.5, 0.5)
    assert D.parse_scale_range((0.25, 1)) == (0.25, 1.0)
    for bad in ("0,1", "0.5,2", "1,0.5", "a,b", "0.1,0.2,0.3"):
        with pytest.raises(ValueError, match="scale range"):
            D.parse_scale_range(bad)
    # a small scale shows more of the scene in a window: a window of the 160x240 photo at scale 0.5
    src = D.HazeSource(folder, scale_range=(0.5, 0.5), window=80)
    rng = np.random.default_rng(0)
    src.images = [src.images[0]]
    hazy, cl = src._window(rng, 32)
    assert max(cl.shape[:2]) <= 80 and min(cl.shape[:2]) >= 64
    region = D.downscale_window(src.images[0][:160, :160], 80, 80)
    assert region.shape == (80, 80, 3) and region.dtype == np.float32
    np.testing.assert_allclose(region, src.images[0][:160, :160].reshape(80, 2, 80, 2, 3).mean(axis=(1, 3)),
                               atol=1e-6)
    # the scale never leaves less than 2×crop on the short side: 96 px photo, crop 40 -> scale >= 80/96
    assert D._draw_scale(np.random.default_rng(0), (0.1, 0.1), 96, 80) == pytest.approx(80 / 96)
    with pytest.raises(ValueError, match="apply to --clean"):
        D.make_source(lq=str(folder), gt=str(folder), haze_v2=True)


def test_cli_train_with_the_v2_data_options(folder, tmp_path):
    from tilediff.cli.train import train_cmd
    out = tmp_path / "m.safetensors"
    args = ["--clean", str(folder), "--out", str(out), "--iters", "2", "--batch", "2", "--crop", "32",
            "--noise-crop", "32", "--ch", "4", "--ch-mult", "1,2", "--embed-dim", "4", "--width", "8",
            "--enc-blocks", "1,1", "--dec-blocks", "1,1", "--threads", "1", "--state-dir", str(tmp_path / "st"),
            "--no-progress", "--haze-v2", "--clear-fraction", "0.1", "--scale-range", "0.25,1",
            "--density", "light,moderate,dense"]
    r = CliRunner().invoke(train_cmd, args)
    assert r.exit_code == 0, r.output
    meta = read_metadata(out)["training"]
    assert "add_haze_v2" in meta["data"]["haze"] and meta["data"]["clear_fraction"] == 0.1
    assert meta["data"]["scale_range"] == [0.25, 1.0]
    command = meta["command"][-1]
    assert "--haze-v2" in command and "--clear-fraction 0.1" in command and "--scale-range 0.25,1" in command
    r = CliRunner().invoke(train_cmd, args[:-6] + ["--scale-range", "0,1"])
    assert r.exit_code == 2 and "scale range" in r.output
