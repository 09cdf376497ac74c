"""The deployment preprocessing as one client function: the pipeline, `lio predict`, the Triton
client in the README and any user's code call this, so a server's input tensor cannot drift
from the one the model was scored on (tests/test_preprocess.py checks it bitwise).

The recipe travels with every deployable (models/<arch>.json, the ONNX metadata, engine.json,
models/triton/preprocess.json): decode RGB, resize the shorter side to `resize` (bilinear,
antialiased, torchvision's rounding), centre-crop `crop`, scale to [0, 1], normalise.
"""

from __future__ import annotations

import io
import re
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

from pipeline.artifacts.deployable import Preprocess
from pipeline.data.dataset import ImageError, decode_bytes, load_image
from pipeline.data.transforms import eval_preset

#: The most pixels an image file may claim before it is decoded: PIL's own default
#: (Image.MAX_IMAGE_PIXELS, about 89 M: 0.25 GiB as 24-bit RGB). A file's header states its size,
#: so a few hundred KB of PNG can claim 30000 x 30000 and cost GBs once decoded and converted.
MAX_PIXELS = 89_478_485

#: what `preprocess` takes: a file, its encoded bytes, an H x W x 3 uint8 RGB array, a uint8 [3, H, W] tensor
ImageInput = str | Path | bytes | np.ndarray | torch.Tensor


def check_pixels(image: str | Path | bytes, max_pixels: int = MAX_PIXELS, where: str | None = None) -> None:
    """Refuse an image (a file, or its encoded bytes) whose header claims more than `max_pixels`, reading
    only the header. What PIL cannot identify is left to the decoder (and its one-line error)."""
    where = where or str(image)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(image) if isinstance(image, bytes) else image) as im:
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
            f"{where}: claims {size} pixels, over the limit of {max_pixels:,}; refused before decoding "
            "(raise it with --max-pixels, or resize the image)"
        )


def _uint8(image: ImageInput, max_pixels: int = MAX_PIXELS, where: str = "image") -> torch.Tensor:
    if isinstance(image, (str, Path)):
        check_pixels(image, max_pixels)
        return load_image(image)
    if isinstance(image, bytes):  # an encoded file's bytes, as a server receives them
        check_pixels(image, max_pixels, where)
        return decode_bytes(image, where)
    if isinstance(image, np.ndarray):  # H x W x 3 uint8, as PIL and OpenCV (after BGR -> RGB) give it
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an H x W x 3 uint8 RGB array, got {image.dtype} {image.shape}")
        return torch.from_numpy(np.array(image)).permute(2, 0, 1)  # a writable copy
    return image


def preprocess(
    image: ImageInput, spec: Preprocess | dict, max_pixels: int = MAX_PIXELS, where: str = "image"
) -> np.ndarray:
    """One image (a file, its encoded bytes, an H x W x 3 uint8 RGB array or a uint8 [3, H, W] tensor) ->
    the model's float32 [1, 3, crop, crop] input. `spec` is the deployable's `preprocess` entry. A file
    or bytes that claim more than `max_pixels` are refused (ImageError, naming the file or `where`)
    before they are decoded."""
    return eval_preset(spec)(_uint8(image, max_pixels, where))[None].numpy()


def resize_and_crop(image: ImageInput, spec: Preprocess | dict) -> np.ndarray:
    """What a client does for the fused-preprocessing model (export.fuse_preprocess): the same
    resize and crop, no scaling: uint8 [1, crop, crop, 3] (NHWC)."""
    spec = Preprocess.of(spec)
    steps = v2.Compose([v2.Resize(spec.resize, antialias=True), v2.CenterCrop(spec.crop)])
    return steps(_uint8(image)).permute(1, 2, 0)[None].numpy()
