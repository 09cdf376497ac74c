"""The study command: its grid, and the aggregation of `dvc exp show --json` (the DVC part
runs for real in tests/test_pipeline.py; here the aggregation is checked by hand)."""

import json
import sys
from pathlib import Path

import pytest

from pipeline.artifacts.base import typed
from pipeline.artifacts.extent import StageExtent
from pipeline.artifacts.study import ArmSummary, Paired, PresetStudy, Setting, Study, StudyRun
from pipeline.study.aggregate import aggregate, choice, verdict
from pipeline.study.presets import ARMS, PRESETS, StudyError, grid, override_text
from pipeline.study.report import collect, markdown
from pipeline.study.runs import queue, records


def test_grid_has_every_variant_at_the_same_budget():
    runs = grid("cpu", seeds=3, other_seeds=2)
    names = [n for n, _ in runs]
    assert len(runs) == 3 * 2 + 2 * (len(ARMS) - 2) and len(set(names)) == len(names)
    assert names[: len(ARMS)] == [f"study-cpu-{v}-s0" for v in ARMS]  # seed-major: a cut study stays paired
    budgets = {tuple(o for o in overrides if not o.startswith(("seed=", "lio."))) for _, overrides in runs}
    assert len(budgets) == 1  # epochs, images, resolution: identical for every run
    assert ("study-cpu-baseline-s2", ["seed=2", *next(iter(budgets)), "lio.stages=[]"]) in runs
    # every LIO arm names its gradient setting, so it does not drift with params.yaml's default
    lio = dict(runs)["study-cpu-lio-s0"]
    assert "lio.target_grad=true" in lio and "lio.target_grad=false" in dict(runs)["study-cpu-lio-detached-s0"]
    with pytest.raises(StudyError, match="unknown study preset"):
        grid("tpu", 1, 1)
    assert [n for n, _ in grid("cpu", 2, 1, ["lio-gm"])] == ["study-cpu-lio-gm-s0"]
    with pytest.raises(StudyError, match="unknown arm"):
        grid("cpu", 1, 1, ["lio-v2"])


def test_presets_render_the_overrides_the_study_recorded():
    """The typed presets give the `-S` texts reports/study.json recorded for each preset, in order (the
    recorded study reads back unchanged), plus only the pins that hold the recipe those runs had when
    params.yaml's defaults changed after them; DVC's YAML reading of each text is the typed value."""
    import yaml

    from pipeline.study.presets import PINNED

    pins = {override_text(k, v) for k, v in PINNED.items()}
    recorded = json.loads(Path("reports/study.json").read_text())["presets"]
    for name, section in recorded.items():
        now, then = PRESETS[name].settings(), section["setting"]["set"]
        assert [s for s in now if s in then] == then, name
        assert set(now) - set(then) <= pins, name
    for key, value in [("lio.stages", []), ("train.lr", 0.001), ("export.precisions", ["fp32"]), ("lio.oel", False)]:
        assert yaml.safe_load(override_text(key, value).split("=", 1)[1]) == value


def test_transfer_grid_fine_tunes_the_pretrained_backbone(tmp_path):
    weights = tmp_path / "backbone.pt"
    runs = dict(grid("transfer", seeds=5, other_seeds=1, pretrained=weights))
    assert sorted(runs) == sorted(
        [f"study-transfer-{v}-s{s}" for v in ("baseline", "lio") for s in range(5)]
        + ["study-transfer-lio-detached-s0", "study-transfer-lio-batch-s0"]
    )
    assert "lio.positives=batch" in runs["study-transfer-lio-batch-s0"]
    overrides = runs["study-transfer-lio-s0"]
    assert f"model.pretrained={weights.resolve()}" in overrides and "train.optimizer=sgd" in overrides
    with pytest.raises(StudyError, match="lio study pretrain"):
        queue("transfer", 1, 1, pretrained=weights)  # refuses before queueing anything


def test_queue_skips_recorded_runs(tmp_path):
    """A real `dvc exp run --queue` in a scratch repository: recorded runs are not queued again."""
    import subprocess

    repo = tmp_path / "repo"
    repo.mkdir()
    for cmd in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"]):
        subprocess.run(cmd, cwd=repo, check=True)
    (repo / "params.yaml").write_text(Path("params.yaml").read_text())  # -S may only set keys it holds
    (repo / "dvc.yaml").write_text("stages:\n  s:\n    cmd: echo\n    params: [seed]\n")
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"], cwd=repo, check=True)
    done = [StudyRun(f"study-cpu-{v}-s0", v, 0, 0.5, 0.5, 1, 1.0) for v in ("baseline", "lio")]
    Study({"cpu": PresetStudy("cpu", Setting("d", []), "c", "m", {}, None, done)}).save(repo / "study.json")
    import os

    cwd = os.getcwd()
    os.chdir(repo)
    try:
        names = queue("cpu", 2, 0, ["baseline", "lio"], recorded=Path("study.json"))
    finally:
        os.chdir(cwd)
    assert names == ["study-cpu-baseline-s1", "study-cpu-lio-s1"]
    # a commit after queueing (as a session commits the study's results): the queue still holds them,
    # although `dvc exp show` now lists only the new commit's experiments (seen: every run queued twice)
    (repo / "notes.txt").write_text("a commit after queueing\n")
    subprocess.run(["git", "add", "notes.txt"], cwd=repo, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "more"], cwd=repo, check=True)
    os.chdir(repo)
    try:  # still queued: queueing again adds nothing
        assert queue("cpu", 2, 0, ["baseline", "lio"], recorded=Path("study.json")) == []
    finally:
        os.chdir(cwd)


def stage(iou_m: float) -> dict:
    """One stage's row of reports/extent.json."""
    return {"cells": 4, "images": 8, "iou": {"m'": iou_m, "M": 0.2}, "pointing": 1.0, "pointing_chance": 0.5}


def exp(name, top1, loc=None, seconds=100.0, localised="md5-of-this-model"):
    """One experiment as `dvc exp show --json` gives it; `localised` is the hash of the model its
    reports/extent.json was computed from (this run's models/lio.pt hashes to md5-of-this-model)."""
    metrics = {
        "dvclive/metrics.json": {
            "data": {
                "test": {"top1": top1, "top5": 1.0},
                "best": {"val_top1": top1, "epoch": 3},
                "train_seconds": seconds,
                "chance": 0.25,
            }
        }
    }
    if loc is not None:
        metrics["reports/extent.json"] = {"data": {"stages": loc, "model_md5": localised}}
    outs = {"models/lio.pt": {"hash": "md5-of-this-model", "size": 1}}
    data = {"timestamp": "2026-11-26T09:00:00", "params": {}, "metrics": metrics, "outs": outs}
    return {"revs": [{"rev": "abc", "name": name, "data": data}]}


def test_aggregate_pairs_seeds_with_the_baseline():
    shown = [
        {"rev": "workspace", "name": None, "data": {"params": {}, "metrics": {}}},
        {
            "rev": "sha",
            "name": "main",
            "experiments": [
                exp("study-cpu-baseline-s0", 0.80),
                exp("study-cpu-baseline-s1", 0.70),
                exp("study-cpu-lio-s0", 0.85, {"layer2": stage(0.3)}),
                exp("study-cpu-lio-s1", 0.72, {"layer2": stage(0.5)}),
                exp("study-gpu-lio-s0", 0.99),
                exp("other-experiment", 0.1),
                exp("study-cpu-lio-detached-s0", 0.5),
                # stopped before its localise stage: reports/extent.json is another model's, left out
                exp("study-cpu-lio-detached-s1", 0.4, {"layer2": stage(0.9)}, localised="md5-of-another"),
                # a running experiment shows the queued snapshot's files (another run's metrics): left out
                {
                    "revs": [
                        {
                            "name": "study-cpu-oel-only-s0",
                            "data": {
                                "rev": "workspace",
                                "timestamp": None,
                                "params": {},
                                "metrics": exp("x", 0.9)["revs"][0]["data"]["metrics"],
                            },
                        }
                    ]
                },
                {"revs": [{"name": "study-cpu-lio-s2", "data": {"params": {}, "metrics": {}}}]},
                # a failed run: its files are the queued snapshot's, with another run's metrics
                {
                    "executor": {"state": "failed"},
                    "revs": [{**exp("study-cpu-oel-only-s1", 0.857)["revs"][0], "error": {"msg": "failed"}}],
                },
            ],
        },
    ]
    runs = records(shown, "cpu")
    assert [r.name for r in runs] == [
        "study-cpu-baseline-s0",
        "study-cpu-baseline-s1",
        "study-cpu-lio-s0",
        "study-cpu-lio-s1",
        "study-cpu-lio-detached-s0",
        "study-cpu-lio-detached-s1",
    ]  # other presets, names and unfinished runs left out
    assert runs[-1].localisation == {} and runs[2].localisation == {"layer2": typed(StageExtent, stage(0.3))}
    v = aggregate(runs)
    assert v["lio"].test_top1_mean == pytest.approx(0.785)
    d = v["lio"].test_vs_baseline
    assert d.per_seed == {"0": pytest.approx(0.05), "1": pytest.approx(0.02)}
    assert d.mean == pytest.approx(0.035) and d.wins == 2 and d.n == 2
    # t-interval, 1 degree of freedom: 0.035 +- 12.706 * std / sqrt(2), std of (0.05, 0.02) = 0.0212
    assert d.ci95 == pytest.approx((0.035 - 0.1906, 0.035 + 0.1906), abs=1e-3)
    assert verdict(v["lio"]) == "the interval includes zero: no difference shown"
    assert v["lio"].test_top1_std == pytest.approx(0.0919, abs=1e-4)
    assert v["lio"].localisation["layer2"].iou == {"m'": pytest.approx(0.4), "M": pytest.approx(0.2)}


def test_choice_compares_validation_on_shared_seeds():
    def run(arm, seed, val, test=0.5):
        return StudyRun(f"study-cpu-{arm}-s{seed}", arm, seed, test, val, 3, 1.0)

    runs = [
        *(run("baseline", s, 0.99) for s in range(3)),  # not a candidate, however good
        run("lio", 0, 0.80),
        run("lio", 1, 0.70),
        run("lio", 2, 0.20),  # a bad seed only lio ran: left out of the comparison
        run("lio-binary", 0, 0.78, test=0.99),  # test never chooses
        run("lio-binary", 1, 0.74),
        run("lio-gm", 0, 0.95),  # needs true masks: not a candidate
    ]
    c = choice(runs)
    assert c is not None and c.seeds == [0, 1] and c.best == "lio-binary"
    assert c.val_top1_mean == {"lio": pytest.approx(0.75), "lio-binary": pytest.approx(0.76)}
    assert choice([run("baseline", 0, 0.9)]) is None


def test_verdict_names_the_side_of_zero():
    def v(ci):
        d = Paired({}, None, None, ci, 0, 0)
        return ArmSummary([0, 1], 0.5, None, None, d, d, None)

    assert "above zero" in verdict(v([0.01, 0.05])) and "below zero" in verdict(v([-0.05, -0.01]))
    assert "no interval" in verdict(v(None))
    assert "paper's size" in verdict(v([-0.01, 0.017])) and "paper's size" not in verdict(v([-0.01, 0.019]))


def test_collect_keeps_recorded_runs(tmp_path):
    out = tmp_path / "reports"
    first = [{"name": "main", "experiments": [exp("study-cpu-baseline-s0", 0.8), exp("study-cpu-lio-s0", 0.9)]}]
    collect("cpu", out, "cmd", "machine A", shown=first)
    json_before, md_before = (out / "study.json").read_bytes(), (out / "study.md").read_bytes()
    # a fresh clone: no experiments at all -> the committed study is left byte for byte
    collect("cpu", out, "cmd", "machine B", shown=[])
    assert (out / "study.json").read_bytes() == json_before and (out / "study.md").read_bytes() == md_before
    # new runs are added beside the recorded ones, and another preset gets its own section
    more = [{"name": "main", "experiments": [exp("study-cpu-baseline-s1", 0.7), exp("study-transfer-lio-s0", 0.6)]}]
    collect("cpu", out, "cmd", "machine A", shown=more)
    collect("transfer", out, "cmd", "machine A", shown=more)
    study = json.loads((out / "study.json").read_text())
    assert [r["name"] for r in study["presets"]["cpu"]["runs"]] == [
        "study-cpu-baseline-s0",
        "study-cpu-baseline-s1",
        "study-cpu-lio-s0",
    ]
    assert [r["name"] for r in study["presets"]["transfer"]["runs"]] == ["study-transfer-lio-s0"]
    text = (out / "study.md").read_text()
    assert "## cpu preset" in text and "## transfer preset" in text
    assert "the best is **lio**" in text  # the only candidate with runs


def test_default_and_readme_follow_the_recorded_study():
    """params.yaml's lio section is the study's choice, and the README quotes the study's intervals."""
    import yaml

    study = json.loads(Path("reports/study.json").read_text())["presets"]
    lio = yaml.safe_load(Path("params.yaml").read_text())["lio"]
    chosen = study["cpu"]["choice"]["best"]  # the default trains from scratch: the cpu preset decides
    for key, value in ARMS[chosen].items():
        assert lio[key.removeprefix("lio.")] == value, (chosen, key)
    readme = " ".join(Path("README.md").read_text().split())  # line breaks inside a quoted interval

    def interval(ci):
        return "[" + ", ".join(f"{x:+.3f}".replace("-", "−") for x in ci) + "]"

    quoted = [("cpu", v) for v in study["cpu"]["arms"] if v != "baseline"] + [("transfer", "lio")]
    quoted += [("structure", v) for v in study["structure"]["arms"] if v != "baseline"]
    for preset, arm in quoted:
        ci = study[preset]["arms"][arm]["test_vs_baseline"]["ci95"]
        assert interval(ci) in readme, (preset, arm, interval(ci))


@pytest.mark.slow
def test_collect_leaves_out_a_real_failed_experiment(tmp_path):
    """A scratch repository with a real DVC queue: one experiment finishes, one fails (its ref
    holds the queued snapshot's files). Only the finished one is recorded. (A running one is
    covered with recorded `exp show` output above: the queue's order cannot be made to hold one
    running here.)"""
    import os
    import subprocess
    import time

    repo = tmp_path / "repo"
    repo.mkdir()
    dvc = [sys.executable, "-m", "dvc"]
    for cmd in (["git", "init", "-q"], [*dvc, "init", "-q"]):
        subprocess.run(cmd, cwd=repo, check=True)
    (repo / "params.yaml").write_text(Path("params.yaml").read_text())
    (repo / "dvclive").mkdir()  # the snapshot's metrics: what a failed run's ref still holds
    snapshot = {"test": {"top1": 0.9, "top5": 1.0}, "best": {"val_top1": 0.9, "epoch": 1}, "train_seconds": 1.0}
    snapshot["chance"] = 0.5
    (repo / "dvclive/metrics.json").write_text(json.dumps(snapshot))
    script = (
        "import json, sys, yaml\n"
        "seed = yaml.safe_load(open('params.yaml'))['seed']\n"
        "if seed == 1:\n    sys.exit(1)\n"
        "json.dump({'test': {'top1': 0.5, 'top5': 1.0}, 'best': {'val_top1': 0.6, 'epoch': 1}, 'train_seconds': 1.0,"
        " 'chance': 0.5},"
        " open('dvclive/metrics.json', 'w'))\n"
    )
    (repo / "run.py").write_text(script)
    (repo / "dvc.yaml").write_text(
        f"stages:\n  s:\n    cmd: {sys.executable} run.py\n    deps: [run.py]\n    params: [seed]\n"
        "    metrics:\n      - dvclive/metrics.json:\n          cache: false\n          persist: true\n"
    )
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"], cwd=repo, check=True)
    for seed in range(2):
        name = f"study-cpu-baseline-s{seed}"
        subprocess.run(
            [*dvc, "exp", "run", "--queue", "-q", "--name", name, "-S", f"seed={seed}"],
            cwd=repo,
            check=True,
            capture_output=True,
        )
    subprocess.run([*dvc, "queue", "start"], cwd=repo, check=True, capture_output=True)
    cwd = os.getcwd()
    states: dict[str, str] = {}
    try:
        deadline = time.time() + 240
        while time.time() < deadline and sorted(states.values()) != ["Failed", "Success"]:
            time.sleep(2)
            status = subprocess.run([*dvc, "queue", "status"], cwd=repo, capture_output=True, text=True).stdout
            states = {row.split()[1]: row.split()[-1] for row in status.splitlines() if "study-cpu" in row}
        assert states == {"study-cpu-baseline-s0": "Success", "study-cpu-baseline-s1": "Failed"}, states
        os.chdir(repo)
        result = collect("cpu", repo / "reports", "cmd", "machine")
    finally:
        os.chdir(cwd)
        subprocess.run([*dvc, "queue", "stop", "--kill"], cwd=repo, capture_output=True)
    assert [r.name for r in result.runs] == ["study-cpu-baseline-s0"]
    assert result.runs[0].test_top1 == 0.5


def test_lio_batch_is_compared_with_lio_paired_by_seed():
    def run(arm, seed, test):
        return StudyRun(f"study-cpu-{arm}-s{seed}", arm, seed, test, test, 1, 1.0)

    runs = [run("baseline", s, 0.5) for s in range(3)]
    runs += [run("lio", s, t) for s, t in enumerate([0.60, 0.70, 0.80])]
    runs += [run("lio-batch", s, t) for s, t in enumerate([0.62, 0.66])]  # seed 2 not run yet
    got = aggregate(runs)["lio-batch"]
    assert got.reference == "lio"
    d = got.test_vs_reference
    assert d is not None and d.n == 2 and d.wins == 1 and d.mean == pytest.approx(-0.01)
    assert aggregate(runs)["lio"].test_vs_reference is None
    section = PresetStudy("cpu", Setting("d", []), "c", "m", aggregate(runs), None, runs)
    text = markdown(Study({"cpu": section}))
    assert "lio-batch against lio (one setting apart), paired by seed on test: -0.010" in text


def test_structure_preset_reaches_the_runs_and_stops_after_localise(tmp_path):
    """Each run's `-S` texts, read as DVC reads them into params.yaml, give the prepare and train stages
    the preset's knobs; the baseline's own `lio.stages=[]` comes after the preset's and wins."""
    import yaml

    from pipeline.config.data import PrepareParams
    from pipeline.config.params import load_config
    from pipeline.config.schema import apply_overrides

    runs = dict(grid("structure", seeds=2, other_seeds=1))
    assert sorted(runs) == sorted(
        [f"study-structure-{v}-s{s}" for v in ("baseline", "lio") for s in range(2)]
        + ["study-structure-oel-only-s0", "study-structure-scl-only-s0"]
    )
    for name, expected_stages in [
        ("study-structure-baseline-s1", []),
        ("study-structure-lio-s1", ["layer2", "layer3"]),
    ]:
        texts = [t.split("=", 1) for t in runs[name]]
        data = apply_overrides(
            yaml.safe_load(Path("params.yaml").read_text()), {k: yaml.safe_load(v) for k, v in texts}
        )
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(data))
        cfg = load_config(tmp_path / "params.yaml")
        synthetic = cfg.view(PrepareParams).data.synthetic
        assert (synthetic.siblings, synthetic.distractors, synthetic.tilt, synthetic.min_shape_diff) == (
            1,
            2,
            0.2,
            0.25,
        )
        assert cfg.seed == 1 and cfg.model.arch == "resnet18" and cfg.train.epochs == 30
        assert cfg.lio.stages == expected_stages
    assert PRESETS["structure"].target == "localise"
    stages = yaml.safe_load(Path("dvc.yaml").read_text())["stages"]
    assert "data.synthetic" in stages["prepare"]["params"]  # every knob reruns prepare


def test_convergence_and_the_seeds_a_resolution_needs():
    """Convergence: best validation epoch at or before 80% of the schedule (24 of 30), and the last
    epoch's training top-1; the paired seeds that make a 95% t-interval +-0.01 at a spread of 0.02:
    t(0.975, 17) x 0.02 / sqrt(18) = 0.00995, while 17 seeds give 0.0103."""
    from pipeline.study.aggregate import convergence, seeds_for

    def run(seed, best, last):
        return StudyRun(f"study-structure-lio-s{seed}", "lio", seed, 0.8, 0.8, best, 1.0, {}, last, 30)

    c = convergence([run(0, 20, 0.97), run(1, 25, 0.99), run(2, 24, 0.96), StudyRun("old", "lio", 3, 0.8, 0.8, 9, 1.0)])
    assert c is not None and (c.runs, c.best_before_last_fifth) == (3, 2)
    assert c.train_top1_last_mean == pytest.approx(0.9733, abs=1e-4) and c.train_top1_last_min == 0.96
    assert convergence([StudyRun("old", "lio", 3, 0.8, 0.8, 9, 1.0)]) is None  # recorded before the fields
    assert seeds_for(0.01, 0.02) == 18 and seeds_for(0.01, 0.001) == 2  # two: the fewest with an interval


def test_last_fifth_gain_reads_the_runs_own_validation_curve(tmp_path, monkeypatch):
    """The validation curve comes from the run's commit (dvclive's plot is in git); the last fifth's
    gain is its best over the best of the first four fifths, and a late best by one image shows as
    a small gain, not as a run that failed to converge."""
    import subprocess

    from pipeline.study.aggregate import convergence, last_fifth_gain
    from pipeline.study.runs import val_curve

    monkeypatch.chdir(tmp_path)
    curve = [0.5 + 0.01 * e for e in range(24)] + [0.74, 0.75, 0.74, 0.74, 0.74, 0.74]
    tsv = tmp_path / "dvclive/plots/metrics/val/top1.tsv"
    tsv.parent.mkdir(parents=True)
    tsv.write_text("step\ttop1\n" + "".join(f"{e}\t{v}\n" for e, v in enumerate(curve)))
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "run"], check=True)
    rev = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    assert val_curve(rev) == pytest.approx(curve) and val_curve(None) is None and val_curve("0" * 40) is None
    assert last_fifth_gain(curve) == pytest.approx(0.02)  # 0.75 against epoch 24's 0.73
    assert last_fifth_gain([0.5] * 8 + [0.4, 0.5]) == 0.0  # a peak before the last fifth, matched after it

    def run(seed, best, curve):
        return StudyRun(f"study-structure-lio-s{seed}", "lio", seed, 0.8, 0.8, best, 1.0, {}, 0.97, 30, None, curve)

    c = convergence([run(0, 26, curve), run(1, 24, curve[:24] + [0.7] * 6), run(2, 20, None)])
    assert (c.runs, c.best_before_last_fifth, c.curves) == (3, 2, 2)
    assert c.last_fifth_gain_mean == pytest.approx(0.01) and c.last_fifth_gain_max == pytest.approx(0.02)


def test_structure_study_queues_the_seeds_its_resolution_goal_needs(monkeypatch):
    """`lio study queue` without --seeds takes the preset's: for structure, the 18 paired seeds that
    make a 95% interval +-0.01 at a spread of 0.02, for all four arms (72 runs); flags still win.
    The library's queue is replaced here only to read what the command passes it (it runs for real
    in test_queue_skips_recorded_runs)."""
    from click.testing import CliRunner

    import stages.study as cli
    from pipeline.study.aggregate import seeds_for

    seen = {}
    monkeypatch.setattr(cli, "queue", lambda preset, seeds, other, _: seen.update(p=preset, s=seeds, o=other) or [])
    assert CliRunner().invoke(cli.command, ["queue"]).exit_code == 0
    assert seen == {"p": "structure", "s": 18, "o": 18} and seeds_for(0.01, 0.02) == 18
    assert len(grid("structure", 18, 18)) == 72
    assert CliRunner().invoke(cli.command, ["queue", "--preset", "cpu", "--seeds", "2"]).exit_code == 0
    assert seen == {"p": "cpu", "s": 2, "o": 3}


def test_a_study_recorded_before_arms_and_typed_localisation_reads_the_same(tmp_path):
    """reports/study.json as earlier versions wrote it (a run's "variant", a section's "variants", flat
    localisation rows keyed "iou M", "N", "pointing chance") is read as the current shape."""
    old = {
        "presets": {
            "cpu": {
                "preset": "cpu",
                "setting": {"description": "d", "set": []},
                "command": "c",
                "machine": "m",
                "variants": {},
                "choice": None,
                "runs": [
                    {
                        "name": "study-cpu-lio-s0",
                        "variant": "lio",
                        "seed": 0,
                        "test_top1": 0.9,
                        "best_val_top1": 0.9,
                        "best_epoch": 3,
                        "train_seconds": 1.0,
                        "localisation": {
                            "layer2": {
                                "iou m'": 0.4,
                                "iou M": 0.3,
                                "pointing": 1.0,
                                "pointing chance": 0.5,
                                "N": 8.0,
                                "images": 16.0,
                            }
                        },
                    }
                ],
            }
        }
    }
    (tmp_path / "study.json").write_text(json.dumps(old))
    (run,) = Study.read(tmp_path / "study.json").presets["cpu"].runs
    assert run.arm == "lio" and run.localisation["layer2"] == StageExtent(
        cells=8, images=16, iou={"m'": 0.4, "M": 0.3}, pointing=1.0, pointing_chance=0.5
    )
