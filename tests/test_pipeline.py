"""End to end: `dvc repro` in a temporary copy of the repository, then an experiment."""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.artifacts.extent import MAPS, Extent
from pipeline.artifacts.parity import ParityProof
from pipeline.artifacts.study import Study
from pipeline.artifacts.training import TrainingSummary

ROOT = Path(__file__).resolve().parents[1]
SMALL = {  # every stage runs, in about a minute
    "data": {
        "synthetic": {
            "classes": 3,
            "images_per_class": 16,
            "test_fraction": 0.25,
            "image_size": 32,
            "extra_gate_per_class": 10,
            "extra_select_per_class": 10,
        },
        "transforms": {"resize": 36, "crop": 32},
        "workers": 0,
    },
    "model": {"arch": "resnet18"},
    "lio": {"scl_channels": 32, "stages": ["layer2", "layer3"]},  # at 32 px layer4's map is 1x1
    "train": {"epochs": 1, "batch_size": 12},
    # one epoch of training: gates open, so that every variant reaches the report (tests/test_export.py tests them)
    "export": {
        "calib_images": 8,
        "gates": {p: {"min_top1_ratio": 0.01, "min_agreement": 0.0} for p in ("fp16", "int8", "int8_cpu")},
    },
    "engine": {"max_batch": 8, "opt_batch": 4},
    "report": {"iters": 3, "warmup": 1, "throughput_iters": 1, "mask_images": 3},
}


def merge(base, over):
    for k, v in over.items():
        base[k] = merge(base.get(k, {}), v) if isinstance(v, dict) else v
    return base


def sh(args, cwd, env):
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout


def all_data(node):
    """Every experiment record in `dvc exp show --json`, whatever the nesting."""
    if isinstance(node, dict):
        if "params" in node and "metrics" in node:
            yield node
        for v in node.values():
            yield from all_data(v)
    elif isinstance(node, list):
        for v in node:
            yield from all_data(v)


def small_repo(tmp_path: Path) -> tuple[Path, dict]:
    """A git repository holding a copy of this one's files, with the SMALL params; and the environment
    its commands run in."""
    repo = tmp_path / "repo"
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for rel in listed:
        if (ROOT / rel).is_file():
            (repo / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, repo / rel)
    params = merge(yaml.safe_load((repo / "params.yaml").read_text()), SMALL)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "GIT_AUTHOR_NAME": "ci",
        "GIT_AUTHOR_EMAIL": "ci@example.invalid",
        "GIT_COMMITTER_NAME": "ci",
        "GIT_COMMITTER_EMAIL": "ci@example.invalid",
    }
    sh(["git", "init", "-q"], repo, env)
    sh(["git", "add", "-A"], repo, env)
    sh(["git", "commit", "-qm", "copy"], repo, env)
    return repo, env


DVC = [sys.executable, "-m", "dvc"]


@pytest.mark.slow
def test_dvc_repro_then_experiment(tmp_path):
    repo, env = small_repo(tmp_path)
    sh([*DVC, "repro"], repo, env)

    assert (repo / "data/prepared/manifest.csv").exists()
    parity = ParityProof.load(repo / "reports/parity.json")
    assert parity.passed and len(parity.checks) == 5 and all(c.passed for c in parity.checks)
    for rel in [
        "models/lio.pt",
        "models/resnet18.pt",
        "models/resnet18.json",
        "models/onnx/model.onnx",
        "models/onnx/model.fp16.onnx",
        "models/onnx/model.int8.onnx",
        "models/onnx/model.int8_cpu.onnx",
        "models/engine/engine.json",
        "reports/runtime.json",
        "models/MODEL_CARD.md",
        "reports/report.md",
        "reports/masks.png",
        "reports/latency.json",
        "dvclive/metrics.json",
    ]:
        assert (repo / rel).exists(), rel
    metrics = json.loads((repo / "reports/metrics.json").read_text())
    backends = {"pytorch", "onnxruntime-fp32", "onnxruntime-fp16", "onnxruntime-int8", "onnxruntime-int8_cpu"}
    assert backends <= set(metrics["backends"])
    assert metrics["backends"]["onnxruntime-fp32"]["agreement"] == 1.0
    # TensorRT: measured where it is installed and a GPU runs it, else listed as skipped with why
    assert "tensorrt" in metrics["skipped"] or any(b.startswith("tensorrt-") for b in metrics["backends"])
    extent = Extent.load(repo / "reports/extent.json")
    assert set(extent.stages) == {"layer2", "layer3"}
    assert extent.model_md5 == hashlib.md5((repo / "models/lio.pt").read_bytes()).hexdigest()
    for stage in extent.stages.values():  # m' and M beside every reference map, pointing beside its chance rate
        assert set(stage.iou) == set(MAPS)
        assert all(0 <= v <= 1 for v in [*stage.iou.values(), stage.pointing, stage.pointing_chance])
    report = (repo / "reports/report.md").read_text()
    assert "| layer2 | 4 |" in report and "ceiling" in report and "## Per class" in report
    assert "## What to deploy" in report and "**CPU**" in report and "## CPU runtimes" in report
    runtime = json.loads((repo / "reports/runtime.json").read_text())
    assert runtime["chosen"] in {c["name"] for c in runtime["candidates"] if c["status"] in ("reference", "passed")}
    assert (repo / "models/triton_cpu/files.json").exists() and (repo / "models/triton/lio/config.pbtxt").exists()
    card = (repo / "models/MODEL_CARD.md").read_text()
    assert "Model card: resnet18 trained with Look-into-Object" in card and "| int8_cpu | passed |" in card
    confusion = json.loads((repo / "reports/confusion.json").read_text())
    assert (
        len(confusion)
        == json.loads((repo / "reports/export.json").read_text())["variants"]["fp32"]["parity_vs_pytorch"]["images"]
    )
    assert "| onnxruntime-int8 | CPUExecutionProvider |" in (repo / "reports/report.md").read_text()
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    config = (repo / "models/triton/lio_onnx/config.pbtxt").read_text()
    assert text_format.Parse(config, model_config_pb2.ModelConfig()).max_batch_size == 8

    # The plots page opens offline: every script is inline, nothing is fetched from a CDN.
    sh([*DVC, "plots", "show", "-o", "plots-page"], repo, env)
    page = (repo / "plots-page/index.html").read_text()
    assert re.search(r"<(script|link|img)[^>]+(src|href)=[\"']?(https?:)?//", page) is None
    assert "vegaEmbed" in page and "confusion" in page.lower() and "localisation" in page
    shutil.rmtree(repo / "plots-page")
    assert "Data and pipelines are up to date" in sh([*DVC, "status"], repo, env)
    extra = repo / "data/raw/new-image.png"  # data.root is a dep of prepare: DVC sees an edited dataset
    extra.write_bytes(b"new")
    status = sh([*DVC, "status"], repo, env)
    assert "prepare:" in status and "modified:" in status and "data/raw" in status
    extra.unlink()
    sh(["git", "add", "-A"], repo, env)  # the baseline: dvc.lock and the small metrics files
    sh(["git", "commit", "-qm", "baseline run"], repo, env)

    # The paper's variants, each one -S away: an experiment up to `localise` (the stages a study reads)
    # trains and scores the heads it names; `lio study collect` finds them through the real `dvc exp show`.
    # (each starts from the last one's params.yaml)
    runs = {
        "study-cpu-lio-gm-s0": ["lio.mask_source=gt"],
        "study-cpu-scl-only-s0": ["lio.mask_source=pseudo", "lio.oel=false"],
    }
    for name, overrides in runs.items():
        settings = [a for o in overrides for a in ("-S", o)]
        out = sh([*DVC, "exp", "run", "localise", "--name", name, *settings], repo, env)
        assert "Stage 'prepare' didn't change, skipping" in out and "Running stage 'train'" in out
        assert "Running stage 'export'" not in out
    sh(["lio", "study", "collect", "--preset", "cpu", "--out", "collected"], repo, env)
    collected = Study.read(repo / "collected/study.json").presets["cpu"].runs
    assert [r.name for r in collected] == ["study-cpu-scl-only-s0", "study-cpu-lio-gm-s0"]  # in ARMS order
    for r in collected:  # m' exists only where OEL trained
        assert set(r.localisation) == {"layer2", "layer3"} and ("m'" in r.localisation["layer2"].iou) is (
            r.arm == "lio-gm"
        )
    # the workspace holds the last run's results (scl-only's)
    assert collected[0].test_top1 == TrainingSummary.load(repo / "dvclive/metrics.json").test.top1
    shutil.rmtree(repo / "collected")
    shown = json.loads(sh([*DVC, "exp", "show", "--json"], repo, env))
    seen = {  # (mask source, OEL) of every record with test metrics: the baseline and each experiment
        (r["params"]["params.yaml"]["data"]["lio"]["mask_source"], r["params"]["params.yaml"]["data"]["lio"]["oel"])
        for r in all_data(shown)
        if "test" in (r["metrics"].get("dvclive/metrics.json", {}).get("data") or {})
    }
    assert {("pseudo", True), ("gt", True), ("pseudo", False)} <= seen, shown
