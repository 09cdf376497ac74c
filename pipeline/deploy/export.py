"""The export sequencer: the deployable -> every ONNX variant in `export.precisions`, gated
(mmdeploy's tools/deploy.py shape: converters, a registry, one judge, read top to bottom).

1. the image sets are chosen and decoded once (pipeline/data/heldout.py);
2. FP32 is exported and must match PyTorch on the test images (else it is removed and the stage fails);
3. the judge takes FP32's logits on every set (pipeline/deploy/judge.py);
4. each variant's recipe (pipeline/deploy/recipes.py) writes candidates; the fastest is kept (timed at
   `engine.max_batch` on this CPU); an INT8 one that misses the rule on the selection images keeps its
   most INT8-sensitive layers in FP32, the fewest that meet it (`int8_fallback`); then the gate
   decides once, on images training never saw. A rejected variant leaves no file; its numbers stay
   in reports/export.json.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn
from tqdm import tqdm

from pipeline.artifacts.deployable import Deployable
from pipeline.artifacts.export import (
    CandidateSpeed,
    ExportReport,
    FallbackSpeed,
    FusedCheck,
    Parity,
    SelectionTry,
    Variant,
)
from pipeline.config.data import TransformConfig
from pipeline.config.export import ExportConfig
from pipeline.core.timing import throughput
from pipeline.data.dataset import ManifestDataset, run_batches
from pipeline.data.heldout import HeldOut, ImageSets
from pipeline.data.manifest import Record, read_manifest
from pipeline.data.transforms import ClassificationPresetTrain, eval_preset
from pipeline.deploy import qat
from pipeline.deploy.convert import export_fp32, export_fused
from pipeline.deploy.int8_fallback import fewest, rank_layers
from pipeline.deploy.judge import ExportError, Judge, check_gate_images, check_parity
from pipeline.deploy.preprocess import resize_and_crop
from pipeline.deploy.quantize import layer_nodes, layer_precision
from pipeline.deploy.recipes import RECIPES, Candidate, Inputs, Recipe
from pipeline.deploy.runners import Backend, load_deployable, onnx_backend, torch_runner

__all__ = ["ExportError", "export_all"]


def export_all(
    weights: Path,
    prepared: Path,
    onnx_files: dict[str, Path],
    report: Path,
    cfg: ExportConfig,
    seed: int,
    batch: int,
    fused: Path | None = None,
) -> ExportReport:
    """Every variant of `cfg.precisions`, gated; the results, also written to `report`."""
    model, meta = load_deployable(weights)
    rows, _ = read_manifest(prepared)
    held_out = HeldOut.of(rows, cfg.calib_images, seed)
    check_gate_images(cfg.gates, cfg.precisions, len(held_out.gate), held_out.gate_source)
    for path in [*onnx_files.values(), *([fused] if fused else [])]:
        path.unlink(missing_ok=True)  # no variant of an earlier, wider export outlives this one
    sets = held_out.decode(eval_preset(meta.preprocess))
    fp32, parity = export_checked_fp32(model, meta, onnx_files["fp32"], cfg.opset, sets)
    judge = Judge.of(fp32, sets, cfg.gates)
    variants = {"fp32": reference_variant(fp32, parity, judge)}
    with tempfile.TemporaryDirectory(dir=fp32.file.parent) as work:
        inputs = recipe_inputs(model, meta, fp32.file, sets, cfg, seed, rows, Path(work))
        for precision in tqdm([p for p in cfg.precisions if p != "fp32"], desc="export", unit="variant"):
            made = Made(RECIPES[precision], inputs, judge, batch)
            variants[precision] = made.variant(precision, onnx_files[precision])
    fused_check = None
    if cfg.fuse_preprocess and fused is not None:
        fused_check = export_fused_checked(model, fused, meta, cfg.opset, held_out.test, judge.reference["test"])
    result = ExportReport(
        decided_on=f"{held_out.gate_source}, against onnxruntime-fp32 on {fp32.device}; INT8 settings chosen on "
        f"{held_out.select_source}",
        variants=variants,
        fused_preprocess=fused_check,
    )
    result.save(report)
    return result


def export_checked_fp32(
    model: nn.Module, meta: Deployable, path: Path, opset: int, sets: ImageSets
) -> tuple[Backend, Parity]:
    """The FP32 file on ONNX Runtime's best provider here, once it matches PyTorch on the test images."""
    export_fp32(model, path, meta.preprocess.crop, opset, meta)
    fp32 = onnx_backend("onnxruntime-fp32", path, "cuda" if torch.cuda.is_available() else "cpu")
    images = sets.test.pixels
    parity = check_parity(run_batches(fp32.run, images), run_batches(torch_runner(model), images))
    if not parity.passed:
        path.unlink()
        raise ExportError(f"{path}: ONNX Runtime disagrees with PyTorch on the test images ({parity}); file removed")
    return fp32, parity


def reference_variant(fp32: Backend, parity: Parity, judge: Judge) -> Variant:
    return Variant(
        precision="fp32",
        file=str(fp32.file),
        status="reference",
        test_top1=judge.top1("test"),
        provider=fp32.device,
        parity_vs_pytorch=parity,
        gate_top1=judge.top1("gate"),
    )


def recipe_inputs(
    model: nn.Module,
    meta: Deployable,
    fp32: Path,
    sets: ImageSets,
    cfg: ExportConfig,
    seed: int,
    rows: list[Record],
    work: Path,
) -> Inputs:
    """The recipes' shared inputs; the QAT student and the layer ranking are made on first use, once."""

    @cache
    def ranking():
        """Measured on up to 128 selection images, shared by both INT8 variants."""
        images = torch.from_numpy(sets.select.pixels[:128])
        return rank_layers(model, torch.from_numpy(sets.calibration), images)

    @cache
    def student() -> qat.Student:
        """Fine-tuned once, on the training split with the training augmentation."""
        spec = meta.preprocess
        transforms = meta.training.data.transforms if meta.training else TransformConfig(spec.resize, spec.crop)
        train_set = ManifestDataset(rows, "train", ClassificationPresetTrain(transforms))
        made = qat.train_student(model, train_set, torch.from_numpy(sets.calibration), cfg.qat, seed)
        made.fp32 = work / "qat.onnx"
        export_fp32(qat.plain(made.model), made.fp32, spec.crop, cfg.opset, meta)
        return made

    named = bool(layer_nodes(onnx.load(str(fp32))))  # a graph without torch's scopes names no layer
    uses_qat = cfg.qat.method != "none"
    return Inputs(
        fp32,
        sets.calibration,
        meta,
        cfg.int8_fallback_layers,
        cfg.opset,
        student if uses_qat else None,
        ranking if named else None,
    )


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
            verdict = self.judge.gate(backend, precision)
            if tries and tries[-1].reason:  # a fine-tuning that did not converge ships nothing, whatever the gate says
                verdict = replace(verdict, passed=False)
            cost = self.fallback_cost(first, chosen, speeds)
            layers = layer_precision(onnx.load(str(chosen.path))) if self.recipe.calibrated else None
            if verdict.passed:
                os.replace(chosen.path, out)
        timed = [
            CandidateSpeed(c.label, c.format, c.calibration, speeds[c.label], self.batch) for c in candidates if speeds
        ]
        return Variant(
            precision=precision,
            file=str(out),
            status="passed" if verdict.passed else "rejected",
            test_top1=verdict.test_top1,
            provider=backend.device,
            gate=verdict,
            calibration_images=len(self.inputs.calibration) if self.recipe.calibrated else None,
            format=chosen.format,
            calibration=chosen.calibration,
            qat=chosen.qat,
            parity_vs_fake_quant=chosen.parity_vs_fake_quant,
            failed=chosen.failed,
            candidates=timed,
            selection=tries,
            sensitivity=self.inputs.ranking() if self.inputs.ranking and len(tries) > 1 else [],
            kept_in_fp32=list(chosen.kept_in_fp32),
            inputs_in_fp32=list(chosen.inputs_in_fp32),
            fallback_speed=cost,
            rejected_because=tries[-1].reason if tries else None,
            layers=layers,
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


def export_fused_checked(
    model: nn.Module, path: Path, meta: Deployable, opset: int, rows: list[Record], reference: np.ndarray
) -> FusedCheck:
    """The fused variant, fed the client's uint8 crops of the test images, must give FP32's top-1
    and logits within 1e-4 of the largest (else it is removed and the stage fails)."""
    from pipeline.deploy import onnx_runtime

    export_fused(model, path, opset, meta)
    sess = onnx_runtime.session(path)
    crops = np.concatenate([resize_and_crop(r.path, meta.preprocess) for r in rows])
    logits = np.concatenate([sess.run(None, {"images": crops[i : i + 32]})[0] for i in range(0, len(crops), 32)])
    parity = check_parity(logits, reference)
    if not parity.passed:
        path.unlink()
        raise ExportError(f"{path}: the fused-preprocessing model disagrees with FP32 on the test images ({parity})")
    return FusedCheck(str(path), "uint8 [batch, crop, crop, 3]", parity)
