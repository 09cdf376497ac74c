"""The deployment preprocessing as one client function: the pipeline, `lio predict`, the Triton
client in the README and any user's code call this, so a server's input tensor cannot drift
from the one the model was scored on (tests/test_preprocess.py checks it bitwise).

The recipe travels with every deployable (models/<arch>.json, the ONNX metadata, engine.json,
models/triton/preprocess.json): decode RGB, resize the shorter side to `resize` (bilinear,
antialiased, torchvision's rounding), centre-crop `crop`, scale to [0, 1], normalise.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

from pipeline.artifacts.deployable import Preprocess
from pipeline.data.dataset import ImageError, load_image
from pipeline.data.transforms import eval_preset

#: The most pixels an image file may claim before it is decoded: PIL's own default
#: (Image.MAX_IMAGE_PIXELS, about 89 M: 0.25 GiB as 24-bit RGB). A file's header states its size,
#: so a few hundred KB of PNG can claim 30000 x 30000 and cost GBs once decoded and converted.
MAX_PIXELS = 89_478_485


def check_pixels(path: str | Path, max_pixels: int = MAX_PIXELS) -> None:
    """Refuse a file whose header claims more than `max_pixels`, reading only the header.
    Files PIL cannot identify are left to the decoder (and its one-line error)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as im:
                width, height = im.size
            claimed, size = width * height, f"{width} x {height} = {width * height:,}"
        except Image.DecompressionBombError as e:  # PIL's own limit (twice its default) stops open() first
            found = re.search(r"\((\d+) pixels\)", str(e))
            claimed = int(found[1]) if found else max_pixels + 1
            size = f"{claimed:,}"
        except (OSError, ValueError, SyntaxError):  # not an image PIL knows: torchvision's decoder says why
            return
    if claimed > max_pixels:
        raise ImageError(
            f"{path}: claims {size} pixels, over the limit of {max_pixels:,}; refused before decoding "
            "(raise it with --max-pixels, or resize the image)"
        )


def _uint8(image: str | Path | np.ndarray | torch.Tensor, max_pixels: int = MAX_PIXELS) -> torch.Tensor:
    if isinstance(image, (str, Path)):
        check_pixels(image, max_pixels)
        return load_image(image)
    if isinstance(image, np.ndarray):  # H x W x 3 uint8, as PIL and OpenCV (after BGR -> RGB) give it
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an H x W x 3 uint8 RGB array, got {image.dtype} {image.shape}")
        return torch.from_numpy(np.array(image)).permute(2, 0, 1)  # a writable copy
    return image


def preprocess(
    image: str | Path | np.ndarray | torch.Tensor, spec: Preprocess | dict, max_pixels: int = MAX_PIXELS
) -> np.ndarray:
    """One image (a file, an H x W x 3 uint8 RGB array or a uint8 [3, H, W] tensor) -> the model's
    float32 [1, 3, crop, crop] input. `spec` is the deployable's `preprocess` entry. A file that
    claims more than `max_pixels` is refused (ImageError) before it is decoded."""
    return eval_preset(spec)(_uint8(image, max_pixels))[None].numpy()


def resize_and_crop(image: str | Path | np.ndarray | torch.Tensor, spec: Preprocess | dict) -> np.ndarray:
    """What a client does for the fused-preprocessing model (export.fuse_preprocess): the same
    resize and crop, no scaling: uint8 [1, crop, crop, 3] (NHWC)."""
    spec = Preprocess.of(spec)
    steps = v2.Compose([v2.Resize(spec.resize, antialias=True), v2.CenterCrop(spec.crop)])
    return steps(_uint8(image)).permute(1, 2, 0)[None].numpy()
