"""Tests for tilediff.tasks.dehaze.haze (synthetic haze), tilediff.training.metrics (PSNR/SSIM) and
tilediff.baselines (dark channel prior dehazing). Small images only: the whole file runs in seconds."""
import math

import numpy as np
import pytest
from scipy import ndimage, signal

from tilediff.tasks.dehaze.dcp import box_mean, dark_channel, dark_channel_prior, guided_filter
from tilediff.tasks.dehaze.haze import (
    AIRLIGHT_GRAY_RANGE,
    AIRLIGHT_TINT,
    BETA_RANGES,
    MEAN_TRANSMISSION_RANGE,
    add_haze,
    random_haze_params,
    smooth_depth,
)
from tilediff.training.metrics import gaussian_window, psnr, ssim


# ----------------------------------------------------------------------------- test images
def _hsv2rgb(h, s, v):
    i = np.floor(h * 6).astype(int) % 6
    f = h * 6 - np.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    r = np.choose(i, [v, q, p, p, t, v])
    g = np.choose(i, [t, v, v, q, p, p])
    b = np.choose(i, [p, p, t, v, v, q])
    return np.stack([r, g, b], -1)


def colourful_image(size=192, seed=0, white_region=True):
    """Synthetic colourful textured image: 16 Voronoi regions of saturated random colours, smooth
    shading, fine oblique stripes and dark 3-px region edges. With ``white_region`` one region is
    near-white (sat 0.05, value 0.95), like a wall or cloud."""
    rng = np.random.default_rng(seed)
    n = 16
    pts = rng.random((n, 2)) * size
    yy, xx = np.mgrid[0:size, 0:size]
    lab = ((yy[..., None] - pts[:, 0]) ** 2 + (xx[..., None] - pts[:, 1]) ** 2).argmin(-1)
    hue = rng.random(n)
    sat = rng.uniform(0.6, 1.0, n)
    val = rng.uniform(0.45, 1.0, n)
    if white_region:
        sat[0], val[0] = 0.05, 0.95
    img = _hsv2rgb(hue[lab], sat[lab], val[lab])
    shade = ndimage.zoom(rng.random((5, 5)), size / 5, order=3)[:size, :size]
    shade = 0.65 + 0.35 * (shade - shade.min()) / np.ptp(shade)
    stripes = 0.9 + 0.1 * np.sin(2 * np.pi * (xx * np.cos(1.0) + yy * np.sin(1.0)) / 7.0)
    img = img * (shade * stripes)[..., None]
    edge = (lab != np.roll(lab, 1, 0)) | (lab != np.roll(lab, 1, 1))
    img[ndimage.binary_dilation(edge, iterations=1)] *= 0.15
    return np.clip(img, 0, 1).astype(np.float32)


@pytest.fixture(scope="module")
def clean():
    return colourful_image()


# ----------------------------------------------------------------------------- degrade
def test_haze_formula_exact(clean):
    h, w = clean.shape[:2]
    depth = np.linspace(0, 1, h, dtype=np.float32)[:, None] * np.ones((1, w), np.float32)
    beta, a = 1.3, np.array([0.9, 0.85, 0.8], np.float32)
    hazy, info = add_haze(clean, beta=beta, airlight=a, depth=depth)
    t = np.exp(-beta * depth.astype(np.float64))[..., None]
    expect = clean * t + a * (1 - t)
    assert hazy.dtype == np.float32 and hazy.shape == clean.shape
    np.testing.assert_allclose(hazy, expect, atol=1e-6)
    np.testing.assert_allclose(info["transmission"], t[..., 0], atol=1e-6)
    assert info["beta"] == beta
    np.testing.assert_array_equal(info["airlight"], a)
    # Scalar depth / scalar gray airlight broadcast.
    hz2, info2 = add_haze(clean, beta=0.5, airlight=0.8, depth=1.0)
    np.testing.assert_allclose(hz2, clean * math.exp(-0.5) + 0.8 * (1 - math.exp(-0.5)), atol=1e-6)
    assert info2["mean_transmission"] == pytest.approx(math.exp(-0.5), abs=1e-6)
    # Pixels at depth 0 are untouched; beta = 0 is the identity.
    np.testing.assert_allclose(hazy[0], clean[0], atol=1e-7)
    np.testing.assert_allclose(add_haze(clean, beta=0.0, airlight=1.0, depth=depth)[0], clean, atol=1e-7)


def test_haze_deterministic(clean):
    h1, i1 = add_haze(clean, rng=np.random.default_rng(7))
    h2, i2 = add_haze(clean, rng=np.random.default_rng(7))
    h3, i3 = add_haze(clean, rng=np.random.default_rng(8))
    np.testing.assert_array_equal(h1, h2)
    assert i1["beta"] == i2["beta"]
    np.testing.assert_array_equal(i1["depth"], i2["depth"])
    assert not np.array_equal(h1, h3) and i1["beta"] != i3["beta"]
    # An int seed behaves like default_rng(seed).
    np.testing.assert_array_equal(add_haze(clean, rng=7)[0], h1)
    np.testing.assert_array_equal(smooth_depth(40, 50, np.random.default_rng(3)), smooth_depth(40, 50, 3))


def test_smooth_depth_properties():
    for seed in range(20):
        d = smooth_depth(96, 128, seed)
        assert d.shape == (96, 128) and d.dtype == np.float32
        assert d.min() == pytest.approx(0.0, abs=1e-6) and d.max() == pytest.approx(1.0, abs=1e-6)
        assert d.mean() == pytest.approx(0.5, abs=0.01)
        # Farther towards the top on average.
        assert d[:32].mean() > d[-32:].mean()
        # Smooth: no blocky jumps between neighbouring pixels.
        assert np.abs(np.diff(d, axis=0)).max() < 0.1 and np.abs(np.diff(d, axis=1)).max() < 0.1
    assert smooth_depth(1, 1, 0).shape == (1, 1)


def test_random_haze_params_ranges():
    rng = np.random.default_rng(0)
    for density, (lo, hi) in BETA_RANGES.items():
        for _ in range(200):
            beta, a = random_haze_params(rng, density)
            assert lo <= beta <= hi
            assert a.shape == (3,) and a.dtype == np.float32
            assert AIRLIGHT_GRAY_RANGE[0] - AIRLIGHT_TINT - 1e-6 <= a.min() and a.max() <= 1.0
            assert np.ptp(a) <= 2 * AIRLIGHT_TINT + 1e-6
    with pytest.raises(ValueError):
        random_haze_params(rng, "foggy")


@pytest.mark.parametrize("density", sorted(BETA_RANGES))
def test_mean_transmission_in_documented_range(density):
    lo, hi = MEAN_TRANSMISSION_RANGE[density]
    blo, bhi = BETA_RANGES[density]
    img = np.zeros((48, 64, 3), np.float32)
    rng = np.random.default_rng(123)
    means = []
    for _ in range(150):
        _, info = add_haze(img, rng=rng, density=density)
        means.append(info["mean_transmission"])
    # Also the extreme betas on fixed depth maps.
    for seed in range(30):
        d = smooth_depth(48, 64, seed)
        means += [float(np.exp(-blo * d).mean()), float(np.exp(-bhi * d).mean())]
    assert lo <= min(means) and max(means) <= hi, (min(means), max(means))


def test_moderate_haze_lowers_psnr(clean):
    for seed in range(3):
        hazy, info = add_haze(clean, rng=seed, density="moderate")
        p = psnr(hazy, clean)
        assert 6.0 < p < 20.0, p          # clearly degraded ...
        assert ssim(hazy, clean) > 0.3    # ... but the structure stays visible
        assert hazy.min() >= 0 and hazy.max() <= 1
    light = psnr(add_haze(clean, beta=0.4, airlight=0.9, depth=0.5)[0], clean)
    dense = psnr(add_haze(clean, beta=3.0, airlight=0.9, depth=0.5)[0], clean)
    assert light > dense + 5


# ----------------------------------------------------------------------------- metrics
def test_psnr_known_values():
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 0.9, (32, 40, 3))
    assert psnr(a, a) == math.inf
    assert psnr(a, a + 0.1) == pytest.approx(20.0, abs=1e-9)
    assert psnr(a, a - 0.01) == pytest.approx(40.0, abs=1e-9)
    assert psnr(a * 255, a * 255 + 25.5, data_range=255) == pytest.approx(20.0, abs=1e-9)
    with pytest.raises(ValueError):
        psnr(a, a[:10])


def _ssim_reference(a, b, data_range=1.0):
    """Straightforward 2-D 'valid' convolution implementation of Wang et al. 2004."""
    k1 = gaussian_window(11, 1.5)
    win = np.outer(k1, k1)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    vals = []
    for c in range(a.shape[2]):
        x, y = a[..., c].astype(np.float64), b[..., c].astype(np.float64)
        f = lambda z: signal.convolve2d(z, win, mode="valid")  # noqa: E731 (window is symmetric)
        mx, my = f(x), f(y)
        vx, vy, cxy = f(x * x) - mx**2, f(y * y) - my**2, f(x * y) - mx * my
        m = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
        vals.append(m.mean())
    return float(np.mean(vals))


def test_ssim_values(clean):
    img = clean[:96, :112].astype(np.float64)
    assert ssim(img, img) == pytest.approx(1.0, abs=1e-12)
    k = gaussian_window()
    assert k.shape == (11,) and k.sum() == pytest.approx(1.0) and k.argmax() == 5
    rng = np.random.default_rng(1)
    scores = []
    for sigma in (0.02, 0.05, 0.1, 0.2):
        noisy = np.clip(img + rng.normal(0, sigma, img.shape), 0, 1)
        s = ssim(img, noisy)
        assert s == pytest.approx(_ssim_reference(img, noisy), abs=1e-10)
        assert ssim(noisy, img) == pytest.approx(s, abs=1e-12)  # symmetric
        scores.append(s)
    assert all(s1 > s2 for s1, s2 in zip(scores, scores[1:])), scores
    assert 0 < scores[-1] < scores[0] < 1
    # Constant images: only the luminance term, (2*0.5*0.6 + C1) / (0.5^2 + 0.6^2 + C1).
    c1 = 0.01**2
    expect = (2 * 0.5 * 0.6 + c1) / (0.25 + 0.36 + c1)
    assert ssim(np.full((16, 16, 3), 0.5), np.full((16, 16, 3), 0.6)) == pytest.approx(expect, abs=1e-12)
    # A constant offset on a textured image keeps structure/contrast: higher than heavy noise.
    assert scores[-1] < ssim(img * 0.8, img * 0.8 + 0.1) < 1.0


def test_ssim_matches_skimage(clean):
    metrics = pytest.importorskip("skimage.metrics")
    img = clean[:80, :100].astype(np.float64)
    noisy = np.clip(img + np.random.default_rng(2).normal(0, 0.05, img.shape), 0, 1)
    ref = metrics.structural_similarity(
        img, noisy, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
        channel_axis=-1, data_range=1,
    )
    assert ssim(img, noisy) == pytest.approx(ref, abs=1e-4)


# ----------------------------------------------------------------------------- baselines
def test_box_mean_and_guided_filter():
    rng = np.random.default_rng(0)
    x = rng.random((30, 41))
    r = 3
    # Interior equals a plain (2r+1)^2 moving average; borders average only the covered pixels.
    ref = np.array([[x[max(0, i - r):i + r + 1, max(0, j - r):j + r + 1].mean() for j in range(41)]
                    for i in range(30)])
    np.testing.assert_allclose(box_mean(x, r), ref, atol=1e-10)
    # float32 stays float32 (the dark channel prior runs in float32 to bound its memory on large images)
    got32 = box_mean(x.astype(np.float32), r)
    assert got32.dtype == np.float32
    np.testing.assert_allclose(got32, ref, atol=1e-6)
    assert guided_filter(x.astype(np.float32), x.astype(np.float32), 5, 1e-3).dtype == np.float32
    # A constant source is unchanged; filtering the guide by itself with tiny eps preserves it.
    np.testing.assert_allclose(guided_filter(x, np.full_like(x, 0.4), 5, 1e-3), 0.4, atol=1e-10)
    np.testing.assert_allclose(guided_filter(x, x, 5, 1e-8), x, atol=1e-4)
    # Dark channel of a patch-wise constant image.
    img = np.ones((20, 20, 3)) * 0.7
    img[10, 10, 1] = 0.1
    dc = dark_channel(img, 15)
    assert dc[10, 10] == pytest.approx(0.1) and dc[3, 3] == pytest.approx(0.1) and dc[0, 19] == pytest.approx(0.7)


def test_dcp_recovers_constant_depth_haze(clean):
    beta, a = 1.0, 0.9
    hazy, info = add_haze(clean, beta=beta, airlight=a, depth=1.0)
    out, dinfo = dark_channel_prior(hazy, return_info=True)
    assert out.shape == clean.shape and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 1
    p_hazy, p_out = psnr(hazy, clean), psnr(out, clean)
    gain = p_out - p_hazy
    assert gain > 10.0, (p_hazy, p_out)     # measured: 8.1 dB -> 28.9 dB
    assert ssim(out, clean) > ssim(hazy, clean) + 0.3
    np.testing.assert_allclose(dinfo["airlight"], a, atol=0.03)
    assert dinfo["transmission"].mean() == pytest.approx(math.exp(-beta), abs=0.05)


def test_dcp_in_bands_equals_the_whole_image(clean):
    """The banded computation (rows + a halo of the filters' combined radius) gives the whole-image
    result, info included, whatever the band height."""
    hazy, _ = add_haze(clean[:150], rng=4, density="moderate")
    whole, info = dark_channel_prior(hazy, return_info=True, band_rows=10_000)
    for rows in (5, 40, 149):
        banded, binfo = dark_channel_prior(hazy, return_info=True, band_rows=rows)
        np.testing.assert_allclose(banded, whole, atol=1e-6)
        for key in ("transmission", "transmission_raw", "dark"):
            np.testing.assert_allclose(binfo[key], info[key], atol=1e-6)
        np.testing.assert_array_equal(binfo["airlight"], info["airlight"])


def test_dcp_gain_without_bright_region():
    # No sky / white object: the airlight is underestimated with a colour cast, but DCP still helps.
    img = colourful_image(seed=0, white_region=False)
    hazy, _ = add_haze(img, beta=1.0, airlight=0.9, depth=1.0)
    gain = psnr(dark_channel_prior(hazy), img) - psnr(hazy, img)
    assert gain > 3.0, gain                 # measured: 5.6 dB


def test_dcp_on_smooth_random_depth(clean):
    hazy, _ = add_haze(clean, rng=0, density="moderate")
    gain = psnr(dark_channel_prior(hazy), clean) - psnr(hazy, clean)
    assert gain > 5.0, gain                 # measured: 8.9 dB -> 22.6 dB
