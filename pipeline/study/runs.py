"""Running the study as DVC experiments and reading back what they recorded.

Queued and running experiments come from `dvc.api.exp_show` (its `State` column), the commits
experiments ran from from DVC's `Repo.experiments.ls`, and each run's files from
`dvc exp show --json`, which alone carries every output's hash: a run's localisation counts only
if reports/extent.json was computed from that run's models/lio.pt (tied by the file's hash).
"""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from pipeline.artifacts.base import A
from pipeline.artifacts.extent import Extent, StageExtent
from pipeline.artifacts.study import Study, StudyRun
from pipeline.artifacts.training import LiveMetrics, TrainingSummary
from pipeline.config.schema import apply_overrides
from pipeline.core import paths
from pipeline.core.errors import ArtifactError
from pipeline.core.io import write_text
from pipeline.study.presets import ARMS, PRESETS, PRETRAIN, PRETRAINED, StudyError, grid

#: dvclive's plot of validation top-1, one row per epoch (kept in git, so in each experiment's commit)
VAL_CURVE = paths.LIVE / "plots/metrics/val/top1.tsv"
NAME = re.compile(r"^study-(?P<preset>[a-z0-9]+)-(?P<arm>[a-z0-9.-]+)-s(?P<seed>\d+)$")


def queue(
    preset: str,
    seeds: int,
    other_seeds: int,
    arms: list[str] | None = None,
    pretrained: Path = PRETRAINED,
    recorded: Path | None = Path("reports/study.json"),
) -> list[str]:
    """Queues every run with `dvc exp run --queue`, except those already in `recorded` or still
    queued or running (a study cut short by the end of a session goes on where it stopped, and
    queueing twice adds nothing); returns the names."""
    if preset == "transfer" and not pretrained.exists():
        raise StudyError(
            f"the transfer preset fine-tunes {pretrained}, which is missing: run `lio study pretrain` first"
        )
    done = pending()
    if recorded is not None:
        done |= {r.name for p in Study.read(recorded).presets.values() for r in p.runs}
    names = []
    target = [PRESETS[preset].target] if PRESETS[preset].target else []
    for name, overrides in grid(preset, seeds, other_seeds, arms, pretrained):
        if name in done:
            continue
        _dvc("exp", "run", "--queue", "--name", name, *(a for o in overrides for a in ("-S", o)), *target)
        names.append(name)
    return names


def _dvc(*args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], capture_output=True, text=True)
    if proc.returncode:
        raise StudyError(f"`dvc {' '.join(args)}` failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


def pending() -> set[str]:
    """Names of the experiments DVC's queue holds as queued or running, whatever commit they were
    queued from (`dvc exp show` lists only the current commit's: after a commit, a study queued
    before it was queued again, every run twice)."""
    from dvc.repo import Repo

    with Repo() as repo:
        queue = repo.experiments.celery_queue
        return {e.name for e in [*queue.iter_queued(), *queue.iter_active()] if e.name}


def baselines(preset: str) -> list[str]:
    """The commits that experiments of `preset` ran from."""
    from dvc.repo import Repo

    with Repo() as repo:
        listed = repo.experiments.ls(all_commits=True)
    return [base for base, exps in listed.items() if any(name.startswith(f"study-{preset}-") for name, _ in exps)]


def show(preset: str) -> list:
    """`dvc exp show --json` of the commits experiments of `preset` ran from (not `-A`, which walks
    every commit of the repository: minutes per call once the study has committed a few dozen times)."""
    revs = baselines(preset)
    return json.loads(_dvc("exp", "show", "--json", *(a for r in revs for a in ("--rev", r)))) if revs else []


def pretrain(work: Path, out: Path, params: Path = Path("params.yaml")) -> TrainingSummary | None:
    """The transfer preset's backbone: a plain ResNet-18 trained on presets.PRETRAIN_CLASSES synthetic
    classes disjoint from the study's (same arrangement stream, earlier classes), saved as a
    state dict for `model.pretrained`. Runs prepare and train in `work`, once."""
    import yaml

    from pipeline.config.data import PrepareParams
    from pipeline.config.params import load_config
    from pipeline.config.train import TrainParams
    from pipeline.data.prepare import prepare
    from pipeline.lio.checkpoint import TrainedModel
    from pipeline.train.loop import train
    from pipeline.weights import save_torch

    data = apply_overrides(yaml.safe_load(params.read_text()), PRETRAIN)
    work.mkdir(parents=True, exist_ok=True)
    write_text(work / "params.yaml", yaml.safe_dump(data, sort_keys=False))
    cfg = load_config(work / "params.yaml")
    prepare(cfg.view(PrepareParams), work / "prepared")
    summary = train(cfg.view(TrainParams), work / "prepared", work / "model.pt", work / "checkpoints", work / "dvclive")
    _, model = TrainedModel.load(work / "model.pt")
    save_torch(model.backbone.state_dict(), out)
    return summary


def experiments(shown) -> Iterator[tuple[str, str | None, dict]]:
    """(name, commit, data) of every named experiment in `dvc exp show --json`, whatever the nesting.
    Failed runs are left out: their files are the queued snapshot's, another run's results."""
    if isinstance(shown, dict):
        data = shown.get("data")
        if isinstance(data, dict) and shown.get("name") and "params" in data and not shown.get("error"):
            yield shown["name"], shown.get("rev") or data.get("rev"), data
        for v in shown.values():
            yield from experiments(v)
    elif isinstance(shown, list):
        for v in shown:
            yield from experiments(v)


def _document(data: dict, file: Path, kind: type[A]) -> A | None:
    """A run's metrics file, read through its artifact class; None when the run has none or an older
    one this version cannot read (a run still going, or stopped before the stage that writes it)."""
    node = (data.get("metrics", {}).get(str(file)) or {}).get("data")
    try:
        return kind.from_json(node, f"{file} of the experiment") if node else None
    except ArtifactError:
        return None


def localisation(data: dict) -> dict[str, StageExtent]:
    """The run's reports/extent.json stages, if it was computed from this run's models/lio.pt (a run
    stopped before its localise stage holds the queued snapshot's file, another model's)."""
    model = ((data.get("outs") or {}).get(str(paths.TRAINED)) or {}).get("hash")
    extent = _document(data, paths.EXTENT, Extent)
    return extent.stages if extent and model and extent.model_md5 == model else {}


def read_curve(tsv: str) -> list[float]:
    """dvclive's plot of validation top-1 (step, top1 per line) -> the value of every epoch."""
    return [float(row["top1"]) for row in csv.DictReader(io.StringIO(tsv), delimiter="\t")]


def val_curve(rev: str | None) -> list[float] | None:
    """Validation top-1 of every epoch, read from the run's commit (dvclive's plot is kept in git)."""
    if not rev:
        return None
    shown = subprocess.run(["git", "show", f"{rev}:{VAL_CURVE}"], capture_output=True, text=True)
    return None if shown.returncode else read_curve(shown.stdout) or None


def records(shown, preset: str, machine: str | None = None) -> list[StudyRun]:
    """One record per finished study run of `preset` (runs without test metrics are still going or
    failed), stamped with `machine`, where they ran (experiments live only there)."""
    out = {}
    for name, rev, data in experiments(shown):
        m = NAME.match(name)
        if not m or m["preset"] != preset or m["arm"] not in ARMS:
            continue
        if data.get("timestamp") is None:  # still running: its files are still the queued snapshot's (seen here)
            continue
        live = _document(data, paths.LIVE / "metrics.json", LiveMetrics)
        if live is None:
            continue
        params = ((data.get("params") or {}).get("params.yaml") or {}).get("data") or {}
        out[name] = StudyRun(
            name=name,
            arm=m["arm"],
            seed=int(m["seed"]),
            test_top1=live.test.top1,
            best_val_top1=live.best.val_top1,
            best_epoch=live.best.epoch,
            train_seconds=live.train_seconds,
            localisation=localisation(data),
            train_top1_last=live.train.top1 if live.train else None,
            epochs=(params.get("train") or {}).get("epochs"),
            machine=machine,
            val_curve=val_curve(rev),
        )
    return sorted(out.values(), key=lambda r: (list(ARMS).index(r.arm), r.seed))
