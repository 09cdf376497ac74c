"""dvclive for a training run: opened where a resumed run left off, one step logged per epoch."""

from __future__ import annotations

from pathlib import Path

from pipeline.train.checkpoint import TrainState, truncate_live_plots


def open_live(live_dir: Path, start: int):
    """dvclive, resumed at the checkpoint's epoch (not its own count: a run killed mid-save logged one more)."""
    from dvclive import Live

    if start:
        truncate_live_plots(live_dir, start)
    live = Live(str(live_dir), resume=start > 0, dvcyaml=None, save_dvc_exp=False)
    live.step = start
    return live


def log_epoch(live, state: TrainState, stats, val, epochs: int) -> None:
    """The epoch's losses, train and validation top-1, the lr; and one line on the console."""
    for k, v in stats.losses.items():
        live.log_metric(f"train/{k}", v)
    live.log_metric("train/top1", stats.top1)
    live.log_metric("val/top1", val.top1)
    live.log_metric("val/loss", val.loss)
    live.log_metric("lr", state.optimizer.param_groups[0]["lr"])
    live.next_step()
    print(
        f"epoch {state.epoch}/{epochs}: loss {stats.losses['loss']:.4f} train top1 {stats.top1:.3f} "
        f"val top1 {val.top1:.3f}"
    )
