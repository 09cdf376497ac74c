"""`lio strip`: models/lio.pt -> models/<arch>.pt (+ .json) and reports/parity.json."""
from pathlib import Path

import click
import torch

from pipeline.data.dataset import load_image
from pipeline.data.prepare import read_manifest
from pipeline.data.transforms import ClassificationPresetEval
from pipeline.deploy import deploy_meta, meta_path, write_deployable
from pipeline.io import write_json
from pipeline.lio.model import build_backbone
from pipeline.strip import ParityError, explain, prove_parity, report
from pipeline.train import load_trained
from stages.common import with_config
from stages.prepare import OUT as PREPARED
from stages.train import OUT as TRAINED

REPORT = Path("reports/parity.json")
TEST_IMAGES = 8


def deployable_path(arch: str) -> Path:
    return Path("models") / f"{arch}.pt"


@click.command("strip")
@with_config
def command(cfg):
    """Strip the heads and prove the result is a plain torchvision model."""
    model, blob = load_trained(TRAINED)
    rows, classes = read_manifest(PREPARED)
    preset = ClassificationPresetEval(cfg.data.transforms)
    test = [r for r in rows if r["split"] == "test"][:TEST_IMAGES]
    images = torch.stack([preset(load_image(r["path"], r["crop_bottom"])) for r in test])
    arch, k = blob["model"]["arch"], blob["model"]["num_classes"]
    checks, stripped = prove_parity(model, model.deployable(), lambda: build_backbone(arch, k), images,
                                    cfg.data.transforms.crop)
    result = report(checks)
    write_json(REPORT, result)
    out = deployable_path(arch)
    if not result["passed"]:
        out.unlink(missing_ok=True)
        raise ParityError(f"parity failed, no deployable model written (details in {REPORT}):\n{explain(checks)}")
    write_deployable(out, meta_path(out), stripped, deploy_meta(arch, blob["classes"], blob["preprocess"]))
    click.echo(f"parity passed ({', '.join(c.name for c in checks)}); wrote {out} and {meta_path(out)}")
