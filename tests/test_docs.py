"""The docs name only what exists: every `section.field` of params.yaml they cite is a field, every
artifact path a path the pipeline writes, every Triton model one a repository holds."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from pipeline.core import paths

DOCS = [Path("README.md"), *sorted(p for p in Path("docs").glob("*.md") if p.name != "measured-log.md")]
SECTIONS = ("data", "model", "lio", "train", "export", "engine", "report")
PARAMS = yaml.safe_load(Path("params.yaml").read_text())


def cited(pattern: str) -> list[tuple[Path, str]]:
    return [(doc, m) for doc in DOCS for m in re.findall(pattern, doc.read_text())]


def _field(dotted: str) -> bool:
    node = PARAMS
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


@pytest.mark.parametrize("doc", DOCS, ids=str)
def test_every_cited_setting_is_a_field_of_params_yaml(doc):
    pattern = rf"`((?:{'|'.join(SECTIONS)})\.[a-z_0-9]+(?:\.[a-z_0-9]+)*)(?::[^`]*)?`"
    files = re.compile(r"\.(json|md|engine|pt|onnx|txt|yaml|plan)$")  # `engine.json` is a file, not a field
    missing = [m for m in re.findall(pattern, doc.read_text()) if not files.search(m) and not _field(m)]
    assert not missing, f"{doc} cites settings params.yaml does not have: {missing}"


@pytest.mark.parametrize("doc", DOCS, ids=str)
def test_every_cited_artifact_is_a_path_the_pipeline_writes(doc):
    written = [str(v) for v in vars(paths).values() if isinstance(v, Path)]
    written += [str(p) for p in paths.ONNX.values()] + ["models/<arch>.pt", "models/<arch>.json"]
    written += [str(paths.stripped("resnet50")), str(paths.metadata(paths.stripped("resnet50")))]
    written += ["models/pretrained", "reports/gpu"]  # written by `lio study pretrain` and benchmarks/gpu.py
    missing = []
    for ref in re.findall(r"`((?:models|reports)/[A-Za-z0-9_./<>-]+)`", doc.read_text()):
        ref = ref.rstrip("/")
        if not any(ref == w or ref.startswith(w + "/") or w.startswith(ref + "/") for w in written):
            if not Path(ref).exists():
                missing.append(ref)
    assert not missing, f"{doc} names artifacts the pipeline does not write: {missing}"


def test_every_served_model_the_docs_name_is_written_by_a_repository():
    from pipeline.serve import repository, triton

    models = {v for m in (repository, triton) for k, v in vars(m).items() if k.isupper() and isinstance(v, str)}
    for doc, name in cited(r"`(lio_[a-z0-9_]+)`"):
        assert name in models, f"{doc} names a Triton model no repository writes: {name}"
