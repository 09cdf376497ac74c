"""The training state (`TrainState`) and its checkpoint (checkpoints/last.pt): written after every
epoch, resumed only by a run with the same settings and prepared data (the fingerprint), refused
with a diff otherwise."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from pipeline.config.schema import to_dict
from pipeline.config.train import TrainParams
from pipeline.core.errors import TrainingError
from pipeline.core.io import sha256, write_text
from pipeline.weights import load_torch, save_torch


def run_settings(cfg: TrainParams) -> dict:
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


@dataclass
class BestEpoch:
    """The best epoch so far by validation top-1, with a copy of its weights."""

    epoch: int = -1
    val_top1: float = -1.0
    weights: dict[str, torch.Tensor] | None = None


@dataclass
class TrainState:
    """Everything a training run changes, travelling as one object: what a checkpoint holds, and
    what the loop passes around (as torchvision's references keep model, optimizer and scheduler in
    one checkpoint dict, here typed)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    ema: AveragedModel | None = None
    epoch: int = 0  # epochs done
    best: BestEpoch = field(default_factory=BestEpoch)

    @property
    def scored(self) -> nn.Module:
        """The weights that are evaluated and shipped: the EMA's when there is one."""
        return self.ema.module if self.ema is not None else self.model

    def observe(self, val_top1: float) -> None:
        """After an epoch: count it, and keep its weights when validation is the best so far."""
        self.epoch += 1
        if val_top1 > self.best.val_top1:
            weights = {k: v.detach().cpu().clone() for k, v in self.scored.state_dict().items()}
            self.best = BestEpoch(self.epoch, val_top1, weights)

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "best": {"epoch": self.best.epoch, "val_top1": self.best.val_top1, "state": self.best.weights},
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.epoch = state["epoch"]
        best = state["best"]
        self.best = BestEpoch(best["epoch"], best["val_top1"], best["state"])


def save_checkpoint(path: Path, state: TrainState, stamp: str, settings: dict) -> None:
    save_torch({"fingerprint": stamp, "settings": settings, **state.state_dict()}, path)


def resume(path: Path, stamp: str, settings: dict, state: TrainState) -> bool:
    """Loads an unfinished run with the same settings into `state`; False (state untouched) when
    there is none. A finished run's checkpoint is only history, so training starts afresh; an
    unfinished one with other settings is refused rather than silently thrown away."""
    if not path.exists():
        return False
    saved = load_torch(path, "delete it to start training over")
    if saved["epoch"] >= saved["settings"]["train"]["epochs"]:
        return False
    if saved["fingerprint"] != stamp:
        changes = "; ".join(_diff(saved["settings"], settings)) or "the prepared data changed"
        raise TrainingError(
            f"{path} holds an unfinished run with other settings ({changes}). "
            "Restore those settings to resume it, or delete the file to start over."
        )
    state.load_state_dict(saved)
    return True


def truncate_live_plots(live_dir: Path, step: int) -> None:
    """Drops the rows at or after `step` from dvclive's plot files, so a resumed run logs each step once."""
    for tsv in Path(live_dir).glob("plots/metrics/**/*.tsv"):
        lines = tsv.read_text().splitlines()
        if not lines:
            continue
        col = lines[0].split("\t").index("step")
        kept = [lines[0]] + [ln for ln in lines[1:] if int(ln.split("\t")[col]) < step]
        write_text(tsv, "\n".join(kept) + "\n")
