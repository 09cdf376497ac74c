"""Does the input keep up with training? Images per second delivered by each `data.augment`
path beside the LIO training step's images per second, on the device that trains, in one run.

    python benchmarks/data.py                                  # the defaults: 64 px, 2 workers, CPU
    python benchmarks/data.py --size 448 --workers 16 --batch 64 --compile   # the paper's size on a GPU

workers: decode + resize + rotate + crop + flip per image on CPU worker processes (DataLoader).
device: decoded and resized once (not timed: `decode once` is printed apart), then one
grid_sample per batch on the device. The step is the multi-stage LIO step on random images of
the same size (ResNet-50, bf16 and channels_last on CUDA, as training runs; benchmarks/train.py's
measurement).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from train import measure  # benchmarks/train.py: the same step, as its table measures it

from pipeline.config.data import PrepareParams, TransformConfig
from pipeline.config.params import load_config
from pipeline.core import markdown
from pipeline.data.dataset import ManifestDataset
from pipeline.data.device_augment import DeviceAugment, DeviceImages, DeviceLoader
from pipeline.data.manifest import read_manifest
from pipeline.data.prepare import prepare
from pipeline.data.transforms import ClassificationPresetTrain
from pipeline.lio import GroupBatchSampler


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def rate(loader, batches: int, device: torch.device) -> float:
    """Images per second over `batches` batches after the first (which pays for starting workers)."""
    seen, start = 0, None
    while True:
        for images, _ in loader:
            images = images.to(device, non_blocking=True)
            if start is None:
                sync(device)
                start, seen = time.perf_counter(), 0
                continue
            seen += len(images)
            if seen >= batches * len(images):
                sync(device)
                return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml", help="settings to start from (default: the repository's)")
    parser.add_argument("--size", type=int, default=None, help="crop in px (resize = size * 8 / 7); default: params")
    parser.add_argument("--workers", type=int, default=None, help="loader workers (default: data.workers)")
    parser.add_argument("--batch", type=int, default=None, help="images per batch (default: train.batch_size)")
    parser.add_argument("--images-per-class", type=int, default=None, help="synthetic images per class")
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--compile", action="store_true", help="also time the compiled LIO step")
    args = parser.parse_args()
    cfg = load_config(args.params)
    device = torch.device(args.device)
    if args.size:
        cfg.data.synthetic.image_size = args.size * 8 // 7
        cfg.data.transforms = TransformConfig(resize=args.size * 8 // 7, crop=args.size)
    if args.images_per_class:
        cfg.data.synthetic.images_per_class = args.images_per_class
    workers = cfg.data.workers if args.workers is None else args.workers
    batch = args.batch or cfg.train.batch_size
    tf, P = cfg.data.transforms, 3
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        prepare(cfg.view(PrepareParams), Path(tmp) / "prepared")
        results["prepare (draw the synthetic set, all cores)"] = time.perf_counter() - start
        rows, _ = read_manifest(Path(tmp) / "prepared")
        ds = ManifestDataset(rows, "train", ClassificationPresetTrain(tf))
        sampler = GroupBatchSampler(ds.labels, P, batch // (P + 1))
        loader = DataLoader(
            ds,
            batch_sampler=sampler,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=device.type == "cuda",
        )
        workers_rate = rate(loader, args.batches, device)
        start = time.perf_counter()
        on_device = DeviceImages(ds.rows, tf.resize, device, workers=workers)
        results["decode once (device path)"] = time.perf_counter() - start
        device_rate = rate(DeviceLoader(on_device, sampler, DeviceAugment(tf).to(device)), args.batches, device)
    pool = 2 if tf.crop >= 448 else 1
    steps = {
        mode: batch / measure(cfg.lio.stages, batch, tf.crop, pool, device.type, 5, mode == "compiled")["seconds"]
        for mode in (["eager", "compiled"] if args.compile else ["eager"])
    }
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"\n{where}; {tf.crop} px (resized to {tf.resize}), batch {batch}, {workers} workers, "
        f"{len(ds)} training images, {torch.get_num_threads()} torch threads\n"
    )
    rates = {"data.augment: workers": workers_rate, "data.augment: device": device_rate}
    rates |= {f"LIO multi-stage step, {mode}": r for mode, r in steps.items()}
    lines = [{"what": k, "rate": r, "ratio": f"{r / steps['eager']:.2f}x"} for k, r in rates.items()]
    columns = [("what", "what", ""), ("rate", "images/s", ".0f"), ("ratio", "vs eager LIO step", "")]
    print(markdown.table(lines, columns))
    print()
    for what, seconds in results.items():
        print(f"{what}: {seconds:.1f} s")


if __name__ == "__main__":
    main()
