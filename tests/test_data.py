"""The synthetic generator, the readers on fixtures in the official layouts, and bad input."""

import csv
import hashlib
import json

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.config.data import PrepareParams, SyntheticConfig
from pipeline.core.errors import DatasetError
from pipeline.data import synthetic
from pipeline.data.dataset import ImageError, ManifestDataset, NumberedBatches, SeededDraws, load_image
from pipeline.data.manifest import read_manifest
from pipeline.data.prepare import BAD_IMAGES, prepare
from pipeline.data.readers import AIRCRAFT_BANNER, read_dataset
from pipeline.data.transforms import ClassificationPresetEval, ClassificationPresetTrain
from tests.conftest import tiny_config


def tree_digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode() + p.read_bytes())
    return h.hexdigest()


# ------------------------------------------------------------ generator
def test_generator_is_deterministic_for_any_worker_count(tmp_path):
    cfg = SyntheticConfig(classes=3, images_per_class=4, image_size=32, extra_test_per_class=2)
    synthetic.generate(tmp_path / "a", cfg, seed=7, workers=1)
    synthetic.generate(tmp_path / "b", cfg, seed=7, workers=3)  # drawn on 3 processes, 8*3 plans in flight
    synthetic.generate(tmp_path / "c", cfg, seed=8)
    assert tree_digest(tmp_path / "a") == tree_digest(tmp_path / "b") != tree_digest(tmp_path / "c")
    assert len(list((tmp_path / "b" / "images").rglob("*.png"))) == 3 * (4 + 2)


def test_no_class_is_a_rotation_or_mirror_of_another():
    layouts = synthetic.arrangements(8, np.random.default_rng(0))
    sigs = []
    for pts in layouts:
        d = np.linalg.norm(pts[:, None] - pts[None], axis=-1)
        sigs.append(d / d.mean())
    for i in range(8):
        for j in range(i):
            assert np.abs(sigs[i] - sigs[j]).max() >= synthetic.MIN_SHAPE_DIFF
    # a rotated, mirrored, scaled copy has the same signature, so it would be refused
    rot = np.array([[0.6, -0.8], [0.8, 0.6]]) @ np.diag([1, -1])
    copy = layouts[0] @ rot.T * 1.7
    d = np.linalg.norm(copy[:, None] - copy[None], axis=-1)
    assert np.allclose(d / d.mean(), sigs[0])


def test_masks_cover_the_objects(tmp_path):
    synthetic.generate(tmp_path, SyntheticConfig(classes=2, images_per_class=5, image_size=64), seed=0)
    colours = np.array([rgb for _, rgb in synthetic.PARTS], dtype=float)
    for rel in (tmp_path / "images.txt").read_text().split()[1::2]:
        image = np.asarray(Image.open(tmp_path / "images" / rel), dtype=float)
        mask = np.asarray(Image.open(tmp_path / "segmentations" / rel)) > 127
        assert 0.03 < mask.mean() < 0.4
        # inside the mask the pixels are part colours; outside mostly background
        dist = np.abs(image[..., None, :] - colours).sum(-1).min(-1)
        assert np.median(dist[mask]) < 60 < np.median(dist[~mask])


def test_colour_histograms_alone_stay_near_chance(tmp_path):
    cfg = SyntheticConfig(classes=6, images_per_class=60, image_size=64)
    synthetic.generate(tmp_path, cfg, seed=0)
    feats, labels, train = [], [], []
    split = dict(line.split() for line in (tmp_path / "train_test_split.txt").read_text().splitlines())
    lab = dict(line.split() for line in (tmp_path / "image_class_labels.txt").read_text().splitlines())
    for line in (tmp_path / "images.txt").read_text().splitlines():
        key, rel = line.split()
        image = np.asarray(Image.open(tmp_path / "images" / rel)) // 32  # 8 levels per channel
        hist = np.concatenate([np.bincount(image[..., c].ravel(), minlength=8) for c in range(3)])
        feats.append(hist / hist.sum())
        labels.append(int(lab[key]))
        train.append(split[key] == "1")
    x, y, t = torch.tensor(np.array(feats)).float(), torch.tensor(labels), torch.tensor(train)
    x = (x - x[t].mean(0)) / (x[t].std(0) + 1e-6)
    # logistic regression on the histograms
    w = torch.zeros(x.shape[1], 7, requires_grad=True)
    opt = torch.optim.Adam([w], lr=0.05)
    for _ in range(300):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(x[t] @ w, y[t]).backward()
        opt.step()
    acc = ((x[~t] @ w).argmax(1) == y[~t]).float().mean().item()
    assert acc < 1 / 6 + 0.12, f"colour histograms reach {acc:.2f}: colour must not give the class away"


# ------------------------------------------------------------ harder on purpose: the generator's knobs
def _part_mask(parts, big):
    """The parts of a plan, drawn on their own, at the plan's 4x resolution."""
    from PIL import ImageDraw

    mask = Image.new("L", (big, big), 0)
    for shape, x, y, size, angle, _ in parts:
        synthetic._draw_part(ImageDraw.Draw(mask), shape, x, y, size, angle, 255)
    return np.asarray(mask) > 0


def test_distractors_never_touch_the_object_and_leave_its_mask_alone(tmp_path):
    layout = synthetic.arrangements(1, np.random.default_rng(0))[0]
    big, placed = 96 * synthetic.SUPERSAMPLE, 0
    for seed in range(40):
        p = synthetic.plan(layout, 96, np.random.default_rng(seed), synthetic.Pose(distractors=6))
        obj, extra = _part_mask(p.parts, big), [_part_mask([d], big) for d in p.distractors]
        assert not any((obj & d).any() for d in extra)  # never overlap the object mask
        assert not any((a & b).any() for i, a in enumerate(extra) for b in extra[:i])  # nor each other
        assert all(d.any() for d in extra)  # inside the image
        placed += len(p.distractors)
        sizes = {size for _, _, _, size, _, _ in p.parts + p.distractors}
        assert len(sizes) == 1  # as large as the object's own parts: only the arrangement tells them apart
    assert placed >= 40 * 4  # most places are found
    cfg = SyntheticConfig(classes=2, images_per_class=4, image_size=48)
    synthetic.generate(tmp_path / "a", cfg, seed=3, workers=1)
    synthetic.generate(tmp_path / "b", SyntheticConfig(**{**vars(cfg), "distractors": 4}), seed=3, workers=1)
    # the first image's object is planned before its distractors: its mask stays, its picture changes
    first = (tmp_path / "a" / "images.txt").read_text().split()[1]
    assert (tmp_path / "a/segmentations" / first).read_bytes() == (tmp_path / "b/segmentations" / first).read_bytes()
    assert (tmp_path / "a/images" / first).read_bytes() != (tmp_path / "b/images" / first).read_bytes()


def _similar_up_to_scale_and_shift(a, b):
    """Whether b = s * a + t for some scale s and shift t (least squares, residual ~ 0)."""
    a0, b0 = a - a.mean(0), b - b.mean(0)
    s = (a0 * b0).sum() / (a0 * a0).sum()
    return np.abs(b0 - s * a0).max() < 1e-9


def test_siblings_differ_from_their_family_in_one_part_and_keep_min_shape_diff():
    siblings, diff = 3, 0.2
    layouts = synthetic.arrangements(12, np.random.default_rng(5), min_shape_diff=diff, siblings=siblings)
    sigs = [synthetic._signature(p) for p in layouts]
    assert all(np.abs(sigs[i] - sigs[j]).max() >= diff for i in range(12) for j in range(i))
    for k, child in enumerate(layouts):
        parent = layouts[k - k % (siblings + 1)]  # the drawn arrangement heading the family
        if child is parent:
            continue
        others = [[i for i in range(len(synthetic.PARTS)) if i != moved] for moved in range(len(synthetic.PARTS))]
        assert any(_similar_up_to_scale_and_shift(parent[keep], child[keep]) for keep in others)
    # the families are closer than random draws: fine-grained
    family = np.mean([np.abs(sigs[k] - sigs[k - k % 4]).max() for k in range(12) if k % 4])
    strangers = np.mean([np.abs(sigs[i] - sigs[j]).max() for i in (0, 4, 8) for j in (0, 4, 8) if i < j])
    assert family < strangers
    with pytest.raises(DatasetError, match="min_shape_diff"):
        synthetic.arrangements(40, np.random.default_rng(0), min_shape_diff=1.5)


def test_pose_knobs_scale_and_foreshorten_the_object():
    layout = synthetic.arrangements(1, np.random.default_rng(0))[0]
    sig = synthetic._signature(layout)

    def instance_signatures(pose):
        out = []
        for seed in range(30):
            p = synthetic.plan(layout, 64, np.random.default_rng(seed), pose)
            pts = np.array([(x, y) for _, x, y, *_ in p.parts])
            d = np.linalg.norm(pts[:, None] - pts[None], axis=-1)
            out.append(
                (np.abs(d / d.mean() - sig).max(), p.parts[0][3] / (synthetic.PART * 64 * synthetic.SUPERSAMPLE))
            )
        return np.array(out)

    rigid, tilted = instance_signatures(synthetic.Pose()), instance_signatures(synthetic.Pose(tilt=0.5, scale_min=0.6))
    assert rigid[:, 0].max() < 1e-9  # rotation, scale and shift keep the arrangement's signature
    assert np.median(tilted[:, 0]) > 0.02  # foreshortening does not
    assert 0.85 <= rigid[:, 1].min() and rigid[:, 1].max() <= 1.1
    assert 0.6 <= tilted[:, 1].min() < 0.85  # the wider scale range is drawn


@pytest.mark.parametrize(
    "field, value", [("min_shape_diff", 0), ("siblings", -1), ("distractors", 9), ("scale_min", 1.15), ("tilt", 1)]
)
def test_bad_knobs_name_their_field(field, value):
    from pipeline.config.schema import ConfigError

    with pytest.raises(ConfigError, match=f"data.synthetic.{field}"):
        SyntheticConfig(**{field: value}).check("params.yaml")


# ------------------------------------------------------------ fixtures in the official layouts
def save_image(path, size=(40, 30), colour=(10, 200, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def make_cub(root):
    lines = {"images.txt": [], "image_class_labels.txt": [], "train_test_split.txt": [], "bounding_boxes.txt": []}
    k = 0
    for c, name in [(1, "001.Albatross"), (2, "002.Auklet")]:
        for i in range(3):
            k += 1
            rel = f"{name}/{name}_{i}.jpg"
            save_image(root / "images" / rel)
            if i == 0:
                save_image(root / "segmentations" / rel.replace(".jpg", ".png"))
            lines["images.txt"].append(f"{k} {rel}")
            lines["image_class_labels.txt"].append(f"{k} {c}")
            lines["train_test_split.txt"].append(f"{k} {int(i < 2)}")
            lines["bounding_boxes.txt"].append(f"{k} 1.0 2.0 10.0 12.0")
    (root / "classes.txt").write_text("1 001.Albatross\n2 002.Auklet\n")
    for name, rows in lines.items():
        (root / name).write_text("\n".join(rows) + "\n")


def annotations(rows):
    """A MATLAB struct array, as scipy.io.savemat writes the official .mat files."""
    dtype = [(k, "O") for k in rows[0]]
    arr = np.zeros((1, len(rows)), dtype=dtype)
    for i, r in enumerate(rows):
        for k, v in r.items():
            arr[0, i][k] = v
    return arr


def make_cars_devkit(root):
    from scipy.io import savemat

    (root / "devkit").mkdir(parents=True)
    savemat(root / "devkit" / "cars_meta.mat", {"class_names": np.array([["Audi A4"], ["BMW M3"]], dtype=object).T})
    for split, mat, folder in [
        ("train", "cars_train_annos.mat", "cars_train"),
        ("test", "cars_test_annos_withlabels.mat", "cars_test"),
    ]:
        rows = []
        for i in range(4):
            fname = f"{split}_{i:05d}.jpg"
            save_image(root / folder / fname)
            rows.append({"bbox_x1": 1, "bbox_y1": 2, "bbox_x2": 30, "bbox_y2": 20, "class": i % 2 + 1, "fname": fname})
        target = root / "devkit" / mat if split == "train" else root / mat  # the reader looks in both
        savemat(target, {"annotations": annotations(rows)})


def make_cars_annos(root):
    from scipy.io import savemat

    rows = []
    for i in range(6):
        rel = f"car_ims/{i:06d}.jpg"
        save_image(root / rel)
        rows.append(
            {
                "relative_im_path": rel,
                "bbox_x1": 1,
                "bbox_y1": 2,
                "bbox_x2": 30,
                "bbox_y2": 20,
                "class": i % 2 + 1,
                "test": int(i >= 4),
            }
        )
    savemat(
        root / "cars_annos.mat",
        {"annotations": annotations(rows), "class_names": np.array([["Audi A4"], ["BMW M3"]], dtype=object).T},
    )


def make_aircraft(root):
    data = root / "data"
    data.mkdir(parents=True)
    (data / "variants.txt").write_text("707-320\nA300B4\n")
    for split, ids in [("trainval", ["0001", "0002", "0003", "0004"]), ("test", ["0005", "0006"])]:
        lines = []
        for k, image_id in enumerate(ids):
            save_image(data / "images" / f"{image_id}.jpg", size=(50, 60))
            lines.append(f"{image_id} {'707-320' if k % 2 else 'A300B4'}")
        (data / f"images_variant_{split}.txt").write_text("\n".join(lines) + "\n")


def make_imagefolder(root):
    for split in ("train", "test"):
        for c in ("cat", "dog"):
            for i in range(3 if split == "train" else 1):
                save_image(root / split / c / f"{i}.png")


@pytest.mark.parametrize(
    "fmt,make,n_classes,n_train,n_test",
    [
        ("cub", make_cub, 2, 4, 2),
        ("cars", make_cars_devkit, 2, 4, 4),
        ("cars", make_cars_annos, 2, 4, 2),
        ("aircraft", make_aircraft, 2, 4, 2),
        ("imagefolder", make_imagefolder, 2, 6, 2),
    ],
)
def test_readers(tmp_path, fmt, make, n_classes, n_train, n_test):
    make(tmp_path / "ds")
    records, names = read_dataset(fmt, tmp_path / "ds")
    assert len(names) == n_classes
    assert sum(r.split == "train" for r in records) == n_train
    assert sum(r.split == "test" for r in records) == n_test
    assert {r.label for r in records} == set(range(n_classes))
    assert all(r.path.exists() for r in records)
    if fmt == "cub":
        assert names == ["001.Albatross", "002.Auklet"]
        assert records[0].bbox == (1.0, 2.0, 10.0, 12.0) and records[0].mask is not None and records[1].mask is None
    if fmt == "cars":
        assert names == ["Audi A4", "BMW M3"] and records[0].bbox == (1.0, 2.0, 29.0, 18.0)
    if fmt == "aircraft":
        assert all(r.crop_bottom == AIRCRAFT_BANNER for r in records)
        assert load_image(records[0].path, records[0].crop_bottom).shape == (3, 60 - AIRCRAFT_BANNER, 50)


def test_prepare_writes_manifest_with_stratified_val(tmp_path):
    cfg = tiny_config()
    summary = prepare(cfg, tmp_path / "prepared")
    rows, names = read_manifest(tmp_path / "prepared")
    assert len(names) == 3 and summary.images == 48 + 60 and summary.splits["gate"] == 60
    by = {s: [r for r in rows if r.split == s] for s in ("train", "val", "test", "gate")}
    assert len(by["test"]) == 12 and all(len([r for r in by["val"] if r.label == c]) == 2 for c in range(3))
    assert all(len([r for r in by["gate"] if r.label == c]) == 20 for c in range(3))  # extra_gate_per_class
    with open(tmp_path / "prepared" / "manifest.csv") as f:
        header = next(csv.reader(f))
    assert {"path", "label", "split", "bbox", "mask"} <= set(header)
    assert json.loads((tmp_path / "prepared" / "classes.json").read_text())["0"] == names[0]
    # relative paths: the folder can move
    (tmp_path / "prepared").rename(tmp_path / "moved")
    rows, _ = read_manifest(tmp_path / "moved")
    ds = ManifestDataset(rows, "train", ClassificationPresetTrain(cfg.data.transforms))
    image, label = ds[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert ClassificationPresetEval(cfg.data.transforms)(load_image(rows[0].path)).shape == (3, 32, 32)


# ------------------------------------------------------------ bad input
def prepare_cub(tmp_path, make=make_cub, **data):
    root = tmp_path / "ds"
    make(root)
    cfg = tiny_config(**{"data.format": "cub", "data.root": str(root), **{f"data.{k}": v for k, v in data.items()}})
    return root, cfg


def test_missing_root_and_annotation_file(tmp_path):
    cfg = tiny_config(**{"data.format": "cub", "data.root": str(tmp_path / "nowhere")})
    with pytest.raises(DatasetError, match="nowhere is not a folder"):
        prepare(cfg, tmp_path / "out")
    root, cfg = prepare_cub(tmp_path)
    (root / "train_test_split.txt").unlink()
    with pytest.raises(DatasetError, match=r"cub \(CUB-200-2011\): expected .*train_test_split.txt"):
        prepare(cfg, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_truncated_image_fails_or_is_skipped(tmp_path):
    root, cfg = prepare_cub(tmp_path)
    bad = root / "images/001.Albatross/001.Albatross_1.jpg"
    bad.write_bytes(bad.read_bytes()[:100])
    out = tmp_path / "data" / "prepared"
    with pytest.raises(DatasetError) as e:
        prepare(cfg, out)
    assert str(bad) in str(e.value) and "on_bad_image: skip" in str(e.value)
    assert not out.exists() and [p.name for p in out.parent.iterdir()] == [".prepared.lock"]  # nothing half-written
    cfg.data.on_bad_image = "skip"
    summary = prepare(cfg, out)
    assert summary.skipped == 1 and str(bad) in (out / BAD_IMAGES).read_text()
    rows, _ = read_manifest(out)
    assert str(bad) not in {r.path for r in rows}
    with pytest.raises(ImageError, match="cannot decode"):
        load_image(bad)


def test_label_out_of_range_duplicate_id_and_empty_class(tmp_path):
    root, cfg = prepare_cub(tmp_path)
    good = (root / "image_class_labels.txt").read_text()
    (root / "image_class_labels.txt").write_text(good.replace("1 1\n", "1 7\n", 1))
    with pytest.raises(DatasetError, match="outside 1..2"):
        prepare(cfg, tmp_path / "out")
    (root / "image_class_labels.txt").write_text(good + "1 1\n")
    with pytest.raises(DatasetError, match="duplicated image id 1"):
        prepare(cfg, tmp_path / "out")
    (root / "image_class_labels.txt").write_text(good)
    split = (root / "train_test_split.txt").read_text().splitlines()
    (root / "train_test_split.txt").write_text("\n".join(s[:-1] + "0" if int(s.split()[0]) > 3 else s for s in split))
    with pytest.raises(DatasetError, match="no training images: 002.Auklet"):
        prepare(cfg, tmp_path / "out")


def test_batches_bound_memory_and_cover_every_row(tiny_prepared):
    from pipeline.data.dataset import batches, logits_over

    rows, _ = read_manifest(tiny_prepared)
    preset = ClassificationPresetEval(tiny_config().data.transforms)
    sizes = [len(b) for b in batches(rows[:11], preset, size=4)]
    assert sizes == [4, 4, 3]
    out = logits_over({"mean": lambda x: x.mean(axis=(2, 3))}, rows[:11], preset, size=4)["mean"]
    assert out.shape == (11, 3) and out.dtype == np.float32


def test_training_batches_are_the_same_for_any_worker_count(tiny_prepared):
    """data.workers is about speed only: each draw's augmentation is seeded by (seed, rank, epoch, its
    position in the epoch), not by whichever process loads it; another epoch, seed or position draws
    anew (an image drawn twice gets two draws), and the caller's generator is left where it was."""
    from torch.utils.data import DataLoader

    from pipeline.lio import GroupBatchSampler

    rows, classes = read_manifest(tiny_prepared)
    train_set = ManifestDataset(rows, "train", ClassificationPresetTrain(tiny_config().data.transforms))

    def epoch(workers, epoch=1, seed=0):
        draws = SeededDraws(train_set, seed)
        sampler = GroupBatchSampler(train_set.labels, 3, 2, seed, class_names=classes)
        draws.set_epoch(epoch)
        sampler.set_epoch(epoch)
        loader = DataLoader(draws, batch_sampler=NumberedBatches(sampler), num_workers=workers)
        return [images for images, _ in loader]

    inline = epoch(0)
    torch.manual_seed(5)
    before = torch.rand(3)
    torch.manual_seed(5)
    draws = SeededDraws(train_set, 0)
    assert torch.equal(draws[0, 0][0], draws[0, 0][0]) and not torch.equal(draws[0, 0][0], draws[0, 1][0])
    assert torch.equal(torch.rand(3), before)
    for other in (epoch(2), epoch(1)):
        assert len(other) == len(inline) and all(torch.equal(a, b) for a, b in zip(inline, other))
    for changed in (epoch(0, epoch=2), epoch(0, seed=1)):
        assert not torch.equal(changed[0], inline[0])


def test_png_whose_data_stops_short_is_a_one_line_error_not_a_crash(tmp_path):
    """torchvision's PNG decoder aborts the whole process on image data that stops short
    (pytorch/vision#3613): load_image refuses such files itself, in a subprocess-free way."""
    from tests.test_preprocess import png_claiming

    short = png_claiming(tmp_path, 64, 64, data=100)
    with pytest.raises(ImageError, match=r"cannot decode image \(truncated image data: 100 of 4,160 bytes\)"):
        load_image(short)
    corrupt = tmp_path / "corrupt.png"
    raw = bytearray(png_claiming(tmp_path, 8, 8, data=72).read_bytes())
    raw[41:45] = b"\xff\xff\xff\xff"  # inside the IDAT's zlib stream
    corrupt.write_bytes(bytes(raw))
    with pytest.raises(ImageError, match="cannot decode image"):
        load_image(corrupt)
    for mode, shape in (("RGB", (20, 30, 3)), ("L", (20, 30)), ("RGBA", (20, 30, 4)), ("P", (20, 30))):
        good = tmp_path / f"good_{mode}.png"
        Image.fromarray(np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8), mode).save(good)
        assert load_image(good).shape == (3, 20, 30)  # every colour type passes the check


@pytest.mark.parametrize("split", ["gate", "select"])
def test_held_out_images_change_nothing_before_them(tmp_path, split):
    """The embedded set's held-out gate images, and the selection images after them, come from their
    own streams, after every other image: the images before them are byte for byte those of a set
    without them."""
    rows = {}
    for extra in (0, 20):
        cfg = tiny_config(**{f"data.synthetic.extra_{split}_per_class": extra})
        summary = prepare(cfg.view(PrepareParams), tmp_path / str(extra))
        got, _ = read_manifest(tmp_path / str(extra))
        rows[extra] = [(r.path.relative_to(tmp_path / str(extra)), r.label, r.split, r.path.read_bytes()) for r in got]
    held = [r for r in rows[20] if r[2] == split]
    assert len(held) == 60 and summary.splits[split] == 60 and [r for r in rows[20] if r[2] != split] == rows[0]
    assert all(len([r for r in held if r[1] == c]) == 20 for c in range(3))


def test_held_out_images_gate_select_and_calibrate_apart(tiny_prepared):
    """The export's image sets: the gate is every labelled image training never saw (validation plus
    the held-out gate stream), selection never touches it, calibration comes from training, and the
    description says what was used."""
    from pipeline.data.heldout import HeldOut

    rows, _ = read_manifest(tiny_prepared)
    by = {s: [r.path for r in rows if r.split == s] for s in ("train", "val", "gate", "select", "test")}
    held = HeldOut.of(rows, calib_images=8, seed=0)
    assert sorted(r.path for r in held.gate) == sorted(by["val"] + by["gate"]) and by["val"] and by["gate"]
    assert not {r.path for r in held.select} & {r.path for r in held.gate}
    assert {r.path for r in held.calibration} <= set(by["train"]) and len(held.calibration) == 8
    assert (
        held.gate_source
        == f"the validation split ({len(by['val'])} images) with {len(by['gate'])} held-out gate images"
    )
    assert [r.path for r in held.test] == by["test"]
    assert HeldOut.of(rows, 8, 0) == held and HeldOut.of(rows, 8, 1).calibration != held.calibration  # seeded
