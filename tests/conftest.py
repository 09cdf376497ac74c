"""Shared fixtures: tiny configs and datasets, and DVC kept out of the home folder."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from pipeline.config.data import PrepareParams, SyntheticConfig, TransformConfig
from pipeline.config.params import Config
from pipeline.config.schema import apply_overrides, build, to_dict
from pipeline.data.prepare import prepare

# The cores, shared among pytest-xdist's workers (`-n auto`: one per core), at most 2 threads each; the
# stage commands tests start and ONNX Runtime's sessions read the same number from OMP_NUM_THREADS.
THREADS = max(1, min(2, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))
os.environ["OMP_NUM_THREADS"] = str(THREADS)
torch.set_num_threads(THREADS)


def pytest_collection_modifyitems(items):
    """The slow tests first: under xdist they start at once, and the quick ones fill in around them."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(autouse=True, scope="session")
def _dvc_env(tmp_path_factory):
    cache = tmp_path_factory.mktemp("dvc-cache")
    os.environ.update(DVC_NO_ANALYTICS="1", DVC_SITE_CACHE_DIR=str(cache / "site"), XDG_CACHE_HOME=str(cache / "xdg"))


def tiny_config(**overrides) -> Config:
    """resnet18 at 32 px on 3 classes: seconds per epoch on a CPU. LIO on layer2 and layer3 (4x4
    and 2x2 maps); layer4's would be 1x1, which the config refuses."""
    cfg = Config()
    cfg.data.synthetic = SyntheticConfig(
        classes=3, images_per_class=16, test_fraction=0.25, image_size=32, extra_gate_per_class=20
    )
    cfg.data.transforms = TransformConfig(resize=36, crop=32, rotation=15, hflip=True)
    cfg.data.workers = 0
    cfg.model.arch = "resnet18"
    cfg.train.epochs = 2
    cfg.train.batch_size = 8
    cfg.lio.scl_channels = 32
    cfg.lio.stages = ["layer2", "layer3"]
    cfg.export.calib_images = 8
    # an untrained model on a handful of validation images: gates that pass whatever it does (the gate's
    # own behaviour is tested with real thresholds in tests/test_export.py)
    for gate in cfg.export.gates.values():
        gate.min_top1_ratio, gate.min_agreement = 0.01, 0.0
    cfg.export.fuse_preprocess = True
    cfg.engine.max_batch = 8
    cfg.report.iters = 3
    cfg.report.warmup = 1
    cfg.report.throughput_iters = 1
    cfg.report.mask_images = 3
    # dotted overrides, applied as the study (and `dvc exp run -S`) applies them
    return build(Config, apply_overrides(to_dict(cfg), overrides), "tiny_config", "").validate("tiny_config")


@pytest.fixture(scope="session")
def tiny_prepared(tmp_path_factory) -> Path:
    """A prepared tiny synthetic dataset (data/prepared layout), shared read-only."""
    out = tmp_path_factory.mktemp("tiny") / "data" / "prepared"
    prepare(tiny_config().view(PrepareParams), out)
    return out


def built_once(tmp_path_factory, name: str, build) -> Path:
    """A folder that `build(folder)` fills once per test run, by the first pytest-xdist worker that
    asks (the others wait on a lock, then share it: read-only)."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # this run's folder, above every worker's own
    root = base / name
    with FileLock(str(base / f"{name}.lock")):
        if not (root / ".built").exists():
            shutil.rmtree(root, ignore_errors=True)
            build(root)
            (root / ".built").touch()
    return root


@pytest.fixture(scope="session")
def exported(tmp_path_factory, tiny_prepared) -> Path:
    """A stage workspace after strip and export: params.yaml, data/prepared, models/ (resnet18, 32 px);
    built once per run (about 25 s), shared read-only."""
    return built_once(tmp_path_factory, "exported", lambda root: _export_workspace(root, tiny_prepared))


def _export_workspace(root: Path, tiny_prepared: Path) -> None:
    import yaml
    from click.testing import CliRunner

    from pipeline.artifacts.deployable import Deployable
    from pipeline.backbone import build_backbone
    from pipeline.config.schema import to_dict
    from pipeline.config.train import TrainParams
    from pipeline.data.transforms import preprocessing
    from pipeline.weights import save_torch
    from stages import export

    shutil.copytree(tiny_prepared, root / "data" / "prepared")
    cfg = tiny_config()
    (root / "params.yaml").write_text(yaml.safe_dump(to_dict(cfg)))
    torch.manual_seed(0)
    model = build_backbone("resnet18", 3)
    training = cfg.view(TrainParams)
    meta = Deployable("resnet18", 3, ["a", "b", "c"], preprocessing(cfg.data.transforms), training=training)
    save_torch(model.state_dict(), root / "models/resnet18.pt")
    meta.save(root / "models/resnet18.json")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        result = CliRunner().invoke(export.command, [])
    finally:
        os.chdir(cwd)
    assert result.exit_code == 0, result.output
