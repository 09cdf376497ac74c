"""The one judge of every reduced-precision variant, as Polygraphy's Comparator is: it holds FP32's
logits on each image set and compares a candidate backend's against them.

`select` measures a candidate on the selection images (how the INT8 settings are chosen, as often as
needed); `gate` decides once, on the gate images, by MLPerf Inference's rule (top-1 at least
`min_top1_ratio` x FP32's, agreement with FP32 as a floor against broken quantization), with test
numbers beside, reported only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.artifacts.export import GateResult, Parity, SelectionTry
from pipeline.config.export import RULE, Gate
from pipeline.core.errors import PipelineError
from pipeline.core.metrics import accuracy, agreement, images_needed, paired_drop_ci, wilson
from pipeline.data.dataset import run_batches
from pipeline.data.heldout import ImageSets
from pipeline.deploy.runners import Backend


class ExportError(PipelineError, RuntimeError):
    pass


def check_parity(ort_logits: np.ndarray, torch_logits: np.ndarray, tolerance: float = 1e-4) -> Parity:
    """Same top-1 on every image, and logits within `tolerance` x the largest |logit|."""
    scale = float(np.abs(torch_logits).max())
    max_diff = float(np.abs(ort_logits - torch_logits).max())
    same_top1 = bool((ort_logits.argmax(1) == torch_logits.argmax(1)).all())
    return Parity(len(torch_logits), same_top1, max_diff, scale, same_top1 and max_diff <= tolerance * scale)


def check_gate_images(gates: dict[str, Gate], precisions: list[str], n: int, where: str) -> None:
    """Refuses, before any export, a gate its `n` images (`where`) cannot decide: one image must be worth
    at most a fifth of the gate's tolerance (0.99 agreement: 500 images)."""
    for p in precisions:
        if p == "fp32":
            continue
        g = gates[p]
        needed = max(images_needed(1 - g.min_top1_ratio), images_needed(1 - g.min_agreement))
        if n < needed:
            raise ExportError(
                f"export.gates.{p} (min_top1_ratio {g.min_top1_ratio}, min_agreement {g.min_agreement}) needs at "
                f"least {needed} images to decide (one image may be worth at most a fifth of its tolerance), but "
                f"{where} holds {n}: loosen the gate, or give it more images (a larger validation "
                "split; for the embedded set, data.synthetic.extra_gate_per_class)"
            )


@dataclass(frozen=True)
class Judge:
    """FP32's logits on the test, gate and selection images, and each precision's gate."""

    sets: ImageSets
    reference: dict[str, np.ndarray]  # "test" | "gate" | "select" -> FP32's logits
    gates: dict[str, Gate]

    @classmethod
    def of(cls, fp32: Backend, sets: ImageSets, gates: dict[str, Gate]) -> Judge:
        reference = {name: run_batches(fp32.run, getattr(sets, name).pixels) for name in ("test", "gate", "select")}
        return cls(sets, reference, gates)

    def top1(self, name: str) -> float:
        """FP32's top-1 on an image set."""
        return accuracy(self.reference[name], getattr(self.sets, name).labels)["top1"]

    def select(self, candidate: Backend, precision: str, label: str, kept: list[str]) -> SelectionTry:
        """The candidate against FP32 on the selection images, held to its gate's thresholds."""
        y, ref = self.sets.select.labels, self.reference["select"].argmax(1)
        mine = run_batches(candidate.run, self.sets.select.pixels).argmax(1)
        top1, top1_fp32, agree = float((mine == y).mean()), float((ref == y).mean()), float((mine == ref).mean())
        passed = self.gates[precision].accepts(top1, top1_fp32, agree)
        return SelectionTry(label, kept, len(y), agree, top1, top1_fp32, top1_fp32 - top1, passed)

    def gate(self, candidate: Backend, precision: str) -> GateResult:
        """The gate on the gate images (`passed` decides on the estimates), with their 95% intervals;
        test numbers beside (reported only)."""
        gate, y = self.gates[precision], self.sets.gate.labels
        logits = {name: run_batches(candidate.run, getattr(self.sets, name).pixels) for name in ("gate", "test")}
        mine, ref = logits["gate"].argmax(1), self.reference["gate"].argmax(1)
        n, same = len(y), int((mine == ref).sum())
        lost, gained = int(((ref == y) & (mine != y)).sum()), int(((ref != y) & (mine == y)).sum())
        top1, top1_fp32 = float((mine == y).mean()), float((ref == y).mean())
        short = gate.shortfalls(top1, top1_fp32, same / n)
        return GateResult(
            passed=not short,
            rule=RULE,
            min_top1_ratio=gate.min_top1_ratio,
            min_agreement=gate.min_agreement,
            images=n,
            top1=top1,
            top1_fp32=top1_fp32,
            top1_ratio=top1 / top1_fp32 if top1_fp32 else float("nan"),
            top1_drop=top1_fp32 - top1,
            top1_drop_ci95=paired_drop_ci(lost, gained, n),
            agreement=same / n,
            agreement_ci95=wilson(same, n),
            test_top1=accuracy(logits["test"], self.sets.test.labels)["top1"],
            test_agreement=agreement(logits["test"], self.reference["test"]),
            max_abs_diff_vs_fp32=float(np.abs(logits["test"] - self.reference["test"]).max()),
            shortfalls=short,
        )
