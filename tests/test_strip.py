"""The parity proof passes on a trained model and fails readably on altered backbones."""

import json
import types

import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torch import nn

from pipeline.artifacts.parity import ParityProof
from pipeline.backbone import build_backbone
from pipeline.lio import LIOModel, group_positives
from pipeline.strip import prove_parity


def trained_model(arch="resnet18", k=4):
    torch.manual_seed(0)
    model = LIOModel(arch, k, ["layer3", "layer4"], scl_channels=16).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = torch.randn(8, 3, 64, 64), torch.arange(2).repeat_interleave(4)
    for _ in range(2):
        opt.zero_grad()
        model(x, y, group_positives(2, 3)).loss.backward()
        opt.step()
    return model.eval()


def run(model, k=4):
    images = torch.randn(3, 3, 64, 64)
    return prove_parity(model, model.plain(), lambda: build_backbone("resnet18", k), images, 64)


def by_name(checks):
    return {c.name: c for c in checks}


def test_parity_passes_on_a_trained_model():
    model = trained_model()
    checks, stripped = run(model)
    assert all(c.passed for c in checks), ParityProof.of(checks).explain()
    assert [c.name for c in checks] == ["strict_load", "names_shapes_dtypes", "graph", "logits_bitwise", "params_macs"]
    plain = build_backbone("resnet18", 4).eval()
    plain.load_state_dict(stripped, strict=True)
    assert not any(k.startswith(("oel", "scl")) for k in stripped)
    c = by_name(checks)["params_macs"]
    assert c.detail["params"] == sum(p.numel() for p in plain.parameters()) and c.detail["macs"] > 0


def test_extra_layer_fails():
    model = trained_model()
    model.backbone.fc = nn.Sequential(nn.Linear(512, 512), nn.Linear(512, 4))
    checks, _ = run(model)
    c = by_name(checks)
    assert not c["strict_load"].passed and not c["names_shapes_dtypes"].passed and not c["graph"].passed
    assert not c["params_macs"].passed and not c["logits_bitwise"].passed
    text = ParityProof.of(checks).explain()
    assert "+ fc.0.weight" in text and "- fc.weight" in text and "parameters:" in text and "multiply-adds:" in text


class RenamedLinear(nn.Module):
    """A classifier whose parameters are called w and b instead of weight and bias."""

    def __init__(self, linear):
        super().__init__()
        self.w, self.b = nn.Parameter(linear.weight.detach().clone()), nn.Parameter(linear.bias.detach().clone())

    def forward(self, x):
        return F.linear(x, self.w, self.b)


def test_renamed_parameter_fails():
    model = trained_model()
    model.backbone.fc = RenamedLinear(model.backbone.fc)
    checks, _ = run(model)
    c = by_name(checks)
    assert not c["strict_load"].passed and "fc.w" in ParityProof.of(checks).explain()
    assert "fc.weight" in " ".join(c["names_shapes_dtypes"].diff)
    assert not c["graph"].passed  # a functional linear instead of the fc module


def test_changed_forward_fails():
    model = trained_model()
    bb = model.backbone

    def forward_without_maxpool(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))

    bb.forward = types.MethodType(forward_without_maxpool, bb)
    checks, _ = run(model)
    c = by_name(checks)
    assert c["strict_load"].passed and c["names_shapes_dtypes"].passed  # same weights...
    assert not c["graph"].passed and not c["logits_bitwise"].passed and not c["params_macs"].passed  # ...other network
    assert any("maxpool" in line for line in c["graph"].diff)


def test_strip_stage_writes_nothing_deployable_on_failure(tmp_path, tiny_prepared, monkeypatch):
    import shutil

    import yaml

    import pipeline.strip as strip_lib
    from pipeline.artifacts.deployable import Deployable
    from pipeline.artifacts.training import Best, TestScore, TrainingSummary
    from pipeline.config.schema import to_dict
    from pipeline.config.train import TrainParams
    from pipeline.data.transforms import preprocessing
    from pipeline.lio.checkpoint import TrainedModel
    from stages import strip
    from tests.conftest import tiny_config

    shutil.copytree(tiny_prepared, tmp_path / "data/prepared")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(to_dict(tiny_config())))
    model = trained_model(k=3)
    cfg = tiny_config().view(TrainParams)
    cfg.lio.stages, cfg.lio.scl_channels = ["layer3", "layer4"], 16  # the heads trained_model has
    summary = TrainingSummary(Best(1, 0.5), TestScore(0.5, 1.0), chance=1 / 3, train_seconds=1.0)
    record = TrainedModel.of(model, cfg, ["a", "b", "c"], preprocessing(cfg.data.transforms), summary)
    monkeypatch.chdir(tmp_path)
    record.save(tmp_path / "models/lio.pt")  # the file `lio train` writes
    result = CliRunner().invoke(strip.command, [])
    assert result.exit_code == 0, result.output
    proof = ParityProof.load(tmp_path / "reports/parity.json")
    assert (tmp_path / "models/resnet18.pt").exists() and proof.passed and len(proof.checks) == 5
    meta = Deployable.load(tmp_path / "models/resnet18.json")  # the settings and results travel with the weights
    assert meta.training == cfg and meta.summary == summary  # typed, all the way

    model.backbone.fc = nn.Sequential(nn.Linear(512, 512), nn.Linear(512, 3))  # no file holds such a model:
    monkeypatch.setattr(strip_lib.TrainedModel, "load", lambda path: (record, model))  # handed over as loaded
    result = CliRunner().invoke(strip.command, [])
    assert result.exit_code == 1 and "parity failed" in result.output and "[FAIL] strict_load" in result.output
    assert not (tmp_path / "models/resnet18.pt").exists()
    proof = ParityProof.load(tmp_path / "reports/parity.json")
    assert not proof.passed and not proof.checks[0].passed and proof.checks[0].name == "strict_load"


def test_a_parity_report_from_before_typed_checks_still_reads(tmp_path):
    """reports/parity.json as earlier versions wrote it: checks keyed by name, each flat."""
    old = {
        "passed": False,
        "checks": {
            "strict_load": {"passed": True, "keys": 320},
            "graph": {"passed": False, "nodes": 177, "diff": ["- relu", "+ gelu"]},
        },
    }
    (tmp_path / "parity.json").write_text(json.dumps(old))
    proof = ParityProof.load(tmp_path / "parity.json")
    assert [(c.name, c.passed, c.detail, c.diff) for c in proof.checks] == [
        ("strict_load", True, {"keys": 320}, []),
        ("graph", False, {"nodes": 177}, ["- relu", "+ gelu"]),
    ]
    assert "[FAIL] graph" in proof.explain() and "strict_load" not in proof.explain()
