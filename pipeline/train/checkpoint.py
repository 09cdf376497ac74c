"""The resumable training state (checkpoints/last.pt): written after every epoch, resumed only
by a run with the same settings and prepared data (the fingerprint), refused with a diff otherwise."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

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


def truncate_live_plots(live_dir: Path, step: int) -> None:
    """Drops the rows at or after `step` from dvclive's plot files, so a resumed run logs each step once."""
    for tsv in Path(live_dir).glob("plots/metrics/**/*.tsv"):
        lines = tsv.read_text().splitlines()
        if not lines:
            continue
        col = lines[0].split("\t").index("step")
        kept = [lines[0]] + [ln for ln in lines[1:] if int(ln.split("\t")[col]) < step]
        write_text(tsv, "\n".join(kept) + "\n")
