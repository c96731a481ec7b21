"""Haze recomposition (tilediff.recompose): the restored image's transmission, the input's detail."""
import numpy as np
import pytest
from scipy import ndimage

from tilediff.tasks.dehaze.dcp import dark_channel, estimate_airlight
from tilediff.tasks.dehaze.haze import add_haze, smooth_depth
from tilediff.training.metrics import psnr
from tilediff.tasks.dehaze.dcp import airlight_of, default_radius
from tilediff.tasks.dehaze.recompose import haze_recompose, transmission_from_pair

from test_degrade_metrics import colourful_image


@pytest.fixture(scope="module")
def scene():
    """A textured 160 × 224 image hazed with a smooth random depth map (no clipping: A < 1)."""
    clean = colourful_image(224)[:160] * 0.9
    depth = smooth_depth(160, 224, np.random.default_rng(3))
    hazy, info = add_haze(clean, beta=1.2, airlight=np.array([0.86, 0.84, 0.8], np.float32), depth=depth)
    return clean, hazy, info


def test_the_clean_image_gives_back_the_true_transmission_and_itself(scene):
    """With the clean image as the 'restored' one, the local least squares find t exactly and the
    recomposition gives back the clean image up to the guided filter's texture in t (~30 dB here)."""
    clean, hazy, info = scene
    t = transmission_from_pair(hazy, clean, info["airlight"], ls_radius=3)
    inner = (slice(20, -20), slice(20, -20))
    assert np.abs(t - info["transmission"])[inner].max() < 0.02
    out, got = haze_recompose(hazy, clean, air=info["airlight"], return_info=True)
    assert psnr(out, clean) > 28 > psnr(hazy, clean) + 15
    assert np.abs(got["transmission"] - info["transmission"]).mean() < 0.035


def test_detail_comes_from_the_input_and_haze_from_the_restored_image(scene):
    """A blurred restoration (the right haze removal without its fine detail, what the compressor's
    decoder loses) gets its detail back; a restoration that left the haze in gives back the input."""
    clean, hazy, _ = scene
    blurred = ndimage.gaussian_filter(clean, (2.5, 2.5, 0))
    out = haze_recompose(hazy, blurred)
    assert psnr(out, clean) > psnr(blurred, clean) + 5
    assert psnr(out, clean) > psnr(hazy, clean) + 8
    np.testing.assert_allclose(haze_recompose(hazy, hazy), hazy, atol=2e-3)


def test_bands_give_the_whole_image_result(scene):
    _, hazy, _ = scene
    restored = np.clip(hazy * 1.3 - 0.25, 0, 1)
    whole, info = haze_recompose(hazy, restored, band_rows=10_000, return_info=True)
    for rows in (7, 50, 159):
        banded, binfo = haze_recompose(hazy, restored, band_rows=rows, return_info=True)
        np.testing.assert_allclose(banded, whole, atol=1e-6)
        np.testing.assert_allclose(binfo["transmission"], info["transmission"], atol=1e-6)
    np.testing.assert_array_equal(airlight_of(hazy, band_rows=9), estimate_airlight(hazy, dark_channel(hazy, 15)))
    assert info["transmission"].min() >= 0.1 and default_radius(160, 224) == 16


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="H x W x 3"):
        haze_recompose(np.zeros((8, 8)), np.zeros((8, 8)))
    with pytest.raises(ValueError, match="differs"):
        haze_recompose(np.zeros((8, 8, 3)), np.zeros((8, 9, 3)))


def test_restorer_recomposes_its_own_output_on_request_or_by_the_file_default(golden_dir, tmp_path):
    """restore(recompose=True) is haze_recompose(input, restore(recompose=False)); the model file's
    default_recompose switches it on; other tasks refuse it."""
    from tilediff.restorer import Restorer
    from tilediff.weights import convert, update_metadata
    path = convert(golden_dir / "nafnet_latent_small.pth", golden_dir / "unet_dehaze.pth", task="dehaze",
                   output=tmp_path / "m.safetensors")
    image = np.random.default_rng(5).random((40, 48, 3)).astype(np.float32)
    r = Restorer("dehaze", weights=path)
    assert not r.default_recompose
    plain = r.restore(image, steps=2, sampler="ode", mode="whole")
    stats = {}
    recomposed = r.restore(image, steps=2, sampler="ode", mode="whole", recompose=True, stats=stats)
    np.testing.assert_array_equal(recomposed, haze_recompose(image, plain))
    assert "recompose" in stats["seconds"] and not np.array_equal(recomposed, plain)
    update_metadata(path, default_recompose=True)
    r = Restorer("dehaze", weights=path)
    assert r.default_recompose
    np.testing.assert_array_equal(r.restore(image, steps=2, sampler="ode", mode="whole"), recomposed)
    np.testing.assert_array_equal(r.restore(image, steps=2, sampler="ode", mode="whole", recompose=False), plain)
    deshadow = convert(golden_dir / "nafnet_pixel_small.pth", task="deshadow", output=tmp_path / "d.safetensors")
    with pytest.raises(ValueError, match="recompose applies to dehaze only"):
        Restorer("deshadow", weights=deshadow).restore(image, steps=1, recompose=True)
    with pytest.raises(ValueError, match="applies to dehaze only, not to task deshadow"):
        Restorer("deshadow", weights=deshadow).restore(image, steps=1, prior="dcp")


def test_torch_versions_match_numpy(scene):
    """torch_ops (the GPU path) computes what dcp / recompose compute, in bands too."""
    import torch
    from tilediff.tasks.dehaze import torch_ops as haze_torch
    from tilediff.tasks.dehaze.dcp import box_mean, dark_channel_prior, guided_filter
    clean, hazy, _ = scene
    restored = np.clip(ndimage.gaussian_filter(clean, (1.5, 1.5, 0)) * 1.05, 0, 1).astype(np.float32)
    th, tr = torch.from_numpy(hazy), torch.from_numpy(restored)
    plane = hazy[..., 1]
    np.testing.assert_allclose(haze_torch.box_mean(torch.from_numpy(plane), 7).numpy(), box_mean(plane, 7), atol=1e-5)
    np.testing.assert_allclose(haze_torch.guided_filter(th[..., 0], th[..., 1], 9, 1e-3).numpy(),
                               guided_filter(hazy[..., 0], hazy[..., 1], 9, 1e-3), atol=1e-4)
    np.testing.assert_allclose(haze_torch.dark_channel(th).numpy(), dark_channel(hazy, 15), atol=0)
    # the airlight: the brightest input pixel among the 0.1 % haziest of the dark channel. Where pixels
    # tie at the cut, numpy and torch may take different ones into that set, so what is promised is a
    # pixel of the set, at least as bright as every pixel strictly above the cut (in every such set)
    dark = dark_channel(hazy, 15).ravel()
    n = max(1, round(dark.size * 0.001))
    cut = np.partition(dark, dark.size - n)[dark.size - n]
    pixels = hazy.reshape(-1, 3)
    above = pixels[dark > cut].sum(axis=1).max(initial=-np.inf)
    airlights = haze_torch.airlight(th, band_rows=30).numpy(), airlight_of(hazy)
    for air in airlights:
        assert (np.abs(pixels[dark >= cut] - air).max(axis=1) == 0).any()
        assert air.sum() >= above - 1e-6
    # J = (I − A) / max(t, 0.1) + A moves at most 9 × as far as A does
    atol = 2e-4 + 9 * float(np.abs(airlights[0] - airlights[1]).max())
    for rows in (33, 512):
        np.testing.assert_allclose(haze_torch.dark_channel_prior(th, band_rows=rows).numpy(), dark_channel_prior(hazy),
                                   atol=atol)
        np.testing.assert_allclose(haze_torch.haze_recompose(th, tr, band_rows=rows).numpy(),
                                   haze_recompose(hazy, restored), atol=atol)
