"""Did a code change leave the pipeline's results alone? Compares two checkouts' outputs after
`dvc repro`: the weights and data (dvc.lock's hashes), the metrics, every gate and selection try,
the choices and the localisation scores. Timings are left out: they differ between any two runs.

    python tools/same_results.py BEFORE_DIR [AFTER_DIR=.]

BEFORE_DIR holds a copy of dvc.lock and reports/ from before the change (e.g. `cp -r dvc.lock reports
/tmp/before/`); the earlier weights and graphs are read from DVC's cache by their hashes. Exits 1
and names each difference when there is one.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import yaml

CACHE = Path(".dvc/cache/files/md5")  # where DVC keeps the earlier run's outputs, by hash
#: what timing decides or records: differs between any two runs
TIMED = {"p50_ms", "p90_ms", "p99_ms", "throughput", "throughput_vs_fp32", "p50_vs_fp32", "candidates"}
TIMED |= {"fallback_speed"}


def cached(md5: str) -> Path:
    return CACHE / md5[:2] / md5[2:]


def same_weights(old: str, new: Path) -> bool:
    """Every tensor of the earlier file (from DVC's cache) equal to this one's (a file also holds
    metadata, e.g. lio.pt its training seconds)."""
    import torch

    a, b = (torch.load(p, map_location="cpu", weights_only=True) for p in (cached(old), new))
    a, b = (d.get("state_dict", d) for d in (a, b))
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def same_graphs(old: str, new: Path) -> list[str]:
    """Each ONNX file of the earlier models/onnx (from DVC's cache) against this one, without the
    metadata (the deployable's record, with its training seconds): the names of those that differ."""
    import onnx

    def graph(path: Path) -> bytes:
        model = onnx.load(str(path))
        del model.metadata_props[:]
        return model.SerializeToString()

    listing = json.loads(cached(old).read_text())
    return [f["relpath"] for f in listing if graph(cached(f["md5"])) != graph(new / f["relpath"])]


def hashes(root: Path) -> dict[str, str]:
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    return {o["path"]: o.get("md5", "") for s in lock["stages"].values() for o in s.get("outs", [])}


def untimed(node):
    """A JSON document without its timings (they differ between any two runs)."""
    if isinstance(node, dict):
        return {k: untimed(v) for k, v in node.items() if k not in TIMED}
    if isinstance(node, list):
        return [untimed(v) for v in node]
    return node


def differences(a, b, path: str = "") -> list[str]:
    """The paths at which two JSON documents differ, with both values."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in dict.fromkeys([*a, *b]) for d in differences(a.get(k), b.get(k), f"{path}/{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: {a} -> {b}"]


def compare(before: Path, after: Path) -> list[str]:
    from pipeline.artifacts.extent import Extent
    from pipeline.artifacts.parity import ParityProof

    diffs = []
    old, new = hashes(before), hashes(after)
    prepared = "data/prepared"
    diffs += [f"{prepared}: {old[prepared]} -> {new[prepared]}"] if old[prepared] != new[prepared] else []
    diffs += [
        f"{p}: other weights" for p in ("models/lio.pt", "models/resnet50.pt") if not same_weights(old[p], after / p)
    ]
    diffs += [f"models/onnx/{name}: another graph" for name in same_graphs(old["models/onnx"], after / "models/onnx")]
    for name in ("export.json", "scores.json"):
        a, b = (untimed(json.loads((d / "reports" / name).read_text())) for d in (before, after))
        diffs += [f"reports/{name}{d}" for d in differences(a, b)]
    a, b = (json.loads((d / "reports/runtime.json").read_text()) for d in (before, after))
    gates = [[(c["name"], c["status"], c["gate"]) for c in r["candidates"]] for r in (a, b)]
    diffs += ["reports/runtime.json: the gates differ"] if gates[0] != gates[1] else []
    diffs += [f"runtime chosen: {a['chosen']} -> {b['chosen']}"] if a["chosen"] != b["chosen"] else []
    old_maps, maps = (replace(Extent.load(d / "reports/extent.json"), model_md5="") for d in (before, after))
    diffs += ["reports/extent.json: other scores"] if old_maps != maps else []  # lio.pt's hash: its seconds
    proofs = [ParityProof.load(d / "reports/parity.json") for d in (before, after)]
    old_checks, checks = ({c.name: c for c in p.checks} for p in proofs)  # (an older file lists them by name)
    return diffs + (["reports/parity.json: a check changed"] if checks != old_checks else [])


if __name__ == "__main__":
    before, after = Path(sys.argv[1]), Path(sys.argv[2] if len(sys.argv) > 2 else ".")
    found = compare(before, after)
    print("\n".join(found) or "same weights, data, graphs, metrics, gates, choices and localisation")
    sys.exit(1 if found else 0)
