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
import hashlib
import json
import math
import os
import time
from contextlib import nullcontext
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

from pipeline.config import Config, to_dict
from pipeline.data.dataset import ManifestDataset
from pipeline.data.manifest import read_manifest
from pipeline.data.transforms import ClassificationPresetEval, ClassificationPresetTrain, preprocessing
from pipeline.errors import PipelineError
from pipeline.io import load_torch, remove_stale_temporaries, save_torch, sha256, write_text
from pipeline.lio import GroupBatchSampler, LIOModel, group_positives
from pipeline.lio.checkpoint import save_trained
from pipeline.metrics import accuracy


class TrainingError(PipelineError, RuntimeError):
    pass


# ---------------------------------------------------------------- setup
def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError(f"train.device is {name!r} but no CUDA GPU is visible; use auto or cpu")
    return device


def init_distributed() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment; (0, 1, 0) otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, 0
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0"))


def build_model(cfg: Config, num_classes: int) -> LIOModel:
    model = LIOModel.from_config(cfg.lio, cfg.model.arch, num_classes)
    if cfg.model.pretrained != "none":
        load_pretrained(model.backbone, cfg.model.arch, cfg.model.pretrained)
    return model


def pretrained_path(arch: str, pretrained: str) -> Path:
    """Where the weights must be: torchvision's file in the local hub cache, or a path."""
    if pretrained != "imagenet":
        return Path(pretrained)
    import torchvision

    weights = torchvision.models.get_model_weights(arch).DEFAULT
    return Path(torch.hub.get_dir()) / "checkpoints" / weights.url.rsplit("/", 1)[-1]


def load_pretrained(backbone: nn.Module, arch: str, pretrained: str) -> None:
    """Backbone weights from a local file; the classifier is kept only if its shape fits."""
    path = pretrained_path(arch, pretrained)
    if not path.exists():
        if pretrained == "imagenet":
            raise TrainingError(
                f"model.pretrained: imagenet needs torchvision's {arch} weights at {path} and nothing can be "
                f"downloaded here; copy the file {path.name} into {path.parent} (or set model.pretrained to a path)"
            )
        raise TrainingError(f"model.pretrained: {path} not found")
    state = load_torch(path, "point model.pretrained at a valid state dict")
    state = state.get("state_dict", state)
    own = backbone.state_dict()
    for key in ("fc.weight", "fc.bias"):
        if key in state and key in own and state[key].shape != own[key].shape:
            del state[key]  # another class count: fine-tuning starts a new classifier
    missing, unexpected = backbone.load_state_dict(state, strict=False)
    wrong = [k for k in missing if not k.startswith("fc.")] + list(unexpected)
    shapes = [k for k in state if k in own and state[k].shape != own[k].shape]
    if wrong or shapes:
        raise TrainingError(
            f"model.pretrained: {path} does not fit {arch}: "
            f"{len(wrong)} missing/unexpected keys (e.g. {wrong[:3]}), "
            f"{len(shapes)} shape mismatches (e.g. {shapes[:3]})"
        )


def build_optimizer(cfg: Config, model: LIOModel) -> torch.optim.Optimizer:
    """Backbone at train.lr; new layers (heads, classifier) at lr * head_lr_mult; no decay on norms and biases."""
    t = cfg.train
    new = {id(p) for p in [*model.head_parameters(), *model.backbone.get_submodule("fc").parameters()]}
    groups: dict[tuple[bool, bool], list] = {}
    for p in model.parameters():
        groups.setdefault((id(p) in new, p.ndim <= 1), []).append(p)
    param_groups = [
        {
            "params": ps,
            "lr": t.lr * (t.head_lr_mult if is_new else 1.0),
            "weight_decay": 0.0 if flat else t.weight_decay,
        }
        for (is_new, flat), ps in sorted(groups.items())
    ]
    if t.optimizer == "sgd":
        return torch.optim.SGD(param_groups, lr=t.lr, momentum=t.momentum, nesterov=True)
    return torch.optim.AdamW(param_groups, lr=t.lr)


def lr_lambda(cfg: Config, steps_per_epoch: int):
    """Linear warm-up, then cosine decay to zero or step decay at train.step_epochs."""
    t = cfg.train
    warmup = t.warmup_epochs * steps_per_epoch
    total = t.epochs * steps_per_epoch

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if t.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
        return t.step_gamma ** sum(step >= m * steps_per_epoch for m in t.step_epochs)

    return factor


def run_settings(cfg: Config) -> dict:
    """The params that define a training run (resuming needs them unchanged)."""
    return {k: v for k, v in to_dict(cfg).items() if k in ("seed", "data", "model", "lio", "train")}


def fingerprint(settings: dict, manifest: Path) -> str:
    blob = json.dumps(settings, sort_keys=True) + sha256(manifest)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _diff(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return out


def check_files(rows: list[dict], prepared: Path) -> None:
    """Every image of the manifest is still on disk with the size `prepare` saw: a dataset
    edited since then (data.root lies outside the repository) is refused before training."""
    for r in rows:
        path = Path(r["path"])
        size = path.stat().st_size if path.exists() else None
        if size is None or (r.get("bytes") and size != r["bytes"]):
            now = "is missing" if size is None else f"has {size} bytes, not {r['bytes']}"
            raise TrainingError(
                f"{prepared}/manifest.csv lists {path}, which {now}: the dataset changed since `lio prepare`; "
                "run `dvc repro prepare` (or `dvc repro`)"
            )


def truncate_live_plots(live_dir: Path, step: int) -> None:
    """Drops the rows at or after `step` from dvclive's plot files, so a resumed run logs each step once."""
    for tsv in Path(live_dir).glob("plots/metrics/**/*.tsv"):
        lines = tsv.read_text().splitlines()
        if not lines:
            continue
        col = lines[0].split("\t").index("step")
        kept = [lines[0]] + [ln for ln in lines[1:] if int(ln.split("\t")[col]) < step]
        write_text(tsv, "\n".join(kept) + "\n")


# ---------------------------------------------------------------- loops
def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on GPUs that support it (no loss scaling needed); fp32 elsewhere."""
    if device.type != "cuda" or not enabled or not torch.cuda.is_bf16_supported():
        return nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16)


def train_one_epoch(model, loader, optimizer, scheduler, ema, device, cfg: Config, epoch: int, show: bool) -> dict:
    model.train()
    P = cfg.lio.P
    sums: dict[str, float] = {}
    correct = seen = 0
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.train.epochs}", unit="batch", disable=not show, leave=False)
    for step, batch in enumerate(bar):
        images, *masks, labels = batch  # masks only with lio.mask_source: gt
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        masks = masks[0].to(device, non_blocking=True) if masks else None
        if cfg.train.channels_last and device.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last)
        positives = group_positives(len(labels) // (P + 1), P).to(device)
        with autocast(device, cfg.train.amp):
            out = model(images, labels, positives, masks)
        if not torch.isfinite(out.loss):
            parts = ", ".join(f"{k}={v.item():.4g}" for k, v in out.parts.items())
            raise TrainingError(
                f"non-finite loss at epoch {epoch + 1}, step {step + 1} ({parts}); training stopped and the last "
                "good checkpoint was kept. Lower train.lr or check the data."
            )
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        scheduler.step()
        if ema is not None:
            ema.update_parameters(model.module if isinstance(model, DistributedDataParallel) else model)
        for k, v in {"loss": out.loss, **out.parts}.items():
            sums[k] = sums.get(k, 0.0) + v.item() * len(labels)
        correct += (out.logits.argmax(1) == labels).sum().item()
        seen += len(labels)
        bar.set_postfix(loss=f"{out.loss.item():.3f}")
    stats = {k: v / seen for k, v in sums.items()}
    stats["top1"] = correct / seen
    return stats


@torch.no_grad()
def evaluate(model: nn.Module, loader, device, amp: bool = False, desc: str = "eval", show: bool = True) -> dict:
    """Top-1, top-5 and loss of the classification path (the backbone alone)."""
    model.eval()
    outputs, targets = [], []
    loss = 0.0
    for images, labels in tqdm(loader, desc=desc, unit="batch", disable=not show, leave=False):
        images, labels = images.to(device), labels.to(device)
        with autocast(device, amp):
            logits = model(images).float()
        loss += F.cross_entropy(logits, labels, reduction="sum").item()
        outputs.append(logits.cpu().numpy())
        targets.append(labels.cpu().numpy())
    labels_all = np.concatenate(targets)
    return {**accuracy(np.concatenate(outputs), labels_all), "loss": loss / len(labels_all)}


def replicas_identical(model: nn.Module) -> bool:
    """Whether every rank holds the same parameters (BN buffers may differ: DDP re-broadcasts them)."""
    blob = b"".join(p.detach().cpu().numpy().tobytes() for p in model.parameters())
    digests: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(digests, hashlib.sha256(blob).hexdigest())
    return len(set(digests)) == 1


def save_checkpoint(path: Path, epoch: int, stamp: str, settings: dict, model, optimizer, scheduler, ema, best) -> None:
    save_torch(
        {
            "epoch": epoch,
            "fingerprint": stamp,
            "settings": settings,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "ema": ema.state_dict() if ema is not None else None,
            "best": best,
        },
        path,
    )


def resume(path: Path, stamp: str, settings: dict, model, optimizer, scheduler, ema) -> tuple[int, dict]:
    """(epochs done, best so far) from an unfinished run with the same settings; (0, none) otherwise.

    A finished run's checkpoint is only history, so training starts afresh; an unfinished
    one with other settings is refused rather than silently thrown away.
    """
    fresh = (0, {"epoch": -1, "val_top1": -1.0, "state": None})
    if not path.exists():
        return fresh
    state = load_torch(path, "delete it to start training over")
    if state["epoch"] >= state["settings"]["train"]["epochs"]:
        return fresh
    if state["fingerprint"] != stamp:
        changes = "; ".join(_diff(state["settings"], settings)) or "the prepared data changed"
        raise TrainingError(
            f"{path} holds an unfinished run with other settings ({changes}). "
            "Restore those settings to resume it, or delete the file to start over."
        )
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if ema is not None:
        ema.load_state_dict(state["ema"])
    return state["epoch"], state["best"]


# ---------------------------------------------------------------- main
def train(cfg: Config, prepared: Path, out_model: Path, checkpoints: Path, live_dir: Path) -> dict:
    """Train, keep the best epoch by validation top-1, evaluate the test split once."""
    rank, world, local_rank = init_distributed()
    main = rank == 0
    device = resolve_device(cfg.train.device, local_rank)
    rows, classes = read_manifest(prepared)
    check_files(rows, prepared)
    tf = cfg.data.transforms
    gt = cfg.lio.mask_source == "gt"
    train_set = ManifestDataset(rows, "train", ClassificationPresetTrain(tf), masks=gt)
    unmasked = [r["path"] for r in train_set.rows if not r["mask"]] if gt else []
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
    loader_gen = torch.Generator()
    workers = cfg.data.workers
    loader = DataLoader(
        train_set,
        batch_sampler=sampler,
        num_workers=workers,
        generator=loader_gen,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )

    def eval_loader(ds):
        return DataLoader(ds, batch_size=cfg.train.eval_batch_size, num_workers=workers)

    torch.manual_seed(cfg.seed)
    model = build_model(cfg, len(classes)).to(device)
    if cfg.train.channels_last and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(cfg, model)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, len(sampler)))
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
    if world > 1:
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

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
        loader_gen.manual_seed(cfg.seed * 1000 + epoch)
        sampler.set_epoch(epoch)
        stats = train_one_epoch(net, loader, optimizer, scheduler, ema, device, cfg, epoch, main)
        val = evaluate(scored, eval_loader(val_set), device, cfg.train.amp, "val", main)
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
        return {}

    assert live is not None  # rank 0
    scored.load_state_dict(best["state"])
    test = evaluate(scored, eval_loader(test_set), device, cfg.train.amp, "test", True)
    summary = {
        "best_epoch": best["epoch"],
        "best_val_top1": best["val_top1"],
        "test_top1": test["top1"],
        "test_top5": test["top5"],
        "chance": 1 / len(classes),
    }
    if identical is not None:
        summary["ddp_replicas_identical"] = identical  # always True here: diverged replicas raised above
    live.summary.update(
        {
            "best": {"epoch": best["epoch"], "val_top1": best["val_top1"]},
            "test": {"top1": test["top1"], "top5": test["top5"]},
            "chance": 1 / len(classes),
            "train_seconds": time.perf_counter() - started,
        }
    )
    live.end()
    save_trained(
        out_model,
        scored,
        model_info={"num_classes": len(classes), **dataclasses.asdict(cfg.model)},
        lio=dataclasses.asdict(cfg.lio),
        classes=classes,
        preprocess=preprocessing(tf),
        metrics=summary,
    )
    if world > 1:
        dist.destroy_process_group()
    return summary
