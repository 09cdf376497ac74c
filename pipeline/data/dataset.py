"""Image loading (torchvision.io) and a Dataset over the prepared manifest."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.io import ImageReadMode, decode_image

from pipeline.errors import PipelineError


class ImageError(PipelineError, ValueError):
    pass


def load_image(path: str | Path, crop_bottom: int = 0) -> Tensor:
    """uint8 [3, H, W] RGB; a clear error naming the file if it cannot be decoded."""
    try:
        data = torch.frombuffer(bytearray(Path(path).read_bytes()), dtype=torch.uint8)
        image = decode_image(data, mode=ImageReadMode.RGB)
    except FileNotFoundError as e:
        raise ImageError(f"{path}: no such image") from e
    except (RuntimeError, ValueError) as e:
        reason = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
        raise ImageError(f"{path}: cannot decode image ({reason})") from e
    return image[:, : image.shape[1] - crop_bottom] if crop_bottom else image


def load_mask(path: str | Path) -> Tensor:
    """bool [1, H, W] object mask."""
    data = torch.frombuffer(bytearray(Path(path).read_bytes()), dtype=torch.uint8)
    return decode_image(data, mode=ImageReadMode.GRAY) > 127


class ManifestDataset(Dataset):
    """The manifest rows of one split: (transformed image, label), or with `masks=True`
    (image, true mask [H, W] bool, label), the mask transformed with the image."""

    def __init__(self, rows: list[dict], split: str, transform, masks: bool = False):
        self.rows = [r for r in rows if r["split"] == split]
        self.transform = transform
        self.labels = [r["label"] for r in self.rows]
        self.masks = masks

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        row = self.rows[i]
        if self.masks:
            image, mask = load_pair(row, self.transform)
            return image, mask, row["label"]
        return self.transform(load_image(row["path"], row["crop_bottom"])), row["label"]


def load_pair(row: dict, transform) -> tuple[Tensor, Tensor]:
    """A manifest row's image and true mask [H, W] bool, through the same (random) transform."""
    mask = load_mask(row["mask"])
    if row["crop_bottom"]:
        mask = mask[:, : mask.shape[1] - row["crop_bottom"]]
    image, mask = transform(load_image(row["path"], row["crop_bottom"]), tv_tensors.Mask(mask))
    return image, mask[0].as_subclass(Tensor)


def stack_images(rows: list[dict], transform) -> Tensor:
    """The transformed images of `rows` as one float batch (for checks and reports)."""
    return torch.stack([transform(load_image(r["path"], r["crop_bottom"])) for r in rows])


def batches(rows: list[dict], transform, size: int = 32):
    """The transformed images of `rows`, `size` at a time: bounded memory at any dataset size."""
    for start in range(0, len(rows), size):
        yield stack_images(rows[start : start + size], transform)


def logits_over(runs: dict, rows: list[dict], transform, size: int = 32) -> dict[str, np.ndarray]:
    """Each run's (float32 NCHW numpy -> logits numpy) outputs over all `rows`, decoding every image once."""
    out: dict[str, list[np.ndarray]] = {name: [] for name in runs}
    for b in batches(rows, transform, size):
        x = b.numpy()
        for name, run in runs.items():
            out[name].append(np.asarray(run(x), dtype=np.float32))
    return {name: np.concatenate(parts) for name, parts in out.items()}
