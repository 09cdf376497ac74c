"""Image loading (torchvision.io) and a Dataset over the prepared manifest."""
from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler
from torchvision import tv_tensors
from torchvision.io import ImageReadMode, decode_image

from pipeline.core.errors import PipelineError
from pipeline.data.manifest import Record


class ImageError(PipelineError, ValueError):
    pass


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # PNG colour type -> samples per pixel
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def png_data_problem(data: bytes) -> str | None:
    """Why a PNG's image data cannot fill its declared size, or None. torchvision's PNG decoder
    takes the whole process down on such a file ("libpng error: Not enough image data", then an
    abort: pytorch/vision#3613), so it is checked first: the IDAT stream is inflated in bounded
    pieces and counted, never kept. Anything else wrong is left to the decoder's own error."""
    if not data.startswith(PNG_SIGNATURE):
        return None
    pos, inflate, got, expected = 8, zlib.decompressobj(), 0, None
    try:
        while pos + 8 <= len(data) and (expected is None or got < expected):
            length, kind = struct.unpack(">I4s", data[pos : pos + 8])
            body = data[pos + 8 : pos + 8 + length]
            if kind == b"IHDR" and len(body) >= 13:
                width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", body[:13])
                bits = _CHANNELS.get(colour, 4) * depth
                passes = _ADAM7 if interlace else ((0, 0, 1, 1),)
                expected = 0
                for x0, y0, dx, dy in passes:
                    cols, rows = -(-(width - x0) // dx), -(-(height - y0) // dy)
                    expected += rows * (1 + -(-cols * bits // 8)) if cols > 0 and rows > 0 else 0
            elif kind == b"IDAT" and expected is not None:
                while body and got < expected:
                    got += len(inflate.decompress(body, 1 << 20))
                    body = inflate.unconsumed_tail
            elif kind == b"IEND":
                break
            pos += 12 + length
    except zlib.error as e:
        return f"corrupt image data ({e})"
    if expected is not None and got < expected:
        return f"truncated image data: {got:,} of {expected:,} bytes"
    return None


def load_image(path: str | Path, crop_bottom: int = 0) -> Tensor:
    """uint8 [3, H, W] RGB; a clear error naming the file if it cannot be decoded."""
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError as e:
        raise ImageError(f"{path}: no such image") from e
    image = decode_bytes(raw, str(path))
    return image[:, : image.shape[1] - crop_bottom] if crop_bottom else image


def decode_bytes(raw: bytes, where: str) -> Tensor:
    """An encoded image (PNG, JPEG, ...) -> uint8 [3, H, W] RGB; ImageError naming `where` (a file, a
    request) when it is empty, truncated or not an image."""
    if not raw:
        raise ImageError(f"{where}: cannot decode image (empty: 0 bytes)")
    problem = png_data_problem(raw)
    if problem:
        raise ImageError(f"{where}: cannot decode image ({problem})")
    try:
        return decode_image(torch.frombuffer(bytearray(raw), dtype=torch.uint8), mode=ImageReadMode.RGB)
    except (RuntimeError, ValueError) as e:
        reason = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
        raise ImageError(f"{where}: cannot decode image ({reason})") from e


def load_mask(path: str | Path) -> Tensor:
    """bool [1, H, W] object mask."""
    raw = Path(path).read_bytes()
    problem = png_data_problem(raw)
    if problem:
        raise ImageError(f"{path}: cannot decode mask ({problem})")
    data = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
    return decode_image(data, mode=ImageReadMode.GRAY) > 127


class ManifestDataset(Dataset):
    """The manifest rows of one split: (transformed image, label), or with `masks=True`
    (image, true mask [H, W] bool, label), the mask transformed with the image."""

    def __init__(self, rows: list[Record], split: str, transform, masks: bool = False):
        self.rows = [r for r in rows if r.split == split]
        self.transform = transform
        self.labels = [r.label for r in self.rows]
        self.masks = masks

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        row = self.rows[i]
        if self.masks:
            image, mask = load_pair(row, self.transform)
            return image, mask, row.label
        return self.transform(load_image(row.path, row.crop_bottom)), row.label


class SeededDraws(Dataset):
    """A training set whose random augmentation of each draw is seeded by (seed, rank, epoch, slot),
    the slot being the draw's position in the epoch (`NumberedBatches` pairs each index with it): the
    batches are the same for any number of loader processes (`data.workers`), so that setting is
    about speed only, and an image drawn twice in an epoch (a topped-up group, a small class sampled
    with replacement) gets two draws. Call `set_epoch` before each epoch's iterator is made (a
    worker process copies the dataset then; persistent workers would keep the first epoch)."""

    def __init__(self, dataset: Dataset, seed: int, rank: int = 0):
        self.dataset, self.seed, self.rank, self.epoch = dataset, seed, rank, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]):
        index, slot = key
        (draw,) = np.random.SeedSequence([self.seed, self.rank, self.epoch, slot]).generate_state(1, np.uint64)
        generator = torch.default_generator  # what torchvision's random transforms draw from
        state = generator.get_state()  # the caller's, restored after
        generator.manual_seed(int(draw))
        try:
            return self.dataset[index]
        finally:
            generator.set_state(state)


class NumberedBatches(Sampler[list[tuple[int, int]]]):
    """A batch sampler's batches with each index paired with its position in the epoch: the keys
    `SeededDraws` reads."""

    def __init__(self, batch_sampler: Sampler[list[int]]):
        self.batch_sampler = batch_sampler

    def __len__(self) -> int:
        return len(self.batch_sampler)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        slot = 0
        for batch in self.batch_sampler:
            yield [(index, slot + k) for k, index in enumerate(batch)]
            slot += len(batch)


def load_pair(row: Record, transform) -> tuple[Tensor, Tensor]:
    """A manifest row's image and true mask [H, W] bool, through the same (random) transform."""
    if row.mask is None:
        raise ImageError(f"{row.path}: has no true mask in the manifest")
    mask = load_mask(row.mask)
    if row.crop_bottom:
        mask = mask[:, : mask.shape[1] - row.crop_bottom]
    image, mask = transform(load_image(row.path, row.crop_bottom), tv_tensors.Mask(mask))
    return image, mask[0].as_subclass(Tensor)


def stack_images(rows: list[Record], transform) -> Tensor:
    """The transformed images of `rows` as one float batch (for checks and reports)."""
    return torch.stack([transform(load_image(r.path, r.crop_bottom)) for r in rows])


def batches(rows: list[Record], transform, size: int = 32):
    """The transformed images of `rows`, `size` at a time: bounded memory at any dataset size."""
    for start in range(0, len(rows), size):
        yield stack_images(rows[start : start + size], transform)


def run_batches(run, images: np.ndarray, size: int = 32) -> np.ndarray:
    """A (float32 NCHW numpy -> logits numpy) run over images already decoded, `size` at a time."""
    return np.concatenate([np.asarray(run(images[i : i + size]), dtype=np.float32) for i in range(0, len(images), size)])


def logits_over(runs: dict, rows: list[Record], transform, size: int = 32) -> dict[str, np.ndarray]:
    """Each run's (float32 NCHW numpy -> logits numpy) outputs over all `rows`, decoding every image once."""
    out: dict[str, list[np.ndarray]] = {name: [] for name in runs}
    for b in batches(rows, transform, size):
        x = b.numpy()
        for name, run in runs.items():
            out[name].append(np.asarray(run(x), dtype=np.float32))
    return {name: np.concatenate(parts) for name, parts in out.items()}
