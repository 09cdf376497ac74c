"""The deployment preprocessing as one client function: the pipeline, `lio predict`, the Triton
client in the README and any user's code call this, so a server's input tensor cannot drift
from the one the model was scored on (tests/test_preprocess.py checks it bitwise).

The recipe travels with every deployable (models/<arch>.json, the ONNX metadata, engine.json,
models/triton/preprocess.json): decode RGB, resize the shorter side to `resize` (bilinear,
antialiased, torchvision's rounding), centre-crop `crop`, scale to [0, 1], normalise.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torchvision.transforms import v2

from pipeline.data.dataset import load_image
from pipeline.data.transforms import eval_preset


def _uint8(image: str | Path | np.ndarray | torch.Tensor) -> torch.Tensor:
    if isinstance(image, (str, Path)):
        return load_image(image)
    if isinstance(image, np.ndarray):  # H x W x 3 uint8, as PIL and OpenCV (after BGR -> RGB) give it
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an H x W x 3 uint8 RGB array, got {image.dtype} {image.shape}")
        return torch.from_numpy(np.array(image)).permute(2, 0, 1)  # a writable copy
    return image


def preprocess(image: str | Path | np.ndarray | torch.Tensor, spec: dict) -> np.ndarray:
    """One image (a file, an H x W x 3 uint8 RGB array or a uint8 [3, H, W] tensor) -> the model's
    float32 [1, 3, crop, crop] input. `spec` is the deployable's `preprocess` entry."""
    return eval_preset(spec)(_uint8(image))[None].numpy()


def resize_and_crop(image: str | Path | np.ndarray | torch.Tensor, spec: dict) -> np.ndarray:
    """What a client does for the fused-preprocessing model (export.fuse_preprocess): the same
    resize and crop, no scaling: uint8 [1, crop, crop, 3] (NHWC)."""
    steps = v2.Compose([v2.Resize(spec["resize"], antialias=True), v2.CenterCrop(spec["crop"])])
    return steps(_uint8(image)).permute(1, 2, 0)[None].numpy()
