"""The tables report.md and the model card share: the backends with their intervals, and every gate
with what its variant missed (its shortfalls, as `Gate.shortfalls` worded them), kept and cost."""

from __future__ import annotations

from dataclasses import asdict

from pipeline.artifacts.export import ExportReport, GateResult, Variant
from pipeline.artifacts.scores import BackendScore, Scores
from pipeline.core.markdown import table


def pair(ci, fmt: str) -> str:
    return f"[{format(ci[0], fmt)}, {format(ci[1], fmt)}]"


def ci_text(r: BackendScore) -> str:
    return f"{r.top1:.4f} {pair(r.top1_ci95, '.3f')}"


def backend_rows(scores: Scores) -> list[dict]:
    """The backends as table rows, top-1 written with its interval."""
    return [{**asdict(r), "top1_ci": ci_text(r)} for r in scores.backends]


GATE_COLUMNS = [
    ("variant", "variant", ""),
    ("status", "status", ""),
    ("images", "images", ""),
    ("ratio", "top-1 / FP32's = ratio", ""),
    ("drop", "top-1 drop [95% CI]", ""),
    ("agreement", "agreement with FP32 [95% CI]", ""),
    ("test_top1", "test top-1", ".4f"),
]


def gate_lines(export: ExportReport) -> list[str]:
    """Every gate with its rule, image count and intervals; for a rejected variant, by how much it
    missed; for an INT8 one, what it kept in FP32 (and what that cost in speed here) and how every
    layer in INT8 fared on the selection images."""
    rows, notes, rule = [], [], ""
    for p, v in export.variants.items():
        g = v.gate
        if g is None:
            continue
        rule = g.rule
        rows.append(
            {
                "variant": p,
                "status": v.status,
                "images": g.images,
                "ratio": f"{g.top1:.4f} / {g.top1_fp32:.4f} = {g.top1_ratio:.4f} (min {g.min_top1_ratio})",
                "drop": f"{g.top1_drop:+.4f} {pair(g.top1_drop_ci95, '+.4f')}",
                "agreement": f"{g.agreement:.4f} {pair(g.agreement_ci95, '.3f')} (floor {g.min_agreement})",
                "test_top1": g.test_top1,
            }
        )
        if note := _gate_note(p, v, g):
            notes.append(note)
    head = [f"Rule: {rule}; agreement with FP32 is a floor against broken quantization, not the accuracy rule.", ""]
    return head + table(rows, GATE_COLUMNS).splitlines() + ([""] + notes if notes else [])


def _gate_note(p: str, v: Variant, g: GateResult) -> str | None:
    kept_layers = v.kept_in_fp32
    kept = f"{len(kept_layers)} layer{'s' * (len(kept_layers) != 1)} kept in FP32 ({', '.join(kept_layers)})"
    chose = ""
    if v.selection:
        first = v.selection[0]
        flips = round((1 - first.agreement) * first.images)
        chose = (
            f"; chosen before the gate on {first.images} selection images, where the graph as first made had "
            f"top-1 {first.top1:.4f} against FP32's {first.top1_fp32:.4f} and agreed on "
            f"{first.agreement:.4f} ({flips} changed class); {len(v.selection)} selection tr"
            + ("ies" if len(v.selection) > 1 else "y")
        )
    speed = v.fallback_speed
    cost = (
        f"; on this CPU at batch {speed.batch} it runs {speed.shipped:.0f} img/s against "
        f"{speed.every_layer_int8:.0f} as first made"
        if speed
        else ""
    )
    if not g.passed:
        why = " and ".join(g.shortfalls) or v.rejected_because or "its selection"
        return (
            f"- {p} missed by {why} ({_flips(g)} changed class)"
            + (f", with {kept}" if kept_layers else "")
            + f"{chose}."
        )
    if kept_layers:
        return f"- {p} passed with {kept}{chose}{cost}."
    if v.selection:
        return f"- {p} passed with {v.layers.describe() if v.layers else 'its layers as exported'}{chose}."
    return None


def _flips(g: GateResult) -> str:
    return f"{round((1 - g.agreement) * g.images)} of {g.images} images"
