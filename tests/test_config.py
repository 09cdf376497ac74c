"""params.yaml validation: every bad value names the file, the field and the fix."""

import pytest
import yaml

from pipeline.config.params import load_config
from pipeline.config.schema import ConfigError


def merge(base, over):
    for k, v in over.items():
        base[k] = merge(dict(base.get(k) or {}), v) if isinstance(v, dict) and v else v
    return base


def write(tmp_path, data, full=True):
    """params.yaml = the repository's, with `data` merged over it (or `data` alone)."""
    path = tmp_path / "params.yaml"
    base = yaml.safe_load(open("params.yaml")) if full else {}
    path.write_text(yaml.safe_dump(merge(base, data)))
    return path


def test_repository_params_load():
    cfg = load_config("params.yaml")
    assert cfg.model.arch == "resnet50" and cfg.lio.stages == ["layer2", "layer3", "layer4"] and cfg.lio.P == 3


@pytest.mark.parametrize(
    "data,field,fix",
    [
        ({"model": {"arch": "vgg16"}}, "model.arch", "resnet50"),
        ({"lio": {"stages": ["layer5"]}}, "lio.stages", "layer2"),
        ({"lio": {"P": 0}}, "lio.P", ">= 1"),
        ({"train": {"optimizer": "adam"}}, "train.optimizer", "sgd"),
        ({"train": {"batch_size": 10}}, "train.batch_size", "multiple of lio.P+1=4"),
        ({"lio": {"P": 5}, "train": {"batch_size": 16}}, "train.batch_size", "use e.g. 12"),
        ({"train": {"epochs": "ten"}}, "train.epochs", "expected int"),
        ({"trian": {"a": 1}}, "trian", "known:"),
        ({"data": {"format": "cub", "root": ""}}, "data.root", "dataset folder"),
        ({"train": {"eval_batch_size": 0}}, "train.eval_batch_size", "e.g. 64"),
        ({"train": {"lr": float("inf")}}, "train.lr", "finite"),
        ({"train": {"lr": "fast"}}, "train.lr", "expected a number"),
        ({"data": {"workers": -1}}, "data.workers", ">= 0"),
        ({"seed": -1}, "seed", ">= 0"),
        ({"train": {"device": "gpu"}}, "train.device", "auto, cpu, cuda or cuda:N"),
        ({"data": {"synthetic": {"image_size": 0}}}, "data.synthetic.image_size", ">= 16"),
        ({"data": {"synthetic": {"classes": 0}}}, "data.synthetic.classes", ">= 2"),
        ({"lio": {"mask_source": "gt", "oel": False}}, "lio.mask_source", "lio.oel: true"),
        # at the 64 px default pool 3 leaves layer3's 4x4 map 1x1 (it used to fail in the first training step)
        ({"lio": {"pool": 3}}, "lio.pool", "layer3's 4x4 map at data.transforms.crop 64 to 1x1"),
        (
            {"lio": {"pool": 2, "stages": ["layer3"]}, "data": {"transforms": {"crop": 32, "resize": 36}}},
            "lio.pool",
            "layer3",
        ),
        ({"engine": {"precision": "int8_cpu"}}, "engine.precision", "cannot be built into an engine"),
        ({"export": {"gates": {"int8": {"min_agreement": 1.5}}}}, "export.gates.int8.min_agreement", "[0, 1]"),
        ({"export": {"qat": {"epochs": -1}}}, "export.qat.epochs", ">= 0"),
        ({"export": {"qat": {"method": "qat"}}}, "export.qat.method", "modelopt"),
        ({"export": {"qat": {"lr": 0}}}, "export.qat.lr", "> 0"),
        ({"export": {"int8_fallback_stages": 3}}, "export.int8_fallback_stages", "use int8_fallback_layers"),
        ({"export": {"int8_fallback_layers": -1}}, "export.int8_fallback_layers", ">= 0"),
        # the old accuracy rule's key, and a ratio MLPerf's rule cannot mean
        ({"export": {"gates": {"int8": {"max_top1_drop": 0.01}}}}, "export.gates.int8.max_top1_drop", "min_top1_ratio"),
        ({"export": {"gates": {"fp16": {"min_top1_ratio": 0}}}}, "export.gates.fp16.min_top1_ratio", "(0, 1]"),
        (
            {"export": {"gates": {"int8_cpu": {"min_top1_ratio": 1.01}}}},
            "export.gates.int8_cpu.min_top1_ratio",
            "(0, 1]",
        ),
        ({"train": {"amp": "bf16"}}, "train.amp", "auto, true, false"),
        ({"train": {"label_smoothing": 1.0}}, "train.label_smoothing", "[0, 1)"),
        ({"data": {"synthetic": {"extra_select_per_class": -1}}}, "data.synthetic.extra_select_per_class", ">= 0"),
        (
            {"engine": {"precision": "int8"}, "export": {"precisions": ["fp32"]}},
            "engine.precision",
            "export.precisions",
        ),
    ],
)
def test_bad_values(tmp_path, data, field, fix):
    """Every bad value fails before any work, naming the file, the field and a fix."""
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(path) in str(e.value) and field in str(e.value) and fix in str(e.value)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_engine_required_accepts_yaml_booleans(tmp_path):
    assert load_config(write(tmp_path, {"engine": {"required": True}})).engine.required == "true"


def test_yaml_exponent_without_a_dot_is_a_number(tmp_path):
    """YAML 1.1 reads `1e-3` as a string; the config takes it as the number it means."""
    path = tmp_path / "params.yaml"
    text = open("params.yaml").read()
    assert "  lr: 0.002" in text
    path.write_text(text.replace("  lr: 0.002", "  lr: 2e-3"))
    assert load_config(path).train.lr == 2e-3


@pytest.mark.parametrize(
    "text,missing",
    [("", "seed, data, model"), ("seed: 0\n", "data, model, lio"), ("data: {format: synthetic}\n", "data.transforms")],
)
def test_a_file_that_sets_nothing_is_refused(tmp_path, text, missing):
    """An empty file would silently train the paper's 448 px recipe on 64 px data."""
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=f"missing .*{missing}.*copy them from the repository's params.yaml"):
        load_config(path)
