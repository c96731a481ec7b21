"""Tests for tilediff.io: round trips per format, metadata, errors, atomic writes."""

import errno
import os
import struct
import zlib

import numpy as np
import pytest
import tifffile
from PIL import Image as PILImage
from PIL import ImageOps

import tilediff.io as tio
from tilediff.io import ImageReadError, ImageWriteError, read_image, write_image

RNG = np.random.default_rng(1234)
HEIGHT, WIDTH = 37, 50  # odd sizes: partial tiles and strips


def random_samples(dtype, nchan, height=HEIGHT, width=WIDTH):
    dtype = np.dtype(dtype)
    shape = (height, width, nchan)
    if dtype == np.float32:
        return RNG.random(shape, dtype=np.float32)
    return RNG.integers(0, np.iinfo(dtype).max, shape, endpoint=True).astype(dtype)


def expected_rgb(samples):
    """What read_image must give: float [0, 1], grey repeated, alpha removed."""
    colour = samples[:, :, :3] if samples.shape[2] >= 3 else np.repeat(samples[:, :, :1], 3, 2)
    if samples.dtype == np.float32:
        return colour
    return colour.astype(np.float32) / np.float32(np.iinfo(samples.dtype).max)


def srgb_profile():
    try:
        from PIL import ImageCms
    except ImportError:
        pytest.skip('Pillow built without ImageCms (LittleCMS); no real ICC profile to test with')
    return ImageCms.ImageCmsProfile(ImageCms.createProfile('sRGB')).tobytes()


def make_exif(orientation=1, make='TestCam', exposure=(1, 250)):
    exif = PILImage.Exif()
    exif[271] = make
    exif[274] = orientation
    exif.get_ifd(0x8769)[0x829A] = exposure  # ExposureTime
    return exif.tobytes()


def assert_one_line_error(excinfo, name):
    text = str(excinfo.value)
    assert name in text
    assert '\n' not in text
    return text


# --------------------------------------------------------------------------
# Reference PNG encoder, independent of tilediff's: per-byte loops, every filter


def reference_png(samples, filters, icc=None, exif=None, interlace=0):
    height, width, nchan = samples.shape
    depth = samples.dtype.itemsize * 8
    big = samples.astype('>u2' if depth == 16 else 'u1')
    data = big.reshape(height, -1).view(np.uint8)
    bpp = nchan * depth // 8
    out, prev = bytearray(), [0] * data.shape[1]
    for y in range(height):
        row, kind = [int(v) for v in data[y]], filters[y % len(filters)]
        out.append(kind)
        for i, x in enumerate(row):
            a = row[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if kind == 0:
                pred = 0
            elif kind == 1:
                pred = a
            elif kind == 2:
                pred = b
            elif kind == 3:
                pred = (a + b) // 2
            else:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
            out.append((x - pred) % 256)
        prev = row

    def chunk(kind, payload):
        return (struct.pack('>I', len(payload)) + kind + payload
                + struct.pack('>I', zlib.crc32(kind + payload)))

    ctype = {1: 0, 2: 4, 3: 2, 4: 6}[nchan]
    png = b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', width, height, depth,
                                                             ctype, 0, 0, interlace))
    if icc:
        png += chunk(b'iCCP', b'sRGB\x00\x00' + zlib.compress(icc))
    if exif:
        png += chunk(b'eXIf', exif[6:])
    payload = zlib.compress(bytes(out))
    png += chunk(b'IDAT', payload[:len(payload) // 2]) + chunk(b'IDAT', payload[len(payload) // 2:])
    return png + chunk(b'IEND', b'')


# --------------------------------------------------------------------------
# TIFF


TIFF_CASES = [(dtype, nchan, tiled)
              for dtype in ('uint8', 'uint16', 'float32')
              for nchan in (1, 2, 3, 4)
              for tiled in (False, True)]


@pytest.mark.parametrize('dtype,nchan,tiled', TIFF_CASES)
def test_tiff_round_trip(tmp_path, dtype, nchan, tiled):
    samples = random_samples(dtype, nchan)
    src, dst = tmp_path / 'in.tif', tmp_path / 'out.tif'
    layout = {'tile': (16, 32)} if tiled else {'rowsperstrip': 8}
    predictor = 2 if dtype != 'float32' else None
    tifffile.imwrite(src, samples if nchan > 1 else samples[:, :, 0],
                     photometric='rgb' if nchan >= 3 else 'minisblack',
                     extrasamples=['unassalpha'] if nchan in (2, 4) else None,
                     compression='zlib', predictor=predictor, iccprofile=b'any ICC bytes',
                     metadata=None, **layout)
    image = read_image(src)
    assert image.format == 'tiff'
    assert image.mode == ('rgb' if nchan >= 3 else 'gray')
    assert image.dtype == np.dtype(dtype)
    assert image.rgb.dtype == np.float32 and image.rgb.shape == (HEIGHT, WIDTH, 3)
    np.testing.assert_array_equal(image.rgb, expected_rgb(samples))
    if nchan in (2, 4):
        assert image.alpha.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(image.alpha, samples[:, :, -1])
    else:
        assert image.alpha is None
    assert image.icc == b'any ICC bytes'
    assert image.tiff.tile == ((16, 32) if tiled else None)

    write_image(dst, image.rgb, image)
    back = tifffile.imread(dst)
    np.testing.assert_array_equal(back.reshape(samples.shape), samples)
    with tifffile.TiffFile(src) as a, tifffile.TiffFile(dst) as b:
        pa, pb = a.pages.first, b.pages.first
        assert pb.dtype == pa.dtype
        assert pb.is_tiled == pa.is_tiled
        if tiled:
            assert (pb.tilelength, pb.tilewidth) == (16, 32)
        else:
            assert pb.rowsperstrip == 8
        assert pb.compression == pa.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
        assert pb.predictor == pa.predictor
        assert pb.photometric == pa.photometric
        assert tuple(pb.extrasamples) == tuple(pa.extrasamples)
        assert pb.tags[34675].value == b'any ICC bytes'


def test_tiff_planar_bigtiff_lzma(tmp_path):
    samples = random_samples('uint16', 3)
    src = tmp_path / 'planar.tif'
    tifffile.imwrite(src, np.moveaxis(samples, -1, 0), photometric='rgb', planarconfig='separate',
                     tile=(16, 16), compression='lzma', bigtiff=True, metadata=None)
    image = read_image(src)
    np.testing.assert_array_equal(image.rgb, expected_rgb(samples))
    assert image.tiff.bigtiff and image.tiff.planarconfig == 2
    dst = write_image(tmp_path / 'out.tif', image.rgb, image)
    with tifffile.TiffFile(dst) as tif:
        page = tif.pages.first
        assert tif.is_bigtiff
        assert page.planarconfig == 2 and page.compression == tifffile.COMPRESSION.LZMA
        np.testing.assert_array_equal(np.moveaxis(page.asarray(), 0, -1), samples)


def test_tiff_uncompressed_and_explicit_compression(tmp_path):
    samples = random_samples('uint8', 3)
    src = tmp_path / 'raw.tif'
    tifffile.imwrite(src, samples, photometric='rgb', metadata=None)
    image = read_image(src)
    write_image(tmp_path / 'same.tif', image.rgb, image)
    write_image(tmp_path / 'zlib.tif', image.rgb, image, compression='zlib')
    with tifffile.TiffFile(tmp_path / 'same.tif') as a, tifffile.TiffFile(tmp_path / 'zlib.tif') as b:
        assert a.pages.first.compression == tifffile.COMPRESSION.NONE
        assert b.pages.first.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
        np.testing.assert_array_equal(b.pages.first.asarray(), samples)
    with tifffile.TiffFile(write_image(tmp_path / 'lzma.tif', image.rgb, image, compression='lzma')) as c:
        assert c.pages.first.compression == tifffile.COMPRESSION.LZMA
    with pytest.raises(ImageWriteError, match='unknown TIFF compression'):
        write_image(tmp_path / 'bad.tif', image.rgb, image, compression='nonsense')
    with pytest.raises(ImageWriteError, match='zlib level'):
        write_image(tmp_path / 'bad.png', image.rgb, image, compression='zlib')
    assert not (tmp_path / 'bad.tif').exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize('dtype,compression,predictor', [
    ('uint8', 'lzw', 2), ('uint16', 'zstd', 2), ('uint8', 'packbits', None), ('float32', 'zstd', 3),
    ('float32', 'lzw', None)])
def test_tiff_imagecodecs_compressions_round_trip(tmp_path, dtype, compression, predictor):
    """The codecs tifffile gets from imagecodecs are kept, with their predictor, bit for bit."""
    samples = random_samples(dtype, 4)
    src = tmp_path / f'{compression}.tif'
    tifffile.imwrite(src, samples, photometric='rgb', extrasamples=['unassalpha'], tile=(16, 16),
                     compression=compression, predictor=predictor, metadata=None)
    image = read_image(src)
    np.testing.assert_array_equal(image.rgb, expected_rgb(samples))
    dst = write_image(tmp_path / 'out.tif', image.rgb, image)
    with tifffile.TiffFile(src) as a, tifffile.TiffFile(dst) as b:
        assert b.pages.first.compression == a.pages.first.compression
        assert b.pages.first.predictor == a.pages.first.predictor
        np.testing.assert_array_equal(b.pages.first.asarray(), samples)
    np.testing.assert_array_equal(tio.read_tiff_region(dst, 3, 30, 5, 41), samples[3:30, 5:41])


def test_tiff_codec_without_encoder_falls_back_to_zlib(tmp_path, monkeypatch):
    """A codec tifffile cannot encode here (imagecodecs missing, or decode-only) becomes zlib."""
    samples = random_samples('uint16', 3)
    src = tmp_path / 'zstd.tif'
    tifffile.imwrite(src, samples, photometric='rgb', compression='zstd', predictor=2, metadata=None)
    image = read_image(src)
    encoders = tifffile.TIFF.COMPRESSORS
    monkeypatch.setattr(tifffile.TIFF, 'COMPRESSORS', {1: encoders[1], 8: encoders[8]})
    with pytest.warns(UserWarning, match='no encoder.*imagecodecs'):
        write_image(tmp_path / 'out.tif', image.rgb, image)
    monkeypatch.undo()
    with tifffile.TiffFile(tmp_path / 'out.tif') as tif:
        assert tif.pages.first.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
        assert tif.pages.first.predictor == 2
        np.testing.assert_array_equal(tif.pages.first.asarray(), samples)


def test_tiff_exif_written_and_read(tmp_path):
    """EXIF from a JPEG goes into the TIFF's Exif IFD and comes back out."""
    jpg = tmp_path / 'cam.jpg'
    PILImage.fromarray(random_samples('uint8', 3)).save(jpg, exif=make_exif(make='Cam X'))
    image = read_image(jpg)
    dst = write_image(tmp_path / 'out.tif', image.rgb, image)
    with tifffile.TiffFile(dst) as tif:
        tags = tif.pages.first.tags
        assert tags['Make'].value == 'Cam X'
        assert tags['ExifTag'].value['ExposureTime'] == (1, 250)
    again = read_image(dst)
    exif = PILImage.Exif()
    exif.load(again.exif)
    assert exif[271] == 'Cam X'
    exposure = exif.get_ifd(0x8769)[0x829A]  # Pillow gives a (num, den) tuple here
    assert exposure == (1, 250) or exposure == 1 / 250
    # and TIFF -> TIFF keeps it too (BigTIFF output included)
    dst2 = write_image(tmp_path / 'out2.tif', again.rgb, again, bigtiff=True)
    with tifffile.TiffFile(dst2) as tif:
        assert tif.is_bigtiff
        assert tif.pages.first.tags['ExifTag'].value['ExposureTime'] == (1, 250)


def test_read_tiff_region(tmp_path):
    samples = random_samples('uint16', 4, 70, 90)
    cases = {
        'strips.tif': dict(rowsperstrip=9, compression='zlib', predictor=True),
        'tiles.tif': dict(tile=(32, 16), compression='zlib'),
        'planar.tif': dict(tile=(16, 16), planarconfig='separate'),
    }
    for name, options in cases.items():
        data = np.moveaxis(samples, -1, 0) if options.get('planarconfig') else samples
        tifffile.imwrite(tmp_path / name, data, photometric='rgb', extrasamples=['unassalpha'],
                         metadata=None, **options)
        for y0, y1, x0, x1 in [(0, 70, 0, 90), (5, 6, 7, 8), (9, 41, 15, 33), (63, 70, 80, 90)]:
            window = tio.read_tiff_region(tmp_path / name, y0, y1, x0, x1)
            np.testing.assert_array_equal(window, samples[y0:y1, x0:x1], err_msg=name)
    with pytest.raises(ImageReadError, match='outside'):
        tio.read_tiff_region(tmp_path / 'tiles.tif', 0, 71, 0, 10)


@pytest.mark.parametrize('compression,cut', [(None, 'half'), ('zlib', 'half'), (None, 'segment')])
def test_truncated_tiff_raises(tmp_path, compression, cut):
    samples = random_samples('uint8', 3, 64, 64)
    full = tmp_path / 'full.tif'
    tifffile.imwrite(full, samples, rowsperstrip=16, compression=compression, metadata=None)
    data = full.read_bytes()
    if cut == 'half':
        keep = len(data) // 2
    else:  # exactly at the end of a strip: no partial read to trip over
        with tifffile.TiffFile(full) as tif:
            keep = tif.pages.first.dataoffsets[2]
    broken = tmp_path / 'broken.tif'
    broken.write_bytes(data[:keep])
    with pytest.raises(ImageReadError) as excinfo:
        read_image(broken)
    assert 'truncated' in assert_one_line_error(excinfo, 'broken.tif')
    with pytest.raises(ImageReadError):
        tio.read_tiff_region(broken, 0, 64, 0, 64)


def test_unsupported_tiff_sample_type(tmp_path):
    path = tmp_path / 'int16.tif'
    tifffile.imwrite(path, np.zeros((8, 8), np.int16))
    with pytest.raises(ImageReadError, match='unsupported'):
        read_image(path)


# --------------------------------------------------------------------------
# PNG


PNG_MODES = {1: 'gray', 2: 'gray+alpha', 3: 'rgb', 4: 'rgba'}


def write_source_png(path, samples, icc):
    """8-bit and 16-bit grey through Pillow; 16-bit colour with the reference encoder."""
    if samples.dtype == np.uint16 and samples.shape[2] > 1:
        path.write_bytes(reference_png(samples, filters=[0, 1, 2, 3, 4], icc=icc))
        return
    array = samples[:, :, 0] if samples.shape[2] == 1 else samples
    PILImage.fromarray(array).save(path, icc_profile=icc)


@pytest.mark.parametrize('dtype', ['uint8', 'uint16'])
@pytest.mark.parametrize('nchan', [1, 2, 3, 4])
def test_png_round_trip(tmp_path, dtype, nchan):
    icc = srgb_profile()
    samples = random_samples(dtype, nchan)
    src, dst = tmp_path / 'in.png', tmp_path / 'out.png'
    write_source_png(src, samples, icc)
    image = read_image(src)
    assert image.format == 'png' and image.dtype == np.dtype(dtype)
    assert image.mode == ('rgb' if nchan >= 3 else 'gray')
    np.testing.assert_array_equal(image.rgb, expected_rgb(samples))
    if nchan in (2, 4):
        np.testing.assert_array_equal(image.alpha, samples[:, :, -1])
        assert image.alpha.dtype == np.dtype(dtype)
    assert image.icc == icc

    write_image(dst, image.rgb, image)
    back = read_image(dst)
    assert back.dtype == np.dtype(dtype) and back.mode == image.mode and back.icc == icc
    np.testing.assert_array_equal(back.rgb, image.rgb)
    if nchan in (2, 4):
        np.testing.assert_array_equal(back.alpha, samples[:, :, -1])
    # Check the written bits with Pillow, independently of tilediff's decoder.
    with PILImage.open(dst) as im:
        assert im.info['icc_profile'] == icc
        seen = np.asarray(im)
    if dtype == 'uint8' or nchan == 1:
        np.testing.assert_array_equal(seen.reshape(samples.shape), samples)
    else:  # Pillow 13 only shows the high byte of 16-bit colour PNG
        high = (samples >> 8).astype(np.uint8)
        if nchan == 2:  # Pillow opens 16-bit grey+alpha as RGBA
            seen = seen[:, :, [0, 3]]
        np.testing.assert_array_equal(seen, high)


@pytest.mark.parametrize('filters', [[0, 1, 2], [0, 1, 2, 3, 4], [4], [3]])
def test_png16_decoder_filters(tmp_path, filters):
    samples = random_samples('uint16', 3, 19, 23)
    samples[5:9] = 40000  # flat rows exercise the predictors' ties
    path = tmp_path / 'f.png'
    path.write_bytes(reference_png(samples, filters))
    np.testing.assert_array_equal(read_image(path).rgb, expected_rgb(samples))


def test_png16_exif_orientation_and_icc(tmp_path):
    """16-bit colour PNG (imagecodecs' codec): eXIf orientation applied, iCCP and eXIf written."""
    icc = srgb_profile()
    samples = random_samples('uint16', 4, 6, 9)
    src = tmp_path / 'o16.png'
    src.write_bytes(reference_png(samples, [4], icc=icc, exif=make_exif(orientation=6)))
    image = read_image(src)
    upright = np.rot90(samples, -1)  # orientation 6: turn 90 degrees clockwise
    np.testing.assert_array_equal(image.rgb, expected_rgb(upright))
    np.testing.assert_array_equal(image.alpha, upright[:, :, 3])
    assert image.icc == icc
    exif = PILImage.Exif()
    exif.load(image.exif)
    assert exif[274] == 1 and exif[271] == 'TestCam'
    dst = write_image(tmp_path / 'o16_out.png', image.rgb, image)
    with PILImage.open(dst) as im:
        assert im.info['icc_profile'] == icc
        assert im.getexif()[274] == 1 and im.getexif()[271] == 'TestCam'
    back = read_image(dst)
    np.testing.assert_array_equal(back.alpha, upright[:, :, 3])
    np.testing.assert_array_equal(back.rgb, image.rgb)
    assert back.exif == image.exif


def test_png16_colour_key_is_not_alpha(tmp_path):
    """A tRNS colour key in 16-bit RGB stays a plain colour, as Pillow leaves it for 8-bit RGB."""
    samples = random_samples('uint16', 3, 5, 6)
    png = reference_png(samples, [0])
    key = struct.pack('>HHH', *(int(v) for v in samples[0, 0]))
    trns = struct.pack('>I', 6) + b'tRNS' + key + struct.pack('>I', zlib.crc32(b'tRNS' + key))
    at = png.index(b'IDAT') - 4
    path = tmp_path / 'key.png'
    path.write_bytes(png[:at] + trns + png[at:])
    image = read_image(path)
    assert image.alpha is None
    np.testing.assert_array_equal(image.rgb, expected_rgb(samples))


def test_png16_interlaced_is_refused(tmp_path):
    path = tmp_path / 'adam7.png'
    path.write_bytes(reference_png(random_samples('uint16', 3, 4, 4), [0], interlace=1))
    with pytest.raises(ImageReadError, match='interlaced') as excinfo:
        read_image(path)
    assert_one_line_error(excinfo, 'adam7.png')


def test_png16_corrupt_crc(tmp_path):
    data = bytearray(reference_png(random_samples('uint16', 4, 8, 8), [1]))
    data[60] ^= 0xFF  # inside IDAT
    path = tmp_path / 'crc.png'
    path.write_bytes(bytes(data))
    with pytest.raises(ImageReadError) as excinfo:
        read_image(path)
    assert_one_line_error(excinfo, 'crc.png')


def test_float32_tiff_to_png_is_16bit(tmp_path):
    samples = random_samples('float32', 3)
    tifffile.imwrite(tmp_path / 'f.tif', samples, photometric='rgb')
    image = read_image(tmp_path / 'f.tif')
    back = read_image(write_image(tmp_path / 'f.png', image.rgb, image))
    assert back.dtype == np.uint16
    np.testing.assert_allclose(back.rgb, samples, atol=0.5 / 65535 + 1e-7)


def test_write_without_like_and_gray_luma(tmp_path):
    rgb = RNG.random((10, 12, 3), dtype=np.float32)
    rgb[0, 0] = [1.5, -0.2, 0.5]  # clipped
    back = read_image(write_image(tmp_path / 'plain.png', rgb))
    assert back.dtype == np.uint8 and back.mode == 'rgb' and back.alpha is None
    expected = np.rint(np.clip(rgb, 0, 1) * 255) / 255
    np.testing.assert_allclose(back.rgb, expected, atol=1e-6)

    gray_src = tmp_path / 'g.png'
    PILImage.fromarray(np.zeros((10, 12), np.uint8)).save(gray_src)
    like = read_image(gray_src)
    written = write_image(tmp_path / 'g_out.png', rgb, like)
    with PILImage.open(written) as im:
        assert im.mode == 'L'
        luma = np.clip(rgb, 0, 1).astype(np.float64) @ [0.299, 0.587, 0.114]
        np.testing.assert_array_equal(np.asarray(im), np.rint(luma * 255).astype(np.uint8))


# --------------------------------------------------------------------------
# JPEG and EXIF orientation


def test_jpeg_orientation_exif_icc(tmp_path):
    icc = srgb_profile()
    samples = random_samples('uint8', 3, 24, 40)
    src = tmp_path / 'photo.jpg'
    PILImage.fromarray(samples).save(src, quality=95, exif=make_exif(orientation=6), icc_profile=icc)
    with PILImage.open(src) as im:
        upright = np.asarray(ImageOps.exif_transpose(im))
    image = read_image(src)
    assert image.format == 'jpeg' and image.rgb.shape == (40, 24, 3)
    np.testing.assert_array_equal(image.rgb, upright.astype(np.float32) / 255)
    exif = PILImage.Exif()
    exif.load(image.exif)
    assert exif[274] == 1 and exif[271] == 'TestCam'
    assert image.icc == icc

    dst = write_image(tmp_path / 'out.jpg', image.rgb, image, jpeg_quality=98)
    with PILImage.open(dst) as im:
        assert im.info['exif'] == image.exif
        assert im.info['icc_profile'] == icc
        assert im.getexif()[274] == 1
    back = read_image(dst)
    assert back.rgb.shape == (40, 24, 3)
    assert np.abs(back.rgb - image.rgb).mean() < 0.03  # lossy, but the same picture


@pytest.mark.parametrize('orientation', range(1, 9))
def test_orientation_matches_pillow(tmp_path, orientation):
    samples = random_samples('uint8', 4, 6, 9)
    path = tmp_path / 'o.png'
    PILImage.fromarray(samples).save(path, exif=make_exif(orientation=orientation))
    with PILImage.open(path) as im:
        upright = np.asarray(ImageOps.exif_transpose(im))
    image = read_image(path)
    np.testing.assert_array_equal(image.rgb, upright[:, :, :3].astype(np.float32) / 255)
    np.testing.assert_array_equal(image.alpha, upright[:, :, 3])
    written = write_image(tmp_path / 'o_out.png', image.rgb, image)
    with PILImage.open(written) as im:
        assert im.getexif()[274] == 1
        np.testing.assert_array_equal(np.asarray(im), upright)


def test_jpeg_cannot_hold_alpha(tmp_path):
    src = tmp_path / 'a.png'
    PILImage.fromarray(random_samples('uint8', 4, 8, 8)).save(src)
    image = read_image(src)
    with pytest.raises(ImageWriteError, match='alpha') as excinfo:
        write_image(tmp_path / 'a.jpg', image.rgb, image)
    assert_one_line_error(excinfo, 'a.jpg')
    assert not (tmp_path / 'a.jpg').exists()


# --------------------------------------------------------------------------
# Unreadable files


def test_text_file_named_png(tmp_path):
    path = tmp_path / 'broken.png'
    path.write_text('this is not an image\nsecond line\n')
    with pytest.raises(ImageReadError) as excinfo:
        read_image(path)
    text = assert_one_line_error(excinfo, 'broken.png')
    assert 'not a valid image file' in text
    assert isinstance(excinfo.value, ValueError)


def test_zero_byte_file(tmp_path):
    path = tmp_path / 'empty.tif'
    path.touch()
    with pytest.raises(ImageReadError, match='empty') as excinfo:
        read_image(path)
    assert_one_line_error(excinfo, 'empty.tif')


def test_missing_file(tmp_path):
    with pytest.raises(ImageReadError) as excinfo:
        read_image(tmp_path / 'nothere.png')
    assert_one_line_error(excinfo, 'nothere.png')


@pytest.mark.parametrize('name', ['cut.png', 'cut.jpg'])
def test_truncated_png_and_jpeg(tmp_path, name):
    path = tmp_path / name
    PILImage.fromarray(random_samples('uint8', 3, 64, 64)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(ImageReadError) as excinfo:
        read_image(path)
    assert_one_line_error(excinfo, name)


# --------------------------------------------------------------------------
# Atomic writes


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith('.tmp'))


def failing_writer(exception):
    def write(fh, *args, **kwargs):
        fh.write(b'\x89PNG partial data' * 100)
        raise exception
    return write


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(tio.png, 'write_png', failing_writer(OSError(errno.ENOSPC, 'No space left on device')))
    target = tmp_path / 'out.png'
    with pytest.raises(ImageWriteError) as excinfo:
        write_image(target, np.zeros((4, 4, 3), np.float32))
    text = assert_one_line_error(excinfo, 'out.png')
    assert 'disk full' in text
    assert not target.exists()
    assert leftovers(tmp_path) == []


def test_failed_write_keeps_existing_file(tmp_path, monkeypatch):
    target = tmp_path / 'out.png'
    target.write_bytes(b'previous result')
    monkeypatch.setattr(tio.png, 'write_png', failing_writer(RuntimeError('encoder broke')))
    with pytest.raises(ImageWriteError, match='encoder broke'):
        write_image(target, np.zeros((4, 4, 3), np.float32))
    assert target.read_bytes() == b'previous result'
    assert leftovers(tmp_path) == []


def test_keyboard_interrupt_cleans_up(tmp_path, monkeypatch):
    target = tmp_path / 'out.png'
    target.write_bytes(b'previous result')
    monkeypatch.setattr(tio.png, 'write_png', failing_writer(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        write_image(target, np.zeros((4, 4, 3), np.float32))
    assert target.read_bytes() == b'previous result'
    assert leftovers(tmp_path) == []


def test_successful_write_replaces_and_uses_temp_in_same_folder(tmp_path, monkeypatch):
    target = tmp_path / 'out.tif'
    target.write_bytes(b'old')
    seen = []
    real = tio.tiff.write_tiff

    def spy(fh, *args, **kwargs):
        seen.append(os.path.basename(fh.name))
        assert os.path.dirname(fh.name) == str(tmp_path)
        return real(fh, *args, **kwargs)

    monkeypatch.setattr(tio.tiff, 'write_tiff', spy)
    write_image(target, np.full((4, 4, 3), 0.5, np.float32))
    assert seen and seen[0].startswith('.') and seen[0].endswith('.tmp')
    np.testing.assert_array_equal(tifffile.imread(target), np.full((4, 4, 3), 128, np.uint8))
    assert leftovers(tmp_path) == []
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # the old file's mode kept


def test_bad_array_raises_write_error(tmp_path):
    with pytest.raises(ImageWriteError, match=r'\(H, W, 3\)'):
        write_image(tmp_path / 'x.png', np.zeros((4, 4), np.float32))
    with pytest.raises(ImageWriteError, match='extension'):
        write_image(tmp_path / 'x.bmp', np.zeros((4, 4, 3), np.float32))


# --------------------------------------------------------------------------
# BigTIFF choice, names


def test_needs_bigtiff():
    assert not tio.needs_bigtiff(100)
    assert not tio.needs_bigtiff(2**31)
    assert tio.needs_bigtiff(2**32)
    assert tio.needs_bigtiff(20000 * 20000 * 3 * 4)  # 20000x20000 RGB float32, 4.8 GB


def test_bigtiff_chosen_automatically(tmp_path, monkeypatch):
    rgb = np.zeros((8, 8, 3), np.float32)
    with tifffile.TiffFile(write_image(tmp_path / 'small.tif', rgb)) as tif:
        assert not tif.is_bigtiff
    monkeypatch.setattr(tio.tiff, 'needs_bigtiff', lambda nbytes: True)
    with tifffile.TiffFile(write_image(tmp_path / 'big.tif', rgb)) as tif:
        assert tif.is_bigtiff
    with tifffile.TiffFile(write_image(tmp_path / 'forced.tif', rgb, bigtiff=False)) as tif:
        assert not tif.is_bigtiff


def test_output_path_and_extensions(tmp_path):
    assert tio.output_path('photos/IMG_1.JPG', 'dehaze') == tio.Path('photos/IMG_1_dehaze.JPG')
    assert tio.output_path('a/b.tif', 'derain', out_dir='out', ext='png') == tio.Path('out/b_derain.png')
    assert tio.output_path('b.tif', 'x', ext='.jpg').name == 'b_x.jpg'
    assert all(tio.is_image_file(f'x{e}') for e in ('.tif', '.TIFF', '.png', '.Jpg', '.jpeg'))
    assert not tio.is_image_file('x.bmp') and not tio.is_image_file('tif')
    assert set(tio.SUPPORTED_EXTENSIONS) == {'.tif', '.tiff', '.png', '.jpg', '.jpeg'}
