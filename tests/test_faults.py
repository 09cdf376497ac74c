"""Fault injection: stale data, broken files, full disks, interrupted and concurrent runs.

Each case asserts the one-line message (naming the file and the fix) and that no output
was lost or left half-written. A full disk and a read-only folder are simulated by making
the writer fail the way the OS does (this machine runs as root, where permissions do not
bite, and cannot mount a small tmpfs).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from pipeline.core import paths
from pipeline.core.errors import ArtifactError, PipelineError, TrainingError
from pipeline.core.io import OutputError, exclusive, write_json
from pipeline.data.dataset import ImageError, load_image
from pipeline.data.prepare import prepare
from pipeline.deploy.runners import load_deployable
from pipeline.evaluate.score import backends
from pipeline.lio.checkpoint import TrainedModel
from pipeline.train.checkpoint import TrainState, resume, truncate_live_plots
from pipeline.train.loop import train
from pipeline.weights import save_torch
from stages.cli import main
from tests.conftest import tiny_config
from tests.test_data import make_imagefolder, save_image


def leftovers(folder):
    return [p.name for p in folder.rglob("*") if ".tmp-" in p.name]


# ---------------------------------------------------------------- 1. stale data
def test_an_image_deleted_from_data_root_stops_training(tmp_path):
    root = tmp_path / "ds"
    make_imagefolder(root)
    cfg = tiny_config(**{"data.format": "imagefolder", "data.root": str(root), "train.epochs": 1})
    prepare(cfg, tmp_path / "prepared")
    gone = root / "train/cat/1.png"
    gone.unlink()
    with pytest.raises(TrainingError) as e:
        train(cfg, tmp_path / "prepared", tmp_path / "lio.pt", tmp_path / "ck", tmp_path / "live")
    assert f"lists {gone}, which is missing" in str(e.value) and "dvc repro prepare" in str(e.value)
    save_image(gone, size=(20, 20))  # same name, other content: caught by its size
    with pytest.raises(TrainingError, match="bytes, not .*dvc repro prepare"):
        train(cfg, tmp_path / "prepared", tmp_path / "lio.pt", tmp_path / "ck", tmp_path / "live")
    assert not (tmp_path / "lio.pt").exists()


def test_files_that_are_not_images_are_listed(tmp_path):
    root = tmp_path / "ds"
    make_imagefolder(root)
    (root / "train/cat/scan.tif").write_bytes(b"II*\0")
    (root / "train/dog/anim.gif").write_bytes(b"GIF89a")
    cfg = tiny_config(**{"data.format": "imagefolder", "data.root": str(root)})
    with pytest.warns(UserWarning, match=r"ignored 2 file\(s\).*\(\.gif, \.tif\).*scan\.tif"):
        prepare(cfg, tmp_path / "prepared")


def test_a_bad_image_message_is_not_cut(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    with pytest.raises(ImageError) as e:
        load_image(bad)
    message = str(e.value)
    assert message.startswith(f"{bad}: cannot decode image (") and message.endswith(")")
    assert len(message) > len(str(bad)) + 30  # the decoder's whole reason, not a 120-character stub


# ---------------------------------------------------------------- 3. broken files
def truncate(path, keep=200):
    path.write_bytes(path.read_bytes()[:keep])


def test_truncated_checkpoint_names_the_file_and_how_to_start_over(tmp_path):
    path = tmp_path / "last.pt"
    save_torch({"epoch": 1, "weights": torch.zeros(1000)}, path)
    truncate(path)
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    state = TrainState(model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0))
    with pytest.raises(ArtifactError, match=f"{path}: cannot be read, it is truncated or corrupt.*delete it to start"):
        resume(path, "stamp", {}, state)


def test_truncated_trained_and_deployable_models(tmp_path, exported):
    trained = tmp_path / "lio.pt"
    save_torch({"state_dict": {}, "model": {}}, trained)
    truncate(trained, 100)
    with pytest.raises(ArtifactError, match=f"{trained}: cannot be read.*dvc repro train"):
        TrainedModel.load(trained)
    weights = tmp_path / "resnet18.pt"
    shutil.copy(exported / "models/resnet18.pt", weights)
    shutil.copy(exported / "models/resnet18.json", tmp_path / "resnet18.json")
    truncate(weights, 4096)
    with pytest.raises(ArtifactError, match=f"{weights}: cannot be read.*dvc repro strip"):
        load_deployable(weights)


@pytest.mark.parametrize(
    "text,match",
    [
        ("{not json", "not valid JSON"),
        (
            '{"arch": "resnet18"}',
            r"not the Deployable this version writes \(Deployable lacks num_classes, classes, preprocess\)",
        ),
    ],
)
def test_corrupt_model_metadata(tmp_path, exported, text, match):
    weights = tmp_path / "resnet18.pt"
    shutil.copy(exported / "models/resnet18.pt", weights)
    (tmp_path / "resnet18.json").write_text(text)
    with pytest.raises(ArtifactError, match=f"resnet18.json: {match}.*dvc repro strip"):
        load_deployable(weights)


def test_weights_of_another_architecture_show_the_mismatch(tmp_path, exported):
    weights = tmp_path / "resnet18.pt"
    shutil.copy(exported / "models/resnet18.pt", weights)
    meta = json.loads((exported / "models/resnet18.json").read_text())
    (tmp_path / "resnet18.json").write_text(json.dumps({**meta, "arch": "resnet34"}))
    with pytest.raises(ArtifactError) as e:
        load_deployable(weights)
    assert "does not fit a resnet34" in str(e.value) and "Missing key(s)" in str(e.value)


# ---------------------------------------------------------------- 3. full disk, read-only folder
def test_full_disk_while_saving_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints/last.pt"
    save_torch({"epoch": 1}, path)
    before = path.read_bytes()

    def full_disk(obj, f, *args, **kwargs):  # what torch raises when the disk fills mid-write
        f.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 4096 vs 4032")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OutputError) as e:
        save_torch({"epoch": 2}, path)
    assert str(e.value).startswith(f"could not write {path}: [enforce fail") and "previous file is unchanged" in str(
        e.value
    )
    assert path.read_bytes() == before and not leftovers(tmp_path)


def test_the_same_weights_are_the_same_bytes(tmp_path):
    """torch names a file's archive after the file: saved through the random temporary name, the same
    weights made other bytes (another DVC hash) on every run."""
    weights = {"conv.weight": torch.arange(12.0).view(3, 4)}
    save_torch(weights, tmp_path / "a.pt")
    save_torch(weights, tmp_path / "b.pt")
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()


def test_read_only_folder_says_what_could_not_be_written(tmp_path, monkeypatch):
    import tempfile

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", denied)
    target = tmp_path / "reports/metrics.json"
    with pytest.raises(OutputError, match=f"could not write {target}: Permission denied; nothing was written"):
        write_json(target, {"a": 1})
    assert not target.exists()


def test_full_disk_in_the_cli_is_one_line(tmp_path, tiny_prepared, monkeypatch):
    """The stage exits 1 with the message, no traceback."""
    import yaml

    from pipeline.config.schema import to_dict

    shutil.copytree(tiny_prepared, tmp_path / "data/prepared")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(to_dict(tiny_config(**{"train.epochs": 1}))))
    monkeypatch.chdir(tmp_path)

    def full_disk(*args, **kwargs):
        raise RuntimeError("unexpected pos 1 vs 0")

    monkeypatch.setattr(torch, "save", full_disk)
    result = CliRunner().invoke(main, ["train"])
    assert result.exit_code == 1 and "error: could not write checkpoints/last.pt" in result.output
    assert "Traceback" not in result.output and not leftovers(tmp_path)


# ---------------------------------------------------------------- 3. report and predict
def test_report_lists_every_missing_backend_with_the_reason(tmp_path):
    from stages.score import score_files

    _, skipped = backends(torch.nn.Linear(2, 2), score_files("resnet18", tmp_path), False, None, None)
    for precision in ("fp32", "fp16", "int8"):
        assert f"{tmp_path / paths.ONNX[precision]} not found" in skipped[f"onnxruntime-{precision}"]
    assert "engine.json not found" in skipped["tensorrt"]


def test_cpu_and_cuda_backends_get_their_own_model_copies(tmp_path, monkeypatch):
    """`nn.Module.to` moves in place: the CPU row must keep CPU weights when a GPU row exists.
    A CUDA device cannot run here, so the second device is `meta` (also not the CPU)."""
    from pipeline.deploy.runners import torch_runner

    model = torch.nn.Linear(3, 2)
    cpu = torch_runner(model, "cpu")
    torch_runner(model, "meta")  # would have moved `model` itself before the fix
    assert next(model.parameters()).device.type == "cpu"
    out = cpu(np.ones((1, 3), dtype=np.float32))
    assert out.shape == (1, 2) and np.isfinite(out).all()


def test_predict_skips_an_unreadable_image_unless_strict(tmp_path, exported):
    folder = tmp_path / "images"
    folder.mkdir()
    source = sorted((exported / "data/prepared/synthetic/images/001.arrangement_01").iterdir())[:2]
    for p in source:
        shutil.copy(p, folder / p.name)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    model = str(exported / "models/onnx/model.onnx")
    result = CliRunner().invoke(main, ["predict", model, str(folder), "-k", "1"])
    assert result.exit_code == 2
    assert f"warning: skipped {folder / 'broken.png'}: cannot decode image" in result.output
    assert "1 of 3 image(s) could not be read" in result.output and str(folder / source[0].name) in result.output
    strict = CliRunner().invoke(main, ["predict", model, str(folder), "--strict"])
    assert strict.exit_code == 1 and "broken.png: cannot decode image" in strict.output


# ---------------------------------------------------------------- 4. interrupted and concurrent runs
KILLED_WRITER = """
import os, signal, sys
from pipeline.core.io import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    tmp.write_bytes(b"x" * 100_000)
    os.kill(os.getpid(), signal.SIGKILL)  # dies mid-write, as `kill -9` during torch.save
"""


def test_kill_9_during_a_checkpoint_write_leaves_a_temporary_that_the_next_run_removes(tmp_path, tiny_prepared):
    checkpoints = tmp_path / "checkpoints"
    proc = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(checkpoints / "last.pt")], cwd=os.getcwd())
    assert proc.returncode == -9 and leftovers(checkpoints) and not (checkpoints / "last.pt").exists()
    shutil.copytree(tiny_prepared, tmp_path / "data/prepared")
    cfg = tiny_config(**{"train.epochs": 1})
    train(cfg, tmp_path / "data/prepared", tmp_path / "models/lio.pt", checkpoints, tmp_path / "dvclive")
    assert not leftovers(tmp_path) and (checkpoints / "last.pt").exists()


def test_resumed_metrics_log_each_epoch_once(tmp_path):
    """A run killed after logging epoch 3 but before its checkpoint landed resumes at step 2."""
    tsv = tmp_path / "plots/metrics/train/loss.tsv"
    tsv.parent.mkdir(parents=True)
    tsv.write_text("step\tloss\n0\t1.0\n1\t0.9\n2\t0.8\n")
    truncate_live_plots(tmp_path, 2)
    assert tsv.read_text() == "step\tloss\n0\t1.0\n1\t0.9\n"


def test_a_second_prepare_is_refused_while_one_runs(tmp_path):
    out = tmp_path / "data/prepared"
    with exclusive(out, "`lio prepare`"):
        with pytest.raises(PipelineError, match=r"data/prepared is being written by `lio prepare` \(pid \d+\)"):
            prepare(tiny_config(), out)
    assert not out.exists() and not leftovers(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert prepare(tiny_config(), out).classes == 3  # the lock is released with its holder
