"""LIO training: one readable loop (train_one_epoch, evaluate, train), after torchvision's
references/classification/train.py.

Runs on a CPU for the embedded default and on GPUs at speed (bf16 autocast, channels_last,
DistributedDataParallel under torchrun). Model selection uses the validation split only;
the test split is evaluated once, at the end. A checkpoint is written atomically every
`train.checkpoint_every` epochs and after the last, and an unfinished run with the same
settings resumes from it exactly: every epoch reseeds all randomness from (seed, epoch), so
resuming gives the same weights.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
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

from pipeline.artifacts.training import Best, TestScore, TrainingSummary
from pipeline.backbone import load_pretrained
from pipeline.config.lio import LIOConfig
from pipeline.config.train import TrainConfig, TrainParams
from pipeline.core.errors import TrainingError
from pipeline.core.io import remove_stale_temporaries
from pipeline.core.metrics import accuracy
from pipeline.data.dataset import NumberedBatches, SeededDraws
from pipeline.data.device_augment import DeviceAugment, DeviceImages, DeviceLoader
from pipeline.data.training_sets import TrainingSets, training_sets
from pipeline.data.transforms import preprocessing
from pipeline.lio import GroupBatchSampler, LIOModel, PairIndex, pair_index
from pipeline.lio.checkpoint import TrainedModel
from pipeline.lio.sampler import batch_positives
from pipeline.train.checkpoint import TrainState, fingerprint, resume, run_settings, save_checkpoint
from pipeline.train.compile import CompiledStep, unwrap, wants_compile
from pipeline.train.distributed import init_distributed, replicas_identical, resolve_device
from pipeline.train.live import log_epoch, open_live
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


@dataclass(frozen=True)
class Step:
    """How a training step runs: the network it calls (`state.model`, or its compiled or DDP
    wrapper), the device, each batch's positives, and bf16 autocast."""

    net: nn.Module
    device: torch.device
    layouts: Callable[[int], PairIndex]
    bf16: bool = False


@dataclass(frozen=True)
class EpochStats:
    """One training epoch: each loss term's mean over its images (loss, cls, oel, scl) and top-1."""

    losses: dict[str, float]
    top1: float


@dataclass(frozen=True)
class Evaluation:
    top1: float
    top5: float
    loss: float


def train_one_epoch(state: TrainState, step_with: Step, loader, t: TrainConfig, show: bool) -> EpochStats:
    """One pass over the group batches (each image with P positives, `batch_layouts`); the mean
    losses and top-1. One host sync per step, after the optimizer step (the loss check)."""
    model, device, epoch = step_with.net, step_with.device, state.epoch
    optimizer, scheduler, ema = state.optimizer, state.scheduler, state.ema
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
        with autocast(device, step_with.bf16):
            out = model(images, labels, step_with.layouts(len(labels)), masks)
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
    return EpochStats({k: v / seen for k, v in sums.items()}, correct / seen)


@torch.no_grad()
def evaluate(model: nn.Module, loader, device, desc: str = "eval", show: bool = True) -> Evaluation:
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
    top = accuracy(np.concatenate(outputs), labels_all)
    return Evaluation(top["top1"], top["top5"], loss / len(labels_all))


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
    sets = training_sets(prepared, cfg.data.transforms, masks=cfg.lio.mask_source == "gt")
    sampler = GroupBatchSampler(
        sets.train.labels, cfg.lio.P, cfg.train.batch_size // (cfg.lio.P + 1), cfg.seed, rank, world, sets.classes
    )
    draws = SeededDraws(sets.train, cfg.seed, rank)  # the same batches for any data.workers
    loader = training_loader(cfg, sets, sampler, draws, device)
    if device.type == "cuda":
        # TF32 for float32 matmuls: the pseudo mask's products (the backbone runs bf16 under autocast).
        # Measured on an H200 (issue "GPU speed"): M within 2e-4 of its spatial contrast, argmax unchanged.
        torch.set_float32_matmul_precision("high")
    state = initial_state(cfg, len(sets.classes), device, len(sampler))
    checkpoint = checkpoints / "last.pt"
    if main:  # a run killed while saving leaves its temporary (up to the checkpoint's size) behind
        for folder in (checkpoints, out_model.parent):
            remove_stale_temporaries(folder)
    settings = run_settings(cfg)
    stamp = fingerprint(settings, prepared / "manifest.csv")
    if resume(checkpoint, stamp, settings, state) and main:
        print(f"resuming from {checkpoint} after epoch {state.epoch}")
    net: nn.Module = CompiledStep(state.model) if wants_compile(cfg.train.compile, device) else state.model
    if world > 1:
        net = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    step_with = Step(net, device, batch_layouts(cfg.lio, device), bf16)
    live = open_live(live_dir, state.epoch) if main else None
    eval_loader = partial(DataLoader, batch_size=cfg.train.eval_batch_size, num_workers=cfg.data.workers)
    started = time.perf_counter()
    while state.epoch < cfg.train.epochs:
        torch.manual_seed(cfg.seed * 1000 + state.epoch)
        draws.set_epoch(state.epoch)
        sampler.set_epoch(state.epoch)
        stats = train_one_epoch(state, step_with, loader, cfg.train, main)
        val = evaluate(state.scored, eval_loader(sets.val), device, "val", main)
        state.observe(val.top1)
        if live is not None:  # rank 0 logs and writes the checkpoint; every rank holds the same weights
            log_epoch(live, state, stats, val, cfg.train.epochs)
            if state.epoch % cfg.train.checkpoint_every == 0 or state.epoch == cfg.train.epochs:
                save_checkpoint(checkpoint, state, stamp, settings)
    identical = check_replicas(state.model, world)
    if live is None:
        dist.destroy_process_group()
        return None
    seconds = time.perf_counter() - started
    summary = finish(cfg, state, sets, eval_loader(sets.test), device, seconds, identical, out_model)
    live.summary.update({k: v for k, v in summary.to_json().items() if v is not None})
    live.end()
    if world > 1:
        dist.destroy_process_group()
    return summary


def check_replicas(model: nn.Module, world: int) -> bool | None:
    """Whether the DDP replicas ended with the same parameters (None: one process). Every rank sees a
    difference, so every rank stops: a model from diverged replicas is not a model."""
    identical = replicas_identical(model) if world > 1 else None
    if identical is False:
        dist.destroy_process_group()
        raise TrainingError(
            f"the {world} DDP replicas hold different parameters after training (a non-deterministic or "
            "rank-dependent step); nothing was written. Rerun, and report it if it repeats"
        )
    return identical


def training_loader(cfg: TrainParams, sets: TrainingSets, sampler, draws: SeededDraws, device: torch.device):
    """Group batches of augmented training images: decoded once and augmented on the device (the CPU
    preset's distribution), or decoded and augmented per image by DataLoader workers."""
    tf, gt, workers = cfg.data.transforms, cfg.lio.mask_source == "gt", cfg.data.workers
    if cfg.data.augment == "device" or (cfg.data.augment == "auto" and device.type == "cuda"):
        on_device = DeviceImages(sets.train.rows, tf.resize, device, masks=gt, workers=workers)
        return DeviceLoader(on_device, sampler, DeviceAugment(tf).to(device))
    # not persistent: a worker copies `draws` when each epoch's iterator starts, so it sees set_epoch
    return DataLoader(
        draws, batch_sampler=NumberedBatches(sampler), num_workers=workers, pin_memory=device.type == "cuda"
    )


def initial_state(cfg: TrainParams, num_classes: int, device: torch.device, steps_per_epoch: int) -> TrainState:
    """The model (seeded), its optimizer, the lr schedule and the weight EMA, before the first step."""
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, num_classes).to(device)
    if cfg.train.channels_last and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(cfg.train, model)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.train, steps_per_epoch))
    ema = None
    if cfg.train.ema_decay > 0:
        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.train.ema_decay), use_buffers=True)
    return TrainState(model, optimizer, scheduler, ema)


def finish(cfg, state: TrainState, sets: TrainingSets, test_loader, device, seconds, identical, out_model: Path):
    """The best epoch's weights, scored once on the test split, saved with everything they were trained with."""
    assert state.best.weights is not None, "at least one epoch ran"
    state.scored.load_state_dict(state.best.weights)
    test = evaluate(state.scored, test_loader, device, "test", True)
    summary = TrainingSummary(
        best=Best(epoch=state.best.epoch, val_top1=state.best.val_top1),
        test=TestScore(top1=test.top1, top5=test.top5),
        chance=1 / len(sets.classes),
        train_seconds=seconds,
        images={"train": len(sets.train), "val": len(sets.val), "test": len(sets.test)},
        ddp_replicas_identical=identical,  # always True with DDP: diverged replicas raised above
    )
    TrainedModel.of(state.scored, cfg, sets.classes, preprocessing(cfg.data.transforms), summary).save(out_model)
    return summary
