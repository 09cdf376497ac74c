"""params.yaml validation: every bad value names the file, the field and the fix."""
import pytest
import yaml

from pipeline.config import ConfigError, load_config


def write(tmp_path, data):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
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
        ({"trian": {}}, "trian", "known:"),
        ({"data": {"format": "cub"}}, "data.root", "dataset folder"),
        ({"engine": {"precision": "int8"}, "export": {"precisions": ["fp32"]}}, "engine.precision", "export.precisions"),
    ],
)
def test_bad_values(tmp_path, data, field, fix):
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(path) in str(e.value) and field in str(e.value) and fix in str(e.value)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_engine_required_accepts_yaml_booleans(tmp_path):
    assert load_config(write(tmp_path, {"engine": {"required": True}})).engine.required == "true"
