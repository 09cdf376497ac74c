"""The client preprocessing (pipeline.deploy.preprocess) against the pipeline's own input tensors, bitwise."""

import numpy as np
from PIL import Image

from pipeline.data.dataset import stack_images
from pipeline.data.manifest import read_manifest
from pipeline.data.transforms import eval_preset, preprocessing
from pipeline.deploy.preprocess import preprocess, resize_and_crop
from tests.conftest import tiny_config


def test_client_preprocessing_is_the_pipelines_bit_for_bit(tiny_prepared):
    rows, _ = read_manifest(tiny_prepared)
    test = [r for r in rows if r.split == "test"]
    spec = preprocessing(tiny_config().data.transforms)
    pipeline = stack_images(test, eval_preset(spec)).numpy()  # what export and report score
    from_files = np.concatenate([preprocess(r.path, spec) for r in test])
    from_arrays = np.concatenate([preprocess(np.asarray(Image.open(r.path).convert("RGB")), spec) for r in test])
    assert from_files.dtype == np.float32 and from_files.shape == (len(test), 3, spec.crop, spec.crop)
    assert np.array_equal(from_files, pipeline) and np.array_equal(from_arrays, pipeline)


def test_resize_and_crop_is_the_uint8_start_of_the_same_recipe(tiny_prepared):
    rows, _ = read_manifest(tiny_prepared)
    spec = preprocessing(tiny_config().data.transforms)
    row = rows[0]
    u8 = resize_and_crop(row.path, spec)
    assert u8.dtype == np.uint8 and u8.shape == (1, spec.crop, spec.crop, 3)
    x = (u8.astype(np.float32) / 255 - np.array(spec.mean, np.float32)) / np.array(spec.std, np.float32)
    np.testing.assert_allclose(x.transpose(0, 3, 1, 2), preprocess(row.path, spec), atol=1e-6)


def png_claiming(tmp_path, width, height, data=100_000):
    """A PNG of a few hundred bytes whose header claims width x height greyscale pixels (its data is
    one compressed run of zeros, cut short): what a hostile upload looks like."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    path = tmp_path / f"claims_{width}x{height}.png"
    body = zlib.compress(b"\0" * data)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


def test_an_image_claiming_too_many_pixels_is_refused_before_decoding(tmp_path, monkeypatch):
    import pytest

    import pipeline.deploy.preprocess as pre
    from pipeline.data.dataset import ImageError

    spec = {"resize": 36, "crop": 32, "mean": [0.5] * 3, "std": [0.5] * 3}
    bomb = png_claiming(tmp_path, 30_000, 30_000)
    assert bomb.stat().st_size < 2_000
    monkeypatch.setattr(pre, "load_image", lambda *a: pytest.fail("decoded an image it should have refused"))
    with pytest.raises(ImageError, match=r"claims 900,000,000 pixels, over the limit of 89,478,485; refused"):
        preprocess(bomb, spec)  # past PIL's own bomb limit: the count comes from its error
    with pytest.raises(ImageError, match=r"claims 10000 x 10000 = 100,000,000 pixels, over the limit"):
        preprocess(png_claiming(tmp_path, 10_000, 10_000), spec)
    with pytest.raises(ImageError, match="over the limit of 100"):  # a configurable limit
        preprocess(png_claiming(tmp_path, 20, 10), spec, max_pixels=100)
    monkeypatch.undo()
    # under the limit the file reaches the decoder, which gives its own one-line error for the cut data
    with pytest.raises(ImageError, match="cannot decode image"):
        preprocess(png_claiming(tmp_path, 64, 64, data=100), spec)
    real = tmp_path / "real.png"
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(real)
    assert preprocess(real, spec, max_pixels=1600).shape == (1, 3, 32, 32)  # exactly at the limit
