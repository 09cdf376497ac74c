"""dvc.yaml tells the truth: each stage's deps cover every project file its command imports
(transitively, package __init__ files included), and its params every section it reads."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

from tools.dvc_deps import PACKAGES, ROOT, closure, rewrite

DVC_TEXT = (ROOT / "dvc.yaml").read_text()
DVC = yaml.safe_load(DVC_TEXT)["stages"]


def command_modules(cmd: str) -> list[str]:
    m = re.fullmatch(r"python -m stages (\w+)", cmd.strip())
    assert m, f"dvc.yaml: cmd {cmd!r}: expected `python -m stages <name>`"
    return ["stages.__main__", f"stages.{m[1]}"]


def test_code_deps_are_generated():
    """dvc.yaml's code deps are what `python tools/dvc_deps.py --write` makes of the import closure."""
    assert rewrite(DVC_TEXT) == DVC_TEXT, "dvc.yaml's code deps are out of date: run `python tools/dvc_deps.py --write`"


def test_the_generator_rewrites_only_code_deps():
    stale = DVC_TEXT.replace("      - pipeline/data/synthetic.py\n", "", 1).replace(
        "    deps:\n      - data/prepared\n",
        "    deps:\n      - data/prepared  # kept\n      - pipeline/unused.py\n",
        1,
    )
    fixed = rewrite(stale)
    assert "pipeline/unused.py" not in fixed and "pipeline/data/synthetic.py" in fixed
    assert "data/prepared  # kept" in fixed and fixed.count("\n") == DVC_TEXT.count("\n")


def covered(path: Path, deps: list[str]) -> bool:
    rel = path.relative_to(ROOT).as_posix()
    return any(rel == d or rel.startswith(d.rstrip("/") + "/") for d in deps)


@pytest.mark.parametrize("stage", list(DVC))
def test_every_imported_file_is_a_dep(stage):
    spec = DVC[stage]
    deps = [d if isinstance(d, str) else next(iter(d)) for d in spec.get("deps", [])]
    files = closure(command_modules(spec["cmd"]))
    missing = sorted(p.relative_to(ROOT).as_posix() for p in files if not covered(p, deps))
    assert not missing, f"dvc.yaml: stage {stage!r} imports {missing} but does not list them in its deps"


def _closure_of(stage: str) -> set[str]:
    return {p.relative_to(ROOT).as_posix() for p in closure(command_modules(DVC[stage]["cmd"]))}


def test_editing_a_later_stage_does_not_rerun_an_earlier_one():
    """Editing the report's or the export's code or checks must not retrain, and the renderer
    re-renders without re-scoring: each stage's closure excludes the later stages' modules."""
    train = _closure_of("train")
    later = ("pipeline/evaluate/", "pipeline/deploy/", "pipeline/config/report.py", "pipeline/config/export.py")
    assert not [f for f in train if f.startswith(later)]
    assert "pipeline/deploy/engine.py" not in _closure_of("export")  # it reads engine.max_batch only, as a param
    assert not [f for f in _closure_of("report") if f.startswith(("pipeline/deploy/", "pipeline/lio/"))]
    assert "pipeline/evaluate/score.py" not in _closure_of("report")


def _outs(spec: dict) -> list[str]:
    arch = yaml.safe_load((ROOT / "params.yaml").read_text())["model"]["arch"]
    entries = [*spec.get("outs", []), *spec.get("metrics", []), *spec.get("plots", [])]
    return [(e if isinstance(e, str) else next(iter(e))).replace("${model.arch}", arch) for e in entries]


def _table() -> dict[str, str]:
    """Every path in pipeline/core/paths.py: the module's Path constants, the ONNX table, the deployable."""
    from pipeline.core import paths

    arch = yaml.safe_load((ROOT / "params.yaml").read_text())["model"]["arch"]
    table = {k: v.as_posix() for k, v in vars(paths).items() if isinstance(v, Path)}
    table |= {f"ONNX[{p}]": v.as_posix() for p, v in paths.ONNX.items()}
    weights = paths.stripped(arch)
    return table | {"stripped": weights.as_posix(), "metadata": paths.metadata(weights).as_posix()}


def _within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def test_outs_are_the_paths_of_pipeline_core_paths():
    """dvc.yaml's outs (and metrics, plots) name the files pipeline/core/paths.py names, both ways:
    an out the code never writes there, or a path the code writes that no stage declares (DVC would
    neither cache nor track it), fails. reports/study.json is the one exception: `lio study collect`
    writes it outside the pipeline, and the report reads it as a dep."""
    table = _table()
    outs = [o for spec in DVC.values() for o in _outs(spec)]
    stray = [o for o in outs if not any(_within(o, p) for p in table.values())]
    assert not stray, f"dvc.yaml declares {stray}, which pipeline/core/paths.py does not name"
    undeclared = {
        k: p
        for k, p in table.items()
        if k not in ("STUDY", "SERVING") and not any(_within(p, o) or _within(o, p) for o in outs)
    }
    assert not undeclared, f"pipeline/core/paths.py names {undeclared}, which no dvc.yaml stage declares as an out"


@pytest.mark.parametrize("stage", list(DVC))
def test_no_code_dep_goes_unused(stage):
    """A listed project file (or folder of them) that the command never imports reruns the stage for nothing."""
    spec = DVC[stage]
    deps = [d if isinstance(d, str) else next(iter(d)) for d in spec.get("deps", [])]
    files = {p.relative_to(ROOT).as_posix() for p in closure(command_modules(spec["cmd"]))}
    code = [d for d in deps if d.split("/")[0] in PACKAGES]
    unused = [d for d in code if not any(f == d or f.startswith(d.rstrip("/") + "/") for f in files)]
    assert not unused, f"dvc.yaml: stage {stage!r} lists {unused} in its deps but never imports them"


def _chain(node: ast.expr) -> tuple[str, list[str]] | None:
    """(root name, attributes) of `a.b.c`, or None for anything else."""
    chain: list[str] = []
    while isinstance(node, ast.Attribute):
        chain.append(node.attr)
        node = node.value
    return (node.id, list(reversed(chain))) if isinstance(node, ast.Name) else None


def params_read(files: set[Path]) -> set[str]:
    """Dotted params (`export`, `engine.max_batch`, `seed`) read as `cfg.<...>` in these files,
    following local aliases (`data = cfg.data; data.root` reads `data.root`, not `data` whole)."""
    read: set[str] = set()
    for path in files:
        tree = ast.parse(path.read_text())
        aliases: dict[str, list[str]] = {"cfg": []}  # name -> the params path it stands for
        alias_values = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                got = _chain(node.value)
                if got and got[0] == "cfg" and got[1]:
                    aliases[node.targets[0].id] = got[1]
                    alias_values.add(id(node.value))
        inner_of_longer = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute):
                inner_of_longer.add(id(node.value))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute) or id(node) in inner_of_longer or id(node) in alias_values:
                continue  # only the longest chain counts: `cfg.data.root` reads data.root, not data
            got = _chain(node)
            if got and got[0] in aliases:
                read.add(".".join(aliases[got[0]] + got[1]))
    return read


def _covers(listed: str, read: str) -> bool:
    """A listed param covers a read of itself or of anything inside it."""
    return read == listed or read.startswith(listed + ".")


@pytest.mark.parametrize("stage", list(DVC))
def test_params_are_the_fields_the_stage_reads(stage):
    """Every `cfg.<section>[.<field>]` the command's code reads is covered by a listed param, and
    every listed param is read: a missing one would not rerun the stage when it changes, an extra one
    would rerun it for nothing. A section read whole (passed on as a value) must be listed whole: its
    fields are then read under another name, where this check cannot follow them."""
    spec = DVC[stage]
    listed = [p if isinstance(p, str) else next(iter(p)) for p in spec.get("params", [])]
    listed = [p.split(":")[-1] for p in listed]
    read = {r for r in params_read(closure(command_modules(spec["cmd"]))) if r.split(".")[0] in SECTIONS}
    missing = sorted(r for r in read if not any(_covers(p, r) for p in listed))
    unused = sorted(p for p in listed if not any(_covers(p, r) or _covers(r, p) for r in read))
    assert not missing, f"dvc.yaml: stage {stage!r} reads {missing} but does not list them in its params"
    assert not unused, f"dvc.yaml: stage {stage!r} lists {unused} in its params but never reads them"


def test_the_params_check_follows_aliases(tmp_path):
    """The hole a mutation found: a section read through a local alias counted as read whole."""
    code = tmp_path / "m.py"
    code.write_text("def f(cfg):\n    data = cfg.data\n    return data.root, data.synthetic.classes, cfg.seed\n")
    assert params_read({code}) == {"data.root", "data.synthetic.classes", "seed"}
    code.write_text("def f(cfg):\n    g(cfg.data)\n    return cfg.engine.max_batch\n")
    assert params_read({code}) == {"data", "engine.max_batch"}


SECTIONS = ("seed", "data", "model", "lio", "train", "export", "engine", "report")


def test_dvc_yaml_reads_as_dvc_reads_it():
    """DVC reads dvc.yaml with ruamel, which refuses a duplicate key that PyYAML silently overwrites."""
    from ruamel.yaml import YAML

    assert list(YAML().load(DVC_TEXT)["stages"]) == list(DVC)
