"""`data.augment: device`: the training images decoded once, kept on the training device, and
augmented there a whole batch at a time.

Per image, the CPU preset (pipeline/data/transforms.py) costs a decode and a resize, which are
the same every epoch, then a random rotation, crop and flip, which are not. Here the first two
run once, before training, on `data.workers` processes (`DeviceImages`); the random part runs
as one `grid_sample` over the batch on the device (`DeviceAugment`), each image with its own
draws from the same distributions as the CPU preset (tests/test_device_augment.py compares
them), nearest-neighbour like `v2.RandomRotation`, zeros outside the image like its fill.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2
from tqdm import tqdm

from pipeline.config.data import TransformConfig
from pipeline.core.errors import DatasetError
from pipeline.data.dataset import load_image, load_pair
from pipeline.data.manifest import Record
from pipeline.data.transforms import MEAN, STD


class _Resized(Dataset):
    """A split's images (and masks) decoded and resized: the deterministic part of the preset."""

    def __init__(self, rows: list[Record], resize: int, masks: bool):
        self.rows, self.masks = rows, masks
        self.resize = v2.Resize(resize, antialias=True)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor | None]:
        row = self.rows[i]
        if self.masks:
            return load_pair(row, self.resize)  # the mask resized nearest, as a tv_tensors.Mask
        return self.resize(load_image(row.path, row.crop_bottom)), None


class DeviceImages:
    """Every image of a split, decoded and resized once, as one zero-padded uint8 tensor
    [N, 3, H, W] on `device` with each image's own (h, w): the images fill the top-left corner."""

    def __init__(self, rows: list[Record], resize: int, device: torch.device, masks: bool = False, workers: int = 0):
        resized = _Resized(rows, resize, masks)
        loader = DataLoader(resized, batch_size=None, num_workers=workers)
        items = list(tqdm(loader, desc="decoding the training images once", unit="img", leave=False))
        h = max(image.shape[1] for image, _ in items)
        w = max(image.shape[2] for image, _ in items)
        need = len(items) * (3 + masks) * h * w
        if device.type == "cuda" and need > torch.cuda.mem_get_info(device)[0] // 4:
            raise DatasetError(
                f"data.augment: device keeps the {len(items)} training images on {device} ({need / 2**30:.1f} GiB "
                "padded to the largest), more than a quarter of its free memory; set data.augment: workers"
            )
        self.images = torch.zeros(len(items), 3, h, w, dtype=torch.uint8, device=device)
        self.masks = torch.zeros(len(items), h, w, dtype=torch.bool, device=device) if masks else None
        for i, (image, mask) in enumerate(items):
            self.images[i, :, : image.shape[1], : image.shape[2]] = image.to(device)
            if self.masks is not None:
                self.masks[i, : mask.shape[0], : mask.shape[1]] = mask.to(device)
        self.sizes = torch.tensor([image.shape[1:] for image, _ in items], device=device)
        self.labels = torch.tensor([r.label for r in rows], device=device)

    def __len__(self) -> int:
        return len(self.images)


class DeviceAugment(nn.Module):
    """The CPU preset's random rotation, crop and flip, then scaling to [0, 1] and normalising,
    on a uint8 batch [B, 3, H, W] whose image i fills its top-left sizes[i] = (h, w).

    Each output pixel's source is found in one affine map per image (flip, crop offset, rotation
    about the image's centre), and the whole batch is sampled with one `grid_sample`. The draws
    follow torchvision: angle ~ U(-rotation, rotation), top ~ U{0..h-crop}, left ~ U{0..w-crop},
    flip with probability 1/2; they come from torch's generator of the batch's device (seeded per
    epoch by the training loop, so a resumed run draws the same)."""

    def __init__(self, cfg: TransformConfig):
        super().__init__()
        self.crop, self.rotation, self.hflip = cfg.crop, cfg.rotation, cfg.hflip
        self.mean: Tensor
        self.std: Tensor
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1) * 255, persistent=False)

    def grid(self, sizes: Tensor, canvas: tuple[int, int]) -> Tensor:
        """The sampling grid [B, crop, crop, 2] in grid_sample's [-1, 1] coordinates of the canvas."""
        b, device, crop = len(sizes), sizes.device, self.crop
        h, w = sizes[:, 0].float(), sizes[:, 1].float()
        angle = (torch.rand(b, device=device) * 2 - 1) * math.radians(self.rotation)
        top = torch.floor(torch.rand(b, device=device) * (h - crop + 1))
        left = torch.floor(torch.rand(b, device=device) * (w - crop + 1))
        flip = torch.rand(b, device=device) < 0.5 if self.hflip else torch.zeros(b, dtype=torch.bool, device=device)
        centres = torch.arange(crop, device=device, dtype=torch.float32) + 0.5  # pixel centres of the crop
        x = torch.where(flip[:, None], crop - centres, centres)[:, None, :] + left[:, None, None]  # [B, 1, crop]
        y = centres[None, :, None] + top[:, None, None]  # [B, crop, 1]
        # inverse rotation about the image's centre: the source of each rotated pixel
        dx, dy = x - (w / 2)[:, None, None], y - (h / 2)[:, None, None]
        cos, sin = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
        src_x = cos * dx - sin * dy + (w / 2)[:, None, None]
        src_y = sin * dx + cos * dy + (h / 2)[:, None, None]
        # outside the image (rotated corners, or the canvas's padding) reads zeros, as the CPU preset's fill
        outside = (src_x < 0) | (src_x >= w[:, None, None]) | (src_y < 0) | (src_y >= h[:, None, None])
        src_x = torch.where(outside, torch.full_like(src_x, -2.0 * canvas[1]), src_x)
        return torch.stack([2 * src_x / canvas[1] - 1, 2 * src_y / canvas[0] - 1], dim=-1)

    def forward(self, images: Tensor, sizes: Tensor, masks: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """float [B, 3, crop, crop] normalised (and the masks [B, crop, crop] bool, moved alike)."""
        grid = self.grid(sizes, (images.shape[2], images.shape[3]))
        x = images.float() if masks is None else torch.cat([images.float(), masks[:, None].float()], dim=1)
        out = F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)
        normalised = (out[:, :3] - self.mean) / self.std
        return normalised, (out[:, 3] > 0.5 if masks is not None else None)


class DeviceLoader:
    """Batches of (augmented images[, masks], labels) on the device, in the sampler's order:
    what the CPU DataLoader yields, with no per-image work on the host."""

    def __init__(self, images: DeviceImages, batch_sampler, augment: DeviceAugment):
        self.data, self.batch_sampler, self.augment = images, batch_sampler, augment

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self) -> Iterator[tuple[Tensor, ...]]:
        for indices in self.batch_sampler:
            index = torch.tensor(indices, device=self.data.images.device)
            masks = self.data.masks[index] if self.data.masks is not None else None
            images, moved = self.augment(self.data.images[index], self.data.sizes[index], masks)
            yield (images, moved, self.data.labels[index]) if moved is not None else (images, self.data.labels[index])
