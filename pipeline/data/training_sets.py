"""The three splits a training run reads, checked before it starts: every image still on disk as
`prepare` saw it, a training image in every class, and true masks where OEL trains against them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.config.data import TransformConfig
from pipeline.core.errors import TrainingError
from pipeline.data.dataset import ManifestDataset
from pipeline.data.manifest import Record, read_manifest
from pipeline.data.transforms import ClassificationPresetEval, ClassificationPresetTrain


@dataclass(frozen=True)
class TrainingSets:
    train: ManifestDataset  # with the training augmentation (and masks, for OEL against true masks)
    val: ManifestDataset
    test: ManifestDataset
    classes: list[str]


def training_sets(prepared: Path, transforms: TransformConfig, masks: bool = False) -> TrainingSets:
    """The manifest's splits as datasets; a dataset that cannot train is refused in one line."""
    rows, classes = read_manifest(prepared)
    check_files(rows, prepared)
    train = ManifestDataset(rows, "train", ClassificationPresetTrain(transforms), masks=masks)
    unmasked = [r.path for r in train.rows if not r.mask] if masks else []
    if unmasked:
        raise TrainingError(
            f"lio.mask_source: gt trains OEL against true masks, but {len(unmasked)} of {len(train)} training "
            f"images in {prepared}/manifest.csv have none (e.g. {unmasked[0]}); use a dataset with masks "
            "(synthetic, or CUB with segmentations/) or set lio.mask_source: pseudo"
        )
    present = set(train.labels)
    empty = [c for i, c in enumerate(classes) if i not in present]
    if empty:
        raise TrainingError(f"{prepared}/manifest.csv: class(es) with no training images: {', '.join(empty[:10])}")
    evaluation = ClassificationPresetEval(transforms)
    return TrainingSets(train, ManifestDataset(rows, "val", evaluation), ManifestDataset(rows, "test", evaluation), classes)


def check_files(rows: list[Record], prepared: Path) -> None:
    """Every image of the manifest is still on disk with the size `prepare` saw: a dataset
    edited since then (data.root lies outside the repository) is refused before training."""
    for r in rows:
        path = Path(r.path)
        size = path.stat().st_size if path.exists() else None
        if size is None or (r.bytes and size != r.bytes):
            now = "is missing" if size is None else f"has {size} bytes, not {r.bytes}"
            raise TrainingError(
                f"{prepared}/manifest.csv lists {path}, which {now}: the dataset changed since `lio prepare`; "
                "run `dvc repro prepare` (or `dvc repro`)"
            )
