"""Readers for the official dataset layouts; each returns (records, class names).

A record is one image: absolute `path`, 0-based `label`, `split` (train or test), and
where the format has them a `bbox` (x, y, w, h) and a `mask` path; `crop_bottom` pixels
are cut off when the image is loaded (FGVC-Aircraft's copyright banner).
"""
from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

from pipeline.core.errors import DatasetError
from pipeline.data.manifest import Record

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def _box(values) -> tuple[float, float, float, float]:
    x, y, w, h = (float(v) for v in values)
    return x, y, w, h


def _need(path: Path, fmt: str) -> Path:
    if not path.exists():
        raise DatasetError(f"{fmt}: expected {path} (is data.root the dataset's top folder?)")
    return path


def _table(path: Path, fmt: str) -> dict[str, list[str]]:
    """Lines 'id value...' as {id: [values]}, refusing duplicated ids."""
    rows: dict[str, list[str]] = {}
    for n, line in enumerate(_need(path, fmt).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        key, *values = line.split()
        if key in rows:
            raise DatasetError(f"{fmt}: {path}:{n}: duplicated image id {key}")
        rows[key] = values
    return rows


#: train_test_split.txt: 1 train, 0 test; (the embedded synthetic set only) 2 a held-out image for the
#: precision gates and 3 one that chooses the INT8 settings before them, which nothing else sees
CUB_SPLITS = {"1": "train", "0": "test", "2": "gate", "3": "select"}


def read_cub(root: Path) -> tuple[list[Record], list[str]]:
    fmt = "cub (CUB-200-2011)"
    images = _table(root / "images.txt", fmt)
    labels = _table(root / "image_class_labels.txt", fmt)
    splits = _table(root / "train_test_split.txt", fmt)
    classes = _table(root / "classes.txt", fmt)
    boxes = _table(root / "bounding_boxes.txt", fmt) if (root / "bounding_boxes.txt").exists() else {}
    names = [classes[k][0] for k in sorted(classes, key=int)]
    records = []
    for key, (rel,) in images.items():
        for table, fname in [(labels, "image_class_labels.txt"), (splits, "train_test_split.txt")]:
            if key not in table:
                raise DatasetError(f"{fmt}: image id {key} is missing from {root / fname}")
        mask = root / "segmentations" / Path(rel).with_suffix(".png")
        records.append(
            Record(
                path=root / "images" / rel,
                label=int(labels[key][0]) - 1,
                split=CUB_SPLITS.get(splits[key][0], "test"),
                bbox=_box(boxes[key]) if key in boxes else None,
                mask=mask if mask.exists() else None,
            )
        )
    return records, names


def _mat_struct(path: Path, fmt: str, key: str):
    from scipy.io import loadmat

    try:
        data = loadmat(str(_need(path, fmt)), squeeze_me=True, struct_as_record=False)
    except Exception as e:  # scipy raises several types for bad files
        raise DatasetError(f"{fmt}: cannot read {path}: {e}") from e
    if key not in data:
        raise DatasetError(f"{fmt}: {path} has no field {key!r}")
    value = data[key]
    return list(value) if hasattr(value, "__len__") and not isinstance(value, str) else [value]


def _find(root: Path, name: str, fmt: str) -> Path:
    for folder in (root, root / "devkit"):
        if (folder / name).exists():
            return folder / name
    raise DatasetError(f"{fmt}: expected {root / name} or {root / 'devkit' / name}")


def read_cars(root: Path) -> tuple[list[Record], list[str]]:
    """Stanford Cars: the devkit layout, or the single cars_annos.mat + car_ims/ variant."""
    fmt = "cars (Stanford Cars)"
    if (root / "cars_annos.mat").exists():
        names = [str(n) for n in _mat_struct(root / "cars_annos.mat", fmt, "class_names")]
        records = [
            Record(
                path=root / str(a.relative_im_path),
                label=int(a.__dict__["class"]) - 1,
                split="test" if int(a.test) else "train",
                bbox=(float(a.bbox_x1), float(a.bbox_y1), float(a.bbox_x2 - a.bbox_x1), float(a.bbox_y2 - a.bbox_y1)),
            )
            for a in _mat_struct(root / "cars_annos.mat", fmt, "annotations")
        ]
        return records, names
    names = [str(n) for n in _mat_struct(_find(root, "cars_meta.mat", fmt), fmt, "class_names")]
    records = []
    for split, mat, folder in [
        ("train", "cars_train_annos.mat", "cars_train"),
        ("test", "cars_test_annos_withlabels.mat", "cars_test"),
    ]:
        for a in _mat_struct(_find(root, mat, fmt), fmt, "annotations"):
            records.append(
                Record(
                    path=root / folder / str(a.fname),
                    label=int(a.__dict__["class"]) - 1,
                    split=split,
                    bbox=(float(a.bbox_x1), float(a.bbox_y1), float(a.bbox_x2 - a.bbox_x1), float(a.bbox_y2 - a.bbox_y1)),
                )
            )
    return records, names


AIRCRAFT_BANNER = 20  # pixels of copyright banner at the bottom of every image


def read_aircraft(root: Path) -> tuple[list[Record], list[str]]:
    """FGVC-Aircraft at the variant level: trainval is the training split."""
    fmt = "aircraft (FGVC-Aircraft)"
    data = root / "data" if (root / "data").exists() else root
    names = [line.strip() for line in _need(data / "variants.txt", fmt).read_text().splitlines() if line.strip()]
    index = {n: i for i, n in enumerate(names)}
    records = []
    for split, fname in [("train", "images_variant_trainval.txt"), ("test", "images_variant_test.txt")]:
        for n, line in enumerate(_need(data / fname, fmt).read_text().splitlines(), start=1):
            if not line.strip():
                continue
            image_id, variant = line.strip().split(" ", 1)
            if variant not in index:
                raise DatasetError(f"{fmt}: {data / fname}:{n}: variant {variant!r} is not in variants.txt")
            records.append(
                Record(data / "images" / f"{image_id}.jpg", index[variant], split, crop_bottom=AIRCRAFT_BANNER)
            )
    return records, names


def read_imagefolder(root: Path) -> tuple[list[Record], list[str]]:
    """`train/<class>/*` and `test/<class>/*`; classes are the sorted train folder names."""
    fmt = "imagefolder"
    train, test = _need(root / "train", fmt), _need(root / "test", fmt)
    names = sorted(p.name for p in train.iterdir() if p.is_dir())
    if not names:
        raise DatasetError(f"{fmt}: {train} has no class folders")
    index = {n: i for i, n in enumerate(names)}
    records, ignored = [], []
    for split, folder in [("train", train), ("test", test)]:
        for class_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
            if class_dir.name not in index:
                raise DatasetError(f"{fmt}: {class_dir} is a class that {train} does not have")
            for path in sorted(class_dir.iterdir()):
                if path.suffix.lower() in IMAGE_SUFFIXES:
                    records.append(Record(path, index[class_dir.name], split))
                elif path.is_file():
                    ignored.append(path)
    if ignored:
        kinds = sorted({p.suffix.lower() or "(no suffix)" for p in ignored})
        warnings.warn(
            f"{fmt}: ignored {len(ignored)} file(s) that are not {'/'.join(sorted(IMAGE_SUFFIXES))} images "
            f"({', '.join(kinds)}): {', '.join(map(str, ignored[:20]))}{' ...' if len(ignored) > 20 else ''}",
            stacklevel=2,
        )
    return records, names


READERS: dict[str, Callable[[Path], tuple[list[Record], list[str]]]] = {
    "synthetic": read_cub,
    "cub": read_cub,
    "cars": read_cars,
    "aircraft": read_aircraft,
    "imagefolder": read_imagefolder,
}


def read_dataset(fmt: str, root: Path) -> tuple[list[Record], list[str]]:
    if not Path(root).is_dir():
        raise DatasetError(f"{fmt}: data.root {root} is not a folder")
    records, names = READERS[fmt](Path(root))
    validate(records, names, fmt)
    return records, names


def validate(records: list[Record], names: list[str], fmt: str) -> None:
    bad = [r for r in records if not 0 <= r.label < len(names)]
    if bad:
        raise DatasetError(
            f"{fmt}: {len(bad)} image(s) have labels outside 1..{len(names)}, e.g. {bad[0].path} (label {bad[0].label + 1})"
        )
    seen: set[Path] = set()
    for r in records:
        if r.path in seen:
            raise DatasetError(f"{fmt}: image {r.path} is listed twice")
        seen.add(r.path)
    counts = [0] * len(names)
    for r in records:
        if r.split == "train":
            counts[r.label] += 1
    empty = [names[i] for i, n in enumerate(counts) if n == 0]
    if empty:
        raise DatasetError(f"{fmt}: class(es) with no training images: {', '.join(empty[:10])}")
