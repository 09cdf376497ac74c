"""The training stage on a tiny generated dataset, on the CPU."""

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from pipeline.artifacts.training import TrainingSummary
from pipeline.backbone import load_pretrained
from pipeline.config.schema import to_dict
from pipeline.config.train import TrainConfig
from pipeline.core.errors import TrainingError
from pipeline.data.manifest import read_manifest
from pipeline.train.loop import train
from pipeline.train.optim import lr_lambda
from tests.conftest import tiny_config


def workspace(tmp_path, prepared, **overrides):
    """A stage working folder: data/prepared copied in, params.yaml written."""
    shutil.copytree(prepared, tmp_path / "data" / "prepared")
    cfg = tiny_config(**overrides)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(to_dict(cfg)))
    return cfg


def lio(tmp_path, *args, **kwargs):
    return subprocess.Popen(
        [sys.executable, "-m", "stages", *args],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kwargs,
    )


def final_weights(tmp_path):
    return torch.load(tmp_path / "models" / "lio.pt", weights_only=True)["state_dict"]


def test_training_writes_model_metrics_plots_and_checkpoint(tmp_path, tiny_prepared):
    cfg = workspace(tmp_path, tiny_prepared)
    summary = train(
        cfg, tmp_path / "data/prepared", tmp_path / "models/lio.pt", tmp_path / "checkpoints", tmp_path / "dvclive"
    )
    assert summary is not None and 1 <= summary.best.epoch <= 2 and 0 <= summary.test.top1 <= 1
    metrics = json.loads((tmp_path / "dvclive/metrics.json").read_text())
    assert metrics["test"]["top1"] == summary.test.top1 and metrics["best"]["epoch"] == summary.best.epoch
    rows, _ = read_manifest(tmp_path / "data/prepared")
    assert summary.images == {s: sum(r.split == s for r in rows) for s in ("train", "val", "test")}
    # one shape: dvclive's summary is lio.pt's
    assert TrainingSummary.from_json(torch.load(tmp_path / "models/lio.pt", weights_only=True)["metrics"]) == summary
    assert metrics["step"] == 1 and "oel" in metrics["train"]["layer2"]
    plots = {p.name for p in (tmp_path / "dvclive/plots/metrics").rglob("*.tsv")}
    assert {"top1.tsv", "oel.tsv", "scl.tsv", "cls.tsv", "lr.tsv"} <= plots
    assert (tmp_path / "dvclive/plots/metrics/train/layer3/oel.tsv").exists()
    state = torch.load(tmp_path / "checkpoints/last.pt", weights_only=True)
    assert state["epoch"] == 2 and state["best"]["epoch"] == summary.best.epoch
    blob = torch.load(tmp_path / "models/lio.pt", weights_only=True)
    assert (
        blob["training"]["model"]["arch"] == "resnet18"
        and blob["classes"]
        and "oel.layer2.conv.weight" in blob["state_dict"]
    )
    assert not {"model", "lio", "settings"} & set(blob), "keys nothing reads"


def test_a_lio_pt_from_before_the_fifth_pass_still_loads(tmp_path, tiny_prepared):
    """Its `model.num_classes` and `settings` keys are read as `num_classes` and `training`."""
    from pipeline.config.train import TrainParams
    from pipeline.lio.checkpoint import TrainedModel

    workspace(tmp_path, tiny_prepared)
    cfg = tiny_config(**{"train.epochs": 1}).view(TrainParams)
    train(cfg, tmp_path / "data/prepared", tmp_path / "lio.pt", tmp_path / "ck", tmp_path / "live")
    blob = torch.load(tmp_path / "lio.pt", weights_only=True)
    old = {k: v for k, v in blob.items() if k not in ("num_classes", "training")}
    old |= {"model": {"num_classes": blob["num_classes"]}, "settings": blob["training"]}
    torch.save(old, tmp_path / "old.pt")
    trained, _ = TrainedModel.load(tmp_path / "old.pt")
    assert trained.num_classes == 3 and trained.training.model.arch == "resnet18"


def test_baseline_trains_through_the_same_code(tmp_path, tiny_prepared):
    cfg = workspace(tmp_path, tiny_prepared, **{"lio.stages": [], "train.epochs": 1})
    train(cfg, tmp_path / "data/prepared", tmp_path / "models/lio.pt", tmp_path / "checkpoints", tmp_path / "dvclive")
    weights = final_weights(tmp_path)
    assert all(k.startswith("backbone.") for k in weights)
    assert not (tmp_path / "dvclive/plots/metrics/train/layer4").exists()


def test_device_augmentation_and_the_released_codes_positives_train(tmp_path, tiny_prepared):
    """data.augment: device (run here on the CPU) with true masks moved alike, and
    lio.positives: batch, through the real loop."""
    cfg = workspace(
        tmp_path,
        tiny_prepared,
        **{"data.augment": "device", "lio.positives": "batch", "lio.mask_source": "gt", "train.epochs": 1},
    )
    summary = train(
        cfg, tmp_path / "data/prepared", tmp_path / "models/lio.pt", tmp_path / "checkpoints", tmp_path / "dvclive"
    )
    metrics = json.loads((tmp_path / "dvclive/metrics.json").read_text())
    assert summary is not None and metrics["test"]["top1"] == summary.test.top1
    assert cfg.lio.stages and all(math.isfinite(metrics["train"][s]["oel"]) for s in cfg.lio.stages)


@pytest.mark.slow
def test_interrupted_run_resumes_to_the_same_weights(tmp_path, tiny_prepared):
    overrides = {"train.epochs": 3}
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    for folder in (straight, broken):
        workspace(folder, tiny_prepared, **overrides)
    assert lio(straight, "train").wait(timeout=600) == 0

    proc = lio(broken, "train")
    checkpoint = broken / "checkpoints/last.pt"
    deadline = time.time() + 300
    while not checkpoint.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    interrupted_at = torch.load(checkpoint, weights_only=True)["epoch"]
    assert interrupted_at < 3, "the run finished before it could be interrupted"
    assert not (broken / "models/lio.pt").exists()

    resumed = lio(broken, "train")
    out, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, out
    assert f"resuming from checkpoints/last.pt after epoch {interrupted_at}" in out
    a, b = final_weights(straight), final_weights(broken)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_unfinished_checkpoint_with_other_settings_is_refused(tmp_path, tiny_prepared):
    cfg = workspace(tmp_path, tiny_prepared, **{"train.epochs": 1})
    train(cfg, tmp_path / "data/prepared", tmp_path / "models/lio.pt", tmp_path / "checkpoints", tmp_path / "dvclive")
    state = torch.load(tmp_path / "checkpoints/last.pt", weights_only=True)
    state["epoch"], state["settings"]["train"]["epochs"] = 1, 3  # pretend: an unfinished 3-epoch run
    state["fingerprint"] = "another"
    torch.save(state, tmp_path / "checkpoints/last.pt")
    cfg.model.arch = "resnet34"
    with pytest.raises(TrainingError, match=r"model.arch: 'resnet18' -> 'resnet34'.*delete the file"):
        train(
            cfg, tmp_path / "data/prepared", tmp_path / "models/lio.pt", tmp_path / "checkpoints", tmp_path / "dvclive"
        )


def test_non_finite_loss_stops_with_a_clear_message(tmp_path, tiny_prepared):
    cfg = workspace(tmp_path, tiny_prepared, **{"train.lr": 1e30, "train.warmup_epochs": 0.0})
    with pytest.raises(TrainingError, match="non-finite loss at epoch 1"):
        train(
            cfg, tmp_path / "data/prepared", tmp_path / "models/lio.pt", tmp_path / "checkpoints", tmp_path / "dvclive"
        )
    assert not (tmp_path / "models/lio.pt").exists()


def test_class_without_training_images_is_refused_before_training(tmp_path, tiny_prepared):
    workspace(tmp_path, tiny_prepared)
    manifest = tmp_path / "data/prepared/manifest.csv"
    lines = manifest.read_text().splitlines()
    label = lines[0].split(",").index("label")
    split = lines[0].split(",").index("split")
    kept = [ln for ln in lines[1:] if not (ln.split(",")[label] == "0" and ln.split(",")[split] == "train")]
    manifest.write_text("\n".join([lines[0], *kept]) + "\n")
    cfg = tiny_config()
    with pytest.raises(TrainingError, match=r"manifest.csv: class\(es\) with no training images: "):
        train(
            cfg, tmp_path / "data/prepared", tmp_path / "models/lio.pt", tmp_path / "checkpoints", tmp_path / "dvclive"
        )
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "models").exists()


def test_pretrained_weights_from_other_arch_or_missing(tmp_path):
    from pipeline.backbone import build_backbone

    torch.save(build_backbone("resnet34", 10).state_dict(), tmp_path / "r34.pth")
    with pytest.raises(TrainingError, match="does not fit resnet18"):
        load_pretrained(build_backbone("resnet18", 10), "resnet18", str(tmp_path / "r34.pth"))
    # same arch, other class count: the backbone loads, the classifier starts anew
    source = build_backbone("resnet18", 10)
    torch.save(source.state_dict(), tmp_path / "r18.pth")
    target = build_backbone("resnet18", 3)
    load_pretrained(target, "resnet18", str(tmp_path / "r18.pth"))
    assert torch.equal(target.conv1.weight, source.conv1.weight)
    os.environ["TORCH_HOME"] = str(tmp_path / "hub")
    try:
        with pytest.raises(TrainingError, match=r"resnet18-[0-9a-f]+\.pth into .*hub/checkpoints"):
            load_pretrained(target, "resnet18", "imagenet")
    finally:
        del os.environ["TORCH_HOME"]


@pytest.mark.slow
def test_torchrun_two_ranks_gloo_end_identical(tmp_path, tiny_prepared):
    workspace(tmp_path, tiny_prepared, **{"train.epochs": 1})
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533"]
    proc = subprocess.run(
        [*torchrun, "-m", "stages", "train"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    metrics = torch.load(tmp_path / "models/lio.pt", weights_only=True)["metrics"]
    assert metrics["ddp_replicas_identical"] is True


def _replica_check(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    from pipeline.train.distributed import replicas_identical

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    same, other = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    for module, value in ((same, 1.0), (other, float(rank))):  # `other` differs between rank 0 and rank 1
        for p in module.parameters():
            torch.nn.init.constant_(p, value)
    result = (replicas_identical(same), replicas_identical(other))
    dist.destroy_process_group()
    if rank == 0:
        Path(out).write_text(json.dumps(result))


def test_replicas_identical_sees_a_diverged_rank(tmp_path):
    """Real gloo ranks: equal parameters pass, different ones are caught (train then raises)."""
    out = tmp_path / "result.json"
    torch.multiprocessing.spawn(_replica_check, args=(2, 29541, str(out)), nprocs=2)
    assert json.loads(out.read_text()) == [True, False]


@pytest.mark.parametrize("schedule", ["cosine", "step"])
def test_lr_schedule_by_hand(schedule):
    """10 steps an epoch, 4 epochs, 1 warm-up epoch: 0.1 at step 0, 1.0 at the last warm-up step,
    then cosine to cos(pi * 29/30) at the last step, or x0.1 from epoch 2 and x0.01 from epoch 3."""
    t = TrainConfig(epochs=4, warmup_epochs=1.0, schedule=schedule, step_epochs=[2, 3], step_gamma=0.1)
    f = lr_lambda(t, steps_per_epoch=10)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    if schedule == "cosine":
        assert f(10) == pytest.approx(1.0)
        assert f(25) == pytest.approx(0.5)  # halfway through the 30 decay steps
        assert f(39) == pytest.approx(0.5 * (1 + math.cos(math.pi * 29 / 30)))
    else:
        assert [f(s) for s in (10, 19, 20, 29, 30, 39)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])


def test_training_lowers_the_loss(tmp_path, tiny_prepared):
    """A real run whose training loss falls: a skipped optimizer step or a zero learning rate fails here
    (`0 <= top-1 <= 1` holds whatever the weights do)."""
    cfg = workspace(tmp_path, tiny_prepared, **{"train.epochs": 6, "lio.stages": [], "train.warmup_epochs": 0.0})
    train(cfg, tmp_path / "data/prepared", tmp_path / "models/lio.pt", tmp_path / "checkpoints", tmp_path / "dvclive")
    rows = (tmp_path / "dvclive/plots/metrics/train/loss.tsv").read_text().splitlines()[1:]
    losses = [float(r.split("\t")[-1]) for r in rows]
    assert len(losses) == 6 and min(losses[-2:]) < 0.75 * losses[0], losses


def test_the_recipes_settings_reach_the_model_and_the_optimizer(tmp_path, tiny_prepared):
    """zero_init_residual starts every residual branch at zero (torchvision's); label smoothing reaches the
    classification loss; the optimizer is the fused one. Without them, the defaults of before."""
    import torch.nn.functional as F

    from pipeline.train.loop import build_model
    from pipeline.train.optim import build_optimizer

    on = tiny_config(**{"model.zero_init_residual": True, "train.label_smoothing": 0.2})
    off = tiny_config(**{"model.zero_init_residual": False, "train.label_smoothing": 0.0})
    last_norms = {
        flag: [
            block.bn2.weight
            for stage in ("layer1", "layer2", "layer3", "layer4")
            for block in model.backbone.get_submodule(stage)
        ]
        for flag, model in ((True, build_model(on, 3)), (False, build_model(off, 3)))
    }
    assert all((w == 0).all() for w in last_norms[True]) and not any((w == 0).all() for w in last_norms[False])

    torch.manual_seed(0)
    model = build_model(on, 3).train()
    x, y = torch.randn(8, 3, 32, 32), torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    positives = torch.tensor([[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2], [5, 6, 7], [4, 6, 7], [4, 5, 7], [4, 5, 6]])
    out = model(x, y, positives)
    logits, cls = out.logits.detach(), float(out.parts["cls"].detach())
    assert cls == pytest.approx(float(F.cross_entropy(logits, y, label_smoothing=0.2)), rel=1e-5)
    assert cls != pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-3)
    assert build_optimizer(on.train, model).defaults["fused"] is True


def test_the_stage_says_which_precision_it_trained_in(tmp_path, tiny_prepared):
    workspace(tmp_path, tiny_prepared, **{"train.epochs": 1, "train.amp": "false"})
    proc = lio(tmp_path, "train")
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    assert "train.amp: false: training in fp32" in out


@pytest.mark.slow
def test_the_draws_script_trains_each_seed_in_a_scratch_folder_and_prints_the_table(tmp_path, capsys):
    """benchmarks/default_draws.py on two seeds of the tiny config: one row per seed with the numbers the
    run recorded (its own metrics, not made up), the mean and spread, and the checkout untouched."""
    sys.path.insert(0, str(Path("benchmarks").resolve()))
    import default_draws

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(to_dict(tiny_config(**{"train.epochs": 2}))))
    before = sorted(p.name for p in Path(".").iterdir())
    default_draws.main(
        ["--seeds", "0", "1", "--params", str(params), "--set", "train.amp=false", "--json", str(tmp_path / "d.json")]
    )
    out = capsys.readouterr().out
    rows = json.loads((tmp_path / "d.json").read_text())["rows"]
    assert [r["seed"] for r in rows] == [0, 1] and all(r["precision"] == "fp32" for r in rows)
    assert all(len(r["val_curve"]) == r["epochs"] == 2 and r["best_val"] == max(r["val_curve"]) for r in rows)
    for r in rows:
        assert f"| {r['seed']} | {r['train_top1_last']:.3f} | {r['best_val']:.3f} ({r['best_epoch']}/2) |" in out
    mean = sum(r["test_top1"] for r in rows) / 2
    assert f"| mean | {sum(r['train_top1_last'] for r in rows) / 2:.3f} |" in out and f"{mean:.3f}" in out
    assert "spread (max - min)" in out and sorted(p.name for p in Path(".").iterdir()) == before


def test_the_draws_summary_rows_are_computed_from_the_seed_rows():
    """The mean, minimum and spread under benchmarks/default_draws.py's table come from its rows."""
    sys.path.insert(0, str(Path("benchmarks").resolve()))
    import default_draws

    rows = [
        {"seed": s, "train_top1_last": t, "best_val": v, "best_epoch": 9, "epochs": 18, "test_top1": x}
        | {"train_seconds": sec, "precision": "bf16"}
        for s, t, v, x, sec in ((0, 0.96, 0.98, 0.97, 150.0), (7, 0.90, 0.93, 0.91, 170.0), (9, 0.99, 1.0, 0.99, 160.0))
    ]
    lines = default_draws.table(rows).splitlines()
    assert lines[-3].startswith("| mean | 0.950 | 0.970 | 0.957 | 160 |")
    assert lines[-2].startswith("| minimum | 0.900 | 0.930 | 0.910 | 150 |")
    assert lines[-1].startswith("| spread (max - min) | 0.090 | 0.070 | 0.080 | 20 |")


def test_the_default_recipe_reaches_the_optimizer_the_schedule_and_the_checkpoints(
    tmp_path, tiny_prepared, monkeypatch
):
    """params.yaml's train section as shipped: its lr in every parameter group, its warm-up and epochs in
    the schedule (cosine to zero at the last step), its label smoothing in the loss; and a checkpoint only
    every `checkpoint_every` epochs and after the last."""
    from pipeline.config.schema import build
    from pipeline.train import loop
    from pipeline.train.optim import build_optimizer

    shipped = yaml.safe_load(Path("params.yaml").read_text())["train"]
    t = build(TrainConfig, shipped, "params.yaml", "train")
    assert (t.epochs, t.label_smoothing, t.checkpoint_every) == (18, 0.1, 6)
    cfg = tiny_config(**{f"train.{k}": shipped[k] for k in ("lr", "label_smoothing", "warmup_epochs", "epochs")})
    model = loop.build_model(cfg, 3)
    assert model.label_smoothing == t.label_smoothing
    groups = build_optimizer(cfg.train, model).param_groups
    assert {g["lr"] for g in groups} == {t.lr * m for m in {1.0, t.head_lr_mult}}
    steps = 10
    factor = lr_lambda(cfg.train, steps)
    warmup = int(t.warmup_epochs * steps)
    assert factor(warmup - 1) == pytest.approx(1.0) and factor(0) == pytest.approx(1 / warmup)
    assert factor(t.epochs * steps - 1) < 1e-3 < factor(t.epochs * steps // 2)

    workspace(tmp_path, tiny_prepared, **{"train.epochs": 3, "train.checkpoint_every": 2})
    saved = []
    real = loop.save_checkpoint
    monkeypatch.setattr(
        loop, "save_checkpoint", lambda path, state, *a: (saved.append(state.epoch), real(path, state, *a))
    )
    cfg = tiny_config(**{"train.epochs": 3, "train.checkpoint_every": 2})
    train(cfg, tmp_path / "data/prepared", tmp_path / "lio.pt", tmp_path / "checkpoints", tmp_path / "dvclive")
    assert saved == [2, 3]
