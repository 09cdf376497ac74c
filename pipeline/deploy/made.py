"""One precision variant being made (pipeline/deploy/export.py runs one per precision): its recipe's
candidates, timed, the fastest; for INT8, the selection tries and the fallback; the gate, once; and the
report's row. A file lands only when the gate passed it."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx

from pipeline.artifacts.export import CandidateSpeed, FallbackSpeed, GateResult, SelectionTry, Variant
from pipeline.core.timing import throughput
from pipeline.deploy.int8_fallback import fewest
from pipeline.deploy.judge import Judge
from pipeline.deploy.quantize import layer_precision
from pipeline.deploy.recipes import Candidate, Inputs, Recipe
from pipeline.deploy.runners import Backend, onnx_backend


@dataclass(frozen=True)
class Outcome:
    """What making one variant gave: its candidates and their speeds, the one that went to the gate,
    the selection tries, and the gate's verdict."""

    candidates: list[Candidate]
    speeds: dict[str, float]
    chosen: Candidate
    tries: list[SelectionTry]
    device: str
    verdict: GateResult


@dataclass
class Made:
    """One variant being made: its recipe's candidates -> the fastest -> (INT8) the selection tries
    and the fallback -> the gate, once."""

    recipe: Recipe
    inputs: Inputs
    judge: Judge
    batch: int  # the batch its CPU speed is timed at: engine.max_batch, the report's

    def speed(self, path: Path) -> float:
        """Images per second at `batch` on this machine's ONNX Runtime CPU provider."""
        x = np.resize(self.inputs.calibration, (self.batch, *self.inputs.calibration.shape[1:])).astype(np.float32)
        return throughput(onnx_backend("", path).run, x, 3)

    def select(self, candidate: Candidate, precision: str) -> SelectionTry:
        """One selection try; a QAT run that did not converge falls short with its reason."""
        tried = self.judge.select(
            onnx_backend("", candidate.path), precision, candidate.label, list(candidate.kept_in_fp32)
        )
        q = candidate.qat
        if q is not None and not q.converged:
            reason = (
                "quantization-aware fine-tuning did not converge: relative logit error vs FP32 on the calibration "
                f"images {q.relative_error_before:.4f} before, {q.relative_error_after:.4f} after"
            )
            tried = replace(tried, passed=False, reason=reason)
        return tried

    def variant(self, precision: str, out: Path) -> Variant:
        """The file lands at `out` only when the gate passed it; its numbers stay in the report either way."""
        with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
            candidates = list(self.recipe.candidates(self.inputs, Path(tmp)))
            speeds = {c.label: self.speed(c.path) for c in candidates} if len(candidates) > 1 else {}
            first = max(candidates, key=lambda c: speeds[c.label]) if speeds else candidates[0]  # on speed alone
            chosen, tries = self.selected(first, precision, Path(tmp))
            backend = onnx_backend(f"onnxruntime-{precision}", chosen.path)
            verdict = self.gated(backend, precision, tries)
            made = Outcome(candidates, speeds, chosen, tries, backend.device, verdict)
            record = self.record(precision, out, made, self.fallback_cost(first, chosen, speeds))
            if verdict.passed:
                os.replace(chosen.path, out)
        return record

    def gated(self, backend: Backend, precision: str, tries: list[SelectionTry]) -> GateResult:
        """The gate's verdict; a fine-tuning that did not converge ships nothing, whatever the gate says."""
        verdict = self.judge.gate(backend, precision)
        return replace(verdict, passed=False) if tries and tries[-1].reason else verdict

    def record(self, precision: str, out: Path, made: Outcome, cost: FallbackSpeed | None) -> Variant:
        """The report's row for the variant, from what was made, tried, timed and gated."""
        chosen, tries, verdict, speeds = made.chosen, made.tries, made.verdict, made.speeds
        return Variant(
            precision=precision,
            file=str(out),
            status="passed" if verdict.passed else "rejected",
            test_top1=verdict.test_top1,
            provider=made.device,
            gate=verdict,
            calibration_images=len(self.inputs.calibration) if self.recipe.calibrated else None,
            format=chosen.format,
            calibration=chosen.calibration,
            qat=chosen.qat,
            parity_vs_fake_quant=chosen.parity_vs_fake_quant,
            failed=chosen.failed,
            candidates=[
                CandidateSpeed(c.label, c.format, c.calibration, speeds[c.label], self.batch)
                for c in made.candidates
                if speeds
            ],
            selection=tries,
            sensitivity=self.inputs.ranking() if self.inputs.ranking and len(tries) > 1 else [],
            kept_in_fp32=list(chosen.kept_in_fp32),
            inputs_in_fp32=list(chosen.inputs_in_fp32),
            fallback_speed=cost,
            rejected_because=tries[-1].reason if tries else None,
            layers=layer_precision(onnx.load(str(chosen.path))) if self.recipe.calibrated else None,
        )

    def selected(self, first: Candidate, precision: str, scratch: Path) -> tuple[Candidate, list[SelectionTry]]:
        """A calibrated variant's candidate on the selection images, and the fallback when it falls short;
        the one that goes to the gate, and every try."""
        recipe, inputs = self.recipe, self.inputs
        if not recipe.calibrated:
            return first, []
        tries = [self.select(first, precision)]
        if not tries[-1].passed and recipe.keep_fp32 and inputs.ranking and inputs.fallback_layers:
            return self.fallback(first, precision, scratch, tries), tries
        return first, tries

    def fallback_cost(self, first: Candidate, chosen: Candidate, speeds: dict[str, float]) -> FallbackSpeed | None:
        """What the layers the fallback kept cost in speed, on this CPU (for a file that runs here)."""
        if chosen is first or not self.recipe.runs_here:
            return None
        return FallbackSpeed(speeds.get(first.label) or self.speed(first.path), self.speed(chosen.path), self.batch)

    def fallback(self, failed: Candidate, precision: str, scratch: Path, tries: list[SelectionTry]) -> Candidate:
        """The fewest of the most INT8-sensitive layers kept in FP32 that meet the rule on the selection
        images (`fewest`: doubling, then bisecting; each try quantizes for real and is recorded in
        `tries`); when even `fallback_layers` miss it, the try that kept the most goes to the gate."""
        keep_fp32, ranking = self.recipe.keep_fp32, self.inputs.ranking
        assert keep_fp32 is not None and ranking is not None
        ranked = ranking()
        made: dict[int, Candidate] = {}

        def accepts(k: int) -> bool:
            made[k] = keep_fp32(self.inputs, scratch, failed, tuple(s.layer for s in ranked[:k]))
            tries.append(self.select(made[k], precision))
            return tries[-1].passed

        k = fewest(accepts, min(self.inputs.fallback_layers, len(ranked)))
        return made[k if k is not None else max(made)]
