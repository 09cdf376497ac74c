"""Is the data loader the bottleneck? Decoded and augmented images per second of the
default loader (2 workers) beside the default LIO training step's images per second,
measured in one run at the default sizes.

    python benchmarks/data.py [--workers 2] [--batches 30]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from pipeline.config import load_config
from pipeline.data.dataset import ManifestDataset
from pipeline.data.manifest import read_manifest
from pipeline.data.prepare import prepare
from pipeline.data.transforms import ClassificationPresetTrain
from pipeline.lio import GroupBatchSampler, LIOModel, group_positives


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml", help="settings to measure (default: the repository's)")
    parser.add_argument("--workers", type=int, default=None, help="loader workers (default: data.workers)")
    parser.add_argument("--batches", type=int, default=30)
    args = parser.parse_args()
    cfg = load_config(args.params)
    args.workers = cfg.data.workers if args.workers is None else args.workers
    P, batch = cfg.lio.P, cfg.train.batch_size
    with tempfile.TemporaryDirectory() as tmp:
        prepare(cfg, Path(tmp) / "prepared")
        rows, _ = read_manifest(Path(tmp) / "prepared")
        ds = ManifestDataset(rows, "train", ClassificationPresetTrain(cfg.data.transforms))
        sampler = GroupBatchSampler(ds.labels, P, batch // (P + 1))
        loader = DataLoader(ds, batch_sampler=sampler, num_workers=args.workers, persistent_workers=args.workers > 0)
        seen, start = 0, None
        while seen < args.batches * batch:
            for images, _ in loader:
                if start is None:  # the first batch pays for the workers' start
                    start, seen = time.perf_counter(), 0
                    continue
                seen += len(images)
                if seen >= args.batches * batch:
                    break
        assert start is not None
        loader_rate = seen / (time.perf_counter() - start)

    model = LIOModel(cfg.model.arch, cfg.data.synthetic.classes, cfg.lio.stages).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(batch, 3, cfg.data.transforms.crop, cfg.data.transforms.crop)
    y = torch.arange(batch // (P + 1)).repeat_interleave(P + 1) % cfg.data.synthetic.classes
    pos = group_positives(batch // (P + 1), P)
    start = time.perf_counter()
    for i in range(6):
        if i == 1:
            start = time.perf_counter()
        opt.zero_grad()
        model(x, y, pos).loss.backward()
        opt.step()
    step_rate = 5 * batch / (time.perf_counter() - start)

    print(
        f"default settings: {cfg.data.transforms.crop} px, batch {batch}, {args.workers} workers, "
        f"{torch.get_num_threads()} torch threads\n"
    )
    print("| what | images/s |")
    print("|---|---|")
    print(f"| data loader (decode + augment) | {loader_rate:.0f} |")
    print(f"| LIO multi-stage training step | {step_rate:.1f} |")
    print(f"| loader / step | {loader_rate / step_rate:.1f}x |")


if __name__ == "__main__":
    main()
