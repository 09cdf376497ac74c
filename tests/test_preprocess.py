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
    test = [r for r in rows if r["split"] == "test"]
    spec = preprocessing(tiny_config().data.transforms)
    pipeline = stack_images(test, eval_preset(spec)).numpy()  # what export and report score
    from_files = np.concatenate([preprocess(r["path"], spec) for r in test])
    from_arrays = np.concatenate([preprocess(np.asarray(Image.open(r["path"]).convert("RGB")), spec) for r in test])
    assert from_files.dtype == np.float32 and from_files.shape == (len(test), 3, spec["crop"], spec["crop"])
    assert np.array_equal(from_files, pipeline) and np.array_equal(from_arrays, pipeline)


def test_resize_and_crop_is_the_uint8_start_of_the_same_recipe(tiny_prepared):
    rows, _ = read_manifest(tiny_prepared)
    spec = preprocessing(tiny_config().data.transforms)
    row = rows[0]
    u8 = resize_and_crop(row["path"], spec)
    assert u8.dtype == np.uint8 and u8.shape == (1, spec["crop"], spec["crop"], 3)
    x = (u8.astype(np.float32) / 255 - np.array(spec["mean"], np.float32)) / np.array(spec["std"], np.float32)
    np.testing.assert_allclose(x.transpose(0, 3, 1, 2), preprocess(row["path"], spec), atol=1e-6)
