"""LIO training: one readable loop (train_one_epoch, evaluate, train), after torchvision's
references/classification/train.py.

Runs on a CPU for the embedded default and on GPUs at speed (bf16 autocast, channels_last,
DistributedDataParallel under torchrun). Model selection uses the validation split only;
the test split is evaluated once, at the end. A checkpoint is written atomically after
every epoch, and an unfinished run with the same settings resumes from it exactly: every
epoch reseeds all randomness from (seed, epoch), so resuming gives the same weights.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader
from tqdm import tqdm

from pipeline.backbone import load_pretrained
from pipeline.config.lio import LIOConfig
from pipeline.config.schema import to_dict
from pipeline.config.train import TrainConfig, TrainParams
from pipeline.core.artifacts.training import Best, TestScore, TrainingSummary
from pipeline.core.errors import TrainingError
from pipeline.core.io import remove_stale_temporaries
from pipeline.core.metrics import accuracy
from pipeline.data.dataset import ManifestDataset, NumberedBatches, SeededDraws
from pipeline.data.device_augment import DeviceAugment, DeviceImages, DeviceLoader
from pipeline.data.manifest import Record, read_manifest
from pipeline.data.transforms import ClassificationPresetEval, ClassificationPresetTrain, preprocessing
from pipeline.lio import GroupBatchSampler, LIOModel, PairIndex, pair_index
from pipeline.lio.checkpoint import save_trained
from pipeline.lio.sampler import batch_positives
from pipeline.train.checkpoint import fingerprint, resume, run_settings, save_checkpoint, truncate_live_plots
from pipeline.train.compile import CompiledStep, unwrap, wants_compile
from pipeline.train.distributed import init_distributed, replicas_identical, resolve_device
from pipeline.train.optim import build_optimizer, lr_lambda
from pipeline.train.precision import autocast, resolve_amp


def build_model(cfg: TrainParams, num_classes: int) -> LIOModel:
    model = LIOModel.from_config(
        cfg.lio,
        cfg.model.arch,
        num_classes,
        zero_init_residual=cfg.model.zero_init_residual,
        label_smoothing=cfg.train.label_smoothing,
    )
    if cfg.model.pretrained != "none":
        load_pretrained(model.backbone, cfg.model.arch, cfg.model.pretrained)
    return model


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


# ---------------------------------------------------------------- loops
def batch_layouts(lio: LIOConfig, device: torch.device) -> Callable[[int], PairIndex]:
    """The positives of a batch of B images as a pair index on `device`, built on the host once
    per batch size (the sampler fixes the layout; only the last batch of an epoch may be shorter)."""
    built: dict[int, PairIndex] = {}

    def of(batch: int) -> PairIndex:
        if batch not in built:
            built[batch] = pair_index(batch_positives(batch // (lio.P + 1), lio.P, lio.positives)).to(device)
        return built[batch]

    return of


def train_one_epoch(
    model,
    loader,
    optimizer,
    scheduler,
    ema,
    device,
    layouts: Callable[[int], PairIndex],
    t: TrainConfig,
    epoch: int,
    show: bool,
    bf16: bool = False,
) -> dict:
    """One pass over the group batches (each image with P positives, `batch_layouts`); the mean
    losses and top-1. One host sync per step, after the optimizer step (the loss check)."""
    model.train()
    sums: dict[str, float] = {}
    correct = seen = 0
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{t.epochs}", unit="batch", disable=not show, leave=False)
    for step, batch in enumerate(bar):
        images, *masks, labels = batch  # masks only with lio.mask_source: gt
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        masks = masks[0].to(device, non_blocking=True) if masks else None
        if t.channels_last and device.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(device, bf16):
            out = model(images, labels, layouts(len(labels)), masks)
        losses = {"loss": out.loss, **out.parts}
        # the losses and the correct count in one tensor, read once per step after the optimizer step
        # (the step is then queued without waiting; a non-finite loss stops the run before any checkpoint)
        summary = torch.stack([*(v.detach().float() for v in losses.values()), (out.logits.argmax(1) == labels).sum()])
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        scheduler.step()
        values = summary.tolist()
        if not math.isfinite(values[0]):
            parts = ", ".join(f"{k}={v:.4g}" for k, v in zip(losses, values))
            raise TrainingError(
                f"non-finite loss at epoch {epoch + 1}, step {step + 1} ({parts}); training stopped and the last "
                "good checkpoint was kept. Lower train.lr or check the data."
            )
        if ema is not None:
            ema.update_parameters(unwrap(model))
        for k, v in zip(losses, values):
            sums[k] = sums.get(k, 0.0) + v * len(labels)
        correct += int(values[-1])
        seen += len(labels)
        bar.set_postfix(loss=f"{values[0]:.3f}")
    stats = {k: v / seen for k, v in sums.items()}
    stats["top1"] = correct / seen
    return stats


@torch.no_grad()
def evaluate(model: nn.Module, loader, device, desc: str = "eval", show: bool = True) -> dict:
    """Top-1, top-5 and loss of the classification path (the backbone alone), in fp32 as it ships:
    the best epoch is chosen on the numbers the deployed model gives."""
    model.eval()
    outputs, targets = [], []
    loss = 0.0
    for images, labels in tqdm(loader, desc=desc, unit="batch", disable=not show, leave=False):
        images, labels = images.to(device), labels.to(device)
        logits = model(images).float()
        loss += F.cross_entropy(logits, labels, reduction="sum").item()
        outputs.append(logits.cpu().numpy())
        targets.append(labels.cpu().numpy())
    labels_all = np.concatenate(targets)
    return {**accuracy(np.concatenate(outputs), labels_all), "loss": loss / len(labels_all)}


# ---------------------------------------------------------------- main
def train(
    cfg: TrainParams, prepared: Path, out_model: Path, checkpoints: Path, live_dir: Path
) -> TrainingSummary | None:
    """Train, keep the best epoch by validation top-1, evaluate the test split once."""
    rank, world, local_rank = init_distributed()
    main = rank == 0
    device = resolve_device(cfg.train.device, local_rank)
    bf16, precision = resolve_amp(cfg.train.amp, device)
    if main:
        print(precision)
    rows, classes = read_manifest(prepared)
    check_files(rows, prepared)
    tf = cfg.data.transforms
    gt = cfg.lio.mask_source == "gt"
    train_set = ManifestDataset(rows, "train", ClassificationPresetTrain(tf), masks=gt)
    unmasked = [r.path for r in train_set.rows if not r.mask] if gt else []
    if unmasked:
        raise TrainingError(
            f"lio.mask_source: gt trains OEL against true masks, but {len(unmasked)} of {len(train_set)} training "
            f"images in {prepared}/manifest.csv have none (e.g. {unmasked[0]}); use a dataset with masks "
            "(synthetic, or CUB with segmentations/) or set lio.mask_source: pseudo"
        )
    val_set = ManifestDataset(rows, "val", ClassificationPresetEval(tf))
    test_set = ManifestDataset(rows, "test", ClassificationPresetEval(tf))
    present = set(train_set.labels)
    empty = [c for i, c in enumerate(classes) if i not in present]
    if empty:
        raise TrainingError(f"{prepared}/manifest.csv: class(es) with no training images: {', '.join(empty[:10])}")

    P = cfg.lio.P
    sampler = GroupBatchSampler(train_set.labels, P, cfg.train.batch_size // (P + 1), cfg.seed, rank, world, classes)
    workers = cfg.data.workers
    draws = SeededDraws(train_set, cfg.seed, rank)  # the same batches for any data.workers
    loader: DataLoader | DeviceLoader
    if cfg.data.augment == "device" or (cfg.data.augment == "auto" and device.type == "cuda"):
        # decoded once, augmented a batch at a time on the device (the CPU preset's distribution)
        on_device = DeviceImages(train_set.rows, tf.resize, device, masks=gt, workers=workers)
        loader = DeviceLoader(on_device, sampler, DeviceAugment(tf).to(device))
    else:
        # not persistent: a worker copies `draws` when each epoch's iterator starts, so it sees set_epoch
        batches = NumberedBatches(sampler)
        loader = DataLoader(draws, batch_sampler=batches, num_workers=workers, pin_memory=device.type == "cuda")

    def eval_loader(ds):
        return DataLoader(ds, batch_size=cfg.train.eval_batch_size, num_workers=workers)

    if device.type == "cuda":
        # TF32 for float32 matmuls: the pseudo mask's products (the backbone runs bf16 under autocast).
        # Measured on an H200 (issue "GPU speed"): M within 2e-4 of its spatial contrast, argmax unchanged.
        torch.set_float32_matmul_precision("high")
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, len(classes)).to(device)
    if cfg.train.channels_last and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(cfg.train, model)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.train, len(sampler)))
    ema = (
        AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.train.ema_decay), use_buffers=True)
        if cfg.train.ema_decay > 0
        else None
    )

    checkpoint = checkpoints / "last.pt"
    if main:  # a run killed while saving leaves its temporary (up to the checkpoint's size) behind
        for folder in (checkpoints, out_model.parent):
            remove_stale_temporaries(folder)
    settings = run_settings(cfg)
    stamp = fingerprint(settings, prepared / "manifest.csv")
    start, best = resume(checkpoint, stamp, settings, model, optimizer, scheduler, ema)
    if start and main:
        print(f"resuming from {checkpoint} after epoch {start}")

    net: nn.Module = model
    if wants_compile(cfg.train.compile, device):
        net = CompiledStep(model)
    if world > 1:
        net = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    layouts = batch_layouts(cfg.lio, device)

    live = None
    if main:
        from dvclive import Live

        if start:
            truncate_live_plots(live_dir, start)
        live = Live(str(live_dir), resume=start > 0, dvcyaml=None, save_dvc_exp=False)
        live.step = start  # the checkpoint's epoch, not dvclive's own count (a run killed mid-save logged one more)
    scored = ema.module if ema is not None else model
    started = time.perf_counter()
    for epoch in range(start, cfg.train.epochs):
        torch.manual_seed(cfg.seed * 1000 + epoch)
        draws.set_epoch(epoch)
        sampler.set_epoch(epoch)
        stats = train_one_epoch(net, loader, optimizer, scheduler, ema, device, layouts, cfg.train, epoch, main, bf16)
        val = evaluate(scored, eval_loader(val_set), device, "val", main)
        if val["top1"] > best["val_top1"]:
            best = {
                "epoch": epoch + 1,
                "val_top1": val["top1"],
                "state": {k: v.detach().cpu().clone() for k, v in scored.state_dict().items()},
            }
        if main:  # rank 0 logs and writes the checkpoint; every rank holds the same weights (checked at the end)
            assert live is not None
            for k, v in stats.items():
                live.log_metric(f"train/{k}", v)
            live.log_metric("val/top1", val["top1"])
            live.log_metric("val/loss", val["loss"])
            live.log_metric("lr", optimizer.param_groups[0]["lr"])
            live.next_step()
            print(
                f"epoch {epoch + 1}/{cfg.train.epochs}: loss {stats['loss']:.4f} train top1 {stats['top1']:.3f} "
                f"val top1 {val['top1']:.3f}"
            )
            save_checkpoint(checkpoint, epoch + 1, stamp, settings, model, optimizer, scheduler, ema, best)
    identical = replicas_identical(model) if world > 1 else None
    if identical is False:  # every rank sees it, so every rank stops: a model from diverged replicas is not a model
        dist.destroy_process_group()
        raise TrainingError(
            f"the {world} DDP replicas hold different parameters after training (a non-deterministic or "
            "rank-dependent step); nothing was written. Rerun, and report it if it repeats"
        )
    if not main:
        dist.destroy_process_group()
        return None

    assert live is not None  # rank 0
    scored.load_state_dict(best["state"])
    test = evaluate(scored, eval_loader(test_set), device, "test", True)
    summary = TrainingSummary(
        best=Best(epoch=best["epoch"], val_top1=best["val_top1"]),
        test=TestScore(top1=test["top1"], top5=test["top5"]),
        chance=1 / len(classes),
        train_seconds=time.perf_counter() - started,
        images={"train": len(train_set), "val": len(val_set), "test": len(test_set)},
        ddp_replicas_identical=identical,  # always True with DDP: diverged replicas raised above
    )
    live.summary.update({k: v for k, v in summary.to_json().items() if v is not None})
    live.end()
    save_trained(
        out_model,
        scored,
        model_info={"num_classes": len(classes), **dataclasses.asdict(cfg.model)},
        lio=dataclasses.asdict(cfg.lio),
        classes=classes,
        preprocess=dataclasses.asdict(preprocessing(tf)),
        settings=to_dict(cfg),
        metrics=summary.to_json(),
    )
    if world > 1:
        dist.destroy_process_group()
    return summary
