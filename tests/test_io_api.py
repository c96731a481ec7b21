"""Tests for tilediff.io.read_size (header only) and tilediff.io.to_float_rgb (arrays for the network)."""

import numpy as np
import pytest
import tifffile
from PIL import Image as PILImage

import tilediff.io as tio
from tilediff.io import ImageReadError, read_image, read_size, to_float_rgb


def exif_with_orientation(orientation):
    exif = PILImage.Exif()
    exif[274] = orientation
    return exif.tobytes()


# --------------------------------------------------------------------------
# read_size


@pytest.mark.parametrize('orientation', range(1, 9))
@pytest.mark.parametrize('ext', ['png', 'jpg'])
def test_read_size_matches_read_image(tmp_path, ext, orientation):
    path = tmp_path / f'o.{ext}'
    PILImage.fromarray(np.zeros((6, 9, 3), np.uint8)).save(path, exif=exif_with_orientation(orientation))
    assert read_size(path) == read_image(path).shape == ((9, 6) if orientation >= 5 else (6, 9))


def test_read_size_tiff_and_16bit_png(tmp_path):
    tifffile.imwrite(tmp_path / 'a.tif', np.zeros((3, 2, 7), np.uint8), photometric='minisblack',
                     metadata=None)
    assert read_size(tmp_path / 'a.tif') == (2, 7)  # the first of three 2x7 pages
    tifffile.imwrite(tmp_path / 'b.tif', np.zeros((11, 13, 3), np.uint16), photometric='rgb',
                     tile=(16, 16), bigtiff=True, metadata=None)
    assert read_size(tmp_path / 'b.tif') == (11, 13)
    tio.write_image(tmp_path / 'c.png', np.zeros((4, 5, 3), np.float32),
                    tio.ImageData(rgb=None, alpha=None, mode='rgb', dtype=np.dtype(np.uint16),
                                  format='png'))
    assert read_size(tmp_path / 'c.png') == (4, 5)


def test_read_size_errors(tmp_path):
    (tmp_path / 'empty.png').touch()
    (tmp_path / 'text.png').write_text('not an image\nat all\n')
    PILImage.new('RGB', (4, 4)).save(tmp_path / 'x.bmp')
    (tmp_path / 'sub').mkdir()
    cases = {'empty.png': 'empty file', 'text.png': 'not a readable image', 'x.bmp': 'BMP is not supported',
             'sub': 'is a directory', 'missing.png': 'cannot open'}
    for name, problem in cases.items():
        with pytest.raises(ImageReadError, match=problem) as excinfo:
            read_size(tmp_path / name)
        assert name in str(excinfo.value) and '\n' not in str(excinfo.value)


# --------------------------------------------------------------------------
# to_float_rgb


def test_to_float_rgb_scales_and_repeats():
    u8 = np.arange(24, dtype=np.uint8).reshape(2, 4, 3) * 10
    np.testing.assert_array_equal(to_float_rgb(u8), u8.astype(np.float32) / 255)
    u16 = np.array([[0, 65535, 32768]], np.uint16)
    out = to_float_rgb(u16)
    assert out.shape == (1, 3, 3) and out.dtype == np.float32
    np.testing.assert_array_equal(out[..., 0], out[..., 2])
    np.testing.assert_array_equal(out[0, :, 1], np.array([0, 65535, 32768], np.float32) / 65535)
    grey_alpha = np.stack([u16, np.full_like(u16, 7)], axis=-1)
    np.testing.assert_array_equal(to_float_rgb(grey_alpha), out)
    rgba = np.concatenate([u8, np.full((2, 4, 1), 3, np.uint8)], axis=-1)
    np.testing.assert_array_equal(to_float_rgb(rgba), to_float_rgb(u8))
    f64 = np.array([[[-0.5, 0.25, 2.0]]])
    out = to_float_rgb(f64)
    assert out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, np.array([[[0.0, 0.25, 1.0]]], np.float32))


def test_to_float_rgb_same_as_read_image(tmp_path):
    rng = np.random.default_rng(3)
    samples = rng.integers(0, 65536, (5, 7, 4)).astype(np.uint16)
    tifffile.imwrite(tmp_path / 'a.tif', samples, photometric='rgb', extrasamples=['unassalpha'],
                     metadata=None)
    np.testing.assert_array_equal(to_float_rgb(samples), read_image(tmp_path / 'a.tif').rgb)


def test_to_float_rgb_does_not_alias_its_input():
    image = np.full((2, 2, 3), 0.5, np.float32)
    out = to_float_rgb(image)
    out[:] = 0
    assert (image == 0.5).all()


@pytest.mark.parametrize('bad', [np.nan, np.inf, -np.inf])
def test_to_float_rgb_refuses_non_finite(bad):
    image = np.zeros((2, 2, 3), np.float32)
    image[1, 1, 2] = bad
    with pytest.raises(ValueError, match='NaN or infinite'):
        to_float_rgb(image)


@pytest.mark.parametrize('shape', [(4,), (2, 2, 5), (1, 2, 2, 3)])
def test_to_float_rgb_refuses_other_shapes(shape):
    with pytest.raises(ValueError):
        to_float_rgb(np.zeros(shape, np.uint8))
