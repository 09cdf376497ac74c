"""ONNX export of the plain model, its reduced-precision variants, and the gates they must pass.

Precision is decided in the ONNX graph (docs/method.md, "Precision"), so that TensorRT can build
every GPU variant strongly typed: FP16 by ModelOpt AutoCast, INT8 by ModelOpt post-training
quantization (QDQ, made for TensorRT). `int8_cpu` is ONNX Runtime's own static quantization,
in the format its CPU kernels run fastest (ModelOpt's QDQ graph runs slower than FP32 there).

Each file is written atomically and checked before it lands: the FP32 export must pass
`onnx.checker` (full check) and match PyTorch on the test images. Every reduced-precision
variant then faces its gate (`export.gates`), decided on the **validation** split against FP32
on the best ONNX Runtime provider here (test numbers are recorded beside, never used to decide).
A variant that fails is deleted and marked rejected in reports/export.json with its numbers;
INT8 first gets a repair: the stem and the leading residual stages stay in FP32, one more stage
per try, until a try passes (error added early passes through every later layer; measured in
docs/measured.md, "INT8 at 0.99").
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from pipeline.config.export import ExportConfig, Gate
from pipeline.core.arch import STAGES
from pipeline.core.artifacts.deployable import Deployable
from pipeline.core.artifacts.export import ExportReport, GateResult, Variant
from pipeline.core.errors import PipelineError
from pipeline.core.io import atomic_path
from pipeline.core.metrics import accuracy, agreement, images_needed, paired_drop_ci, wilson
from pipeline.core.timing import throughput
from pipeline.data.dataset import logits_over, stack_images
from pipeline.data.manifest import Record, read_manifest
from pipeline.data.transforms import eval_preset
from pipeline.deploy import onnx_runtime
from pipeline.deploy.preprocess import resize_and_crop
from pipeline.deploy.quantize import export_int8_cpu, stage_nodes
from pipeline.deploy.runners import load_deployable, torch_runner

INPUT, OUTPUT = "input", "logits"


class ExportError(PipelineError, RuntimeError):
    pass


def export_fp32(model: nn.Module, path: Path, input_size: int, opset: int, meta: Deployable) -> None:
    """One self-contained file with a symbolic batch axis, from torch.export (opset >= 18)."""
    _export(model.eval(), torch.randn(2, 3, input_size, input_size), INPUT, path, opset, meta)


def _export(
    module: nn.Module, example: torch.Tensor, input_name: str, path: Path, opset: int, meta: Deployable
) -> None:
    """torch.export -> ONNX with a symbolic batch axis and the metadata inside, fully checked, atomically."""
    with atomic_path(path) as tmp:
        torch.onnx.export(
            module,
            (example,),
            str(tmp),
            dynamo=True,
            opset_version=opset,
            external_data=False,
            input_names=[input_name],
            output_names=[OUTPUT],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
        )
        proto = onnx.load(str(tmp))
        onnx_runtime.write_meta(proto, meta)
        onnx.save(proto, str(tmp))
        onnx.checker.check_model(str(tmp), full_check=True)


class FusedPreprocess(nn.Module):
    """uint8 NHWC images at the crop size -> logits: the scaling and normalisation move into the
    graph (TensorRT and Triton run them on the GPU), and a client only resizes and crops."""

    def __init__(self, model: nn.Module, mean: list[float], std: list[float]):
        super().__init__()
        self.model = model
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).float() / 255
        return self.model((x - self.mean) / self.std)


def export_fused(model: nn.Module, path: Path, opset: int, meta: Deployable) -> None:
    """The fused-preprocessing variant: input `images`, uint8 [batch, crop, crop, 3]
    (resized and centre-cropped RGB: pipeline.deploy.preprocess.resize_and_crop)."""
    spec = meta.preprocess
    fused = FusedPreprocess(model, spec.mean, spec.std).eval()
    meta = replace(meta, input="images", preprocess=replace(spec, layout="NHWC RGB uint8, resized and cropped"))
    _export(fused, torch.zeros(2, spec.crop, spec.crop, 3, dtype=torch.uint8), "images", path, opset, meta)


def check_parity(ort_logits: np.ndarray, torch_logits: np.ndarray, tolerance: float = 1e-4) -> dict:
    """Same top-1 on every image, and logits within `tolerance` x the largest |logit|."""
    scale = float(np.abs(torch_logits).max())
    max_diff = float(np.abs(ort_logits - torch_logits).max())
    same_top1 = bool((ort_logits.argmax(1) == torch_logits.argmax(1)).all())
    return {
        "images": len(torch_logits),
        "same_top1": same_top1,
        "max_abs_diff": max_diff,
        "largest_logit": scale,
        "passed": same_top1 and max_diff <= tolerance * scale,
    }


def export_fp16(fp32: Path, path: Path, meta: Deployable) -> None:
    from modelopt.onnx.autocast import convert_to_mixed_precision

    with atomic_path(path) as tmp:
        proto = convert_to_mixed_precision(onnx_path=str(fp32), low_precision_type="fp16", keep_io_types=True)
        onnx_runtime.write_meta(proto, meta)
        onnx.save(proto, str(tmp))
        onnx.checker.check_model(str(tmp))


def export_int8(
    fp32: Path, path: Path, calibration: np.ndarray, meta: Deployable, exclude: tuple[str, ...] = ()
) -> None:
    """ModelOpt post-training quantization (QDQ, for TensorRT) calibrated on training images;
    `exclude` names the nodes that stay in FP32 (exact names)."""
    from modelopt.onnx.quantization import quantize

    with atomic_path(path) as tmp:
        quantize(
            onnx_path=str(fp32),
            quantize_mode="int8",
            calibration_data=calibration.astype(np.float32),
            calibration_method="entropy",
            calibration_eps=["cpu"],
            nodes_to_exclude=[re.escape(name) + "$" for name in exclude] or None,  # ModelOpt matches re.match
            output_path=str(tmp),
            high_precision_dtype="fp32",
            log_level="WARNING",
        )
        proto = onnx.load(str(tmp))
        onnx_runtime.write_meta(proto, meta)
        onnx.save(proto, str(tmp))
        onnx.checker.check_model(str(tmp))


def judge(gate: Gate, reference: dict, logits: dict, labels: dict) -> GateResult:
    """The gate on the gate images (`passed` decides on the estimates), with their 95% intervals;
    test numbers beside (reported only)."""
    mine, ref, y = logits["gate"].argmax(1), reference["gate"].argmax(1), labels["gate"]
    n, same = len(y), int((mine == ref).sum())
    lost, gained = int(((ref == y) & (mine != y)).sum()), int(((ref != y) & (mine == y)).sum())
    top1, top1_fp32 = float((mine == y).mean()), float((ref == y).mean())
    drop, agree = top1_fp32 - top1, same / n
    return GateResult(
        passed=bool(drop <= gate.max_top1_drop + 1e-12 and agree >= gate.min_agreement),
        max_top1_drop=gate.max_top1_drop,
        min_agreement=gate.min_agreement,
        images=n,
        top1=top1,
        top1_fp32=top1_fp32,
        top1_drop=drop,
        top1_drop_ci95=paired_drop_ci(lost, gained, n),
        agreement=agree,
        agreement_ci95=wilson(same, n),
        test_top1=accuracy(logits["test"], labels["test"])["top1"],
        test_agreement=agreement(logits["test"], reference["test"]),
        max_abs_diff_vs_fp32=float(np.abs(logits["test"] - reference["test"]).max()),
    )


def check_gate_images(gates: dict[str, Gate], precisions: list[str], n: int, where: str) -> None:
    """Refuses, before any export, a gate its images cannot decide: one image must be worth at most
    a fifth of the gate's tolerance (0.99 agreement: 500 images)."""
    for p in precisions:
        if p == "fp32":
            continue
        g = gates[p]
        needed = max(images_needed(g.max_top1_drop), images_needed(1 - g.min_agreement))
        if n < needed:
            raise ExportError(
                f"export.gates.{p} (max_top1_drop {g.max_top1_drop}, min_agreement {g.min_agreement}) needs at "
                f"least {needed} images to decide (one image may be worth at most a fifth of its tolerance), but "
                f"{where} holds {n}: loosen the gate, or give it more images (a larger validation split; for the "
                "embedded set, data.synthetic.extra_gate_per_class)"
            )


def batch32_throughput(path: Path, images: np.ndarray, iters: int = 3) -> float:
    """Images per second at batch 32 on this machine's ONNX Runtime CPU provider."""
    sess = onnx_runtime.session(path)
    x = np.resize(images, (32, *images.shape[1:])).astype(np.float32)
    return throughput(lambda b: onnx_runtime.run(sess, b), x, iters)


# --- the registered variants: each yields candidate files, and may repair a failing one -------------


@dataclass(frozen=True)
class Inputs:
    """What every variant's recipe gets: the FP32 file, calibration images (training split), metadata,
    and how many stages a repair may keep in FP32."""

    fp32: Path
    calibration: np.ndarray
    meta: Deployable
    repair_stages: int


@dataclass
class Candidate:
    label: str  # e.g. "QOperator/MinMax"; "" for a variant's only candidate
    path: Path
    details: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Recipe:
    """How one precision is made: `candidates` writes each candidate into a scratch folder; `repair`,
    when every candidate failed its gate, writes further tries from the closest, the least
    repaired first (the loop stops at the first that passes)."""

    candidates: Callable[[Inputs, Path], Iterator[Candidate]]
    repair: Callable[[Inputs, Path, Candidate], Iterator[Candidate]] | None = None
    calibrated: bool = False


def _fp16(inputs: Inputs, scratch: Path) -> Iterator[Candidate]:
    path = scratch / "fp16.onnx"
    export_fp16(inputs.fp32, path, inputs.meta)
    yield Candidate("", path)


def _int8(inputs: Inputs, scratch: Path) -> Iterator[Candidate]:
    path = scratch / "int8.onnx"
    export_int8(inputs.fp32, path, inputs.calibration, inputs.meta)
    yield Candidate("", path)


def kept_modules(stages: int) -> list[str]:
    return ["stem", *STAGES[:stages]]


def repair_tries(inputs: Inputs, fp32: onnx.ModelProto) -> range:
    """How many stages each repair try keeps: 1, 2, ... `repair_stages`; none for a graph without
    torch's module scopes (nothing to name)."""
    return range(1, inputs.repair_stages + 1) if stage_nodes(fp32, 1) else range(0)


def _int8_repair(inputs: Inputs, scratch: Path, failed: Candidate) -> Iterator[Candidate]:
    """Quantize again with the stem and the first 1, 2, ... stages kept in FP32."""
    graph = onnx.load(str(inputs.fp32))
    for k in repair_tries(inputs, graph):
        path = scratch / f"int8-fp32-{k}.onnx"
        export_int8(inputs.fp32, path, inputs.calibration, inputs.meta, exclude=tuple(stage_nodes(graph, k)))
        yield Candidate(f"FP32 through {STAGES[k - 1]}", path, {"kept_in_fp32": kept_modules(k)})


def _int8_cpu(inputs: Inputs, scratch: Path) -> Iterator[Candidate]:
    for (fmt, method), path in export_int8_cpu(inputs.fp32, scratch, inputs.calibration, inputs.meta).items():
        yield Candidate(f"{fmt}/{method}", path, {"format": fmt, "calibration": method})


def _int8_cpu_repair(inputs: Inputs, scratch: Path, failed: Candidate) -> Iterator[Candidate]:
    """The closest candidate's format and calibration, with the stem and the first 1, 2, ...
    stages kept in FP32."""
    setting = (failed.details["format"], failed.details["calibration"])
    for k in repair_tries(inputs, onnx.load(str(inputs.fp32))):
        path = export_int8_cpu(inputs.fp32, scratch, inputs.calibration, inputs.meta, (setting,), k)[setting]
        details = {**failed.details, "kept_in_fp32": kept_modules(k)}
        yield Candidate(f"{failed.label} FP32 through {STAGES[k - 1]}", path, details)


#: precision -> its recipe; fp32 is the reference every other variant is gated against
RECIPES: dict[str, Recipe] = {
    "fp16": Recipe(_fp16),
    "int8": Recipe(_int8, repair=_int8_repair, calibrated=True),
    "int8_cpu": Recipe(_int8_cpu, repair=_int8_cpu_repair, calibrated=True),
}


def export_all(
    deployable: Path,
    prepared: Path,
    onnx_files: dict[str, Path],
    report: Path,
    cfg: ExportConfig,
    seed: int,
    fused: Path | None = None,
) -> ExportReport:
    """The deployable -> every ONNX variant in `cfg.precisions`, gated; returns the results,
    also written to `report` (reports/export.json).

    One loop for every variant: its recipe writes candidates, each is gated on validation, a
    repair follows when all fail, and the fastest that passes (batch 32 on this CPU, timed only
    when there is a choice) becomes the variant's file. Preprocessing comes from the deployable's
    metadata. No variant of an earlier, wider export outlives this one; an FP32 file that
    disagrees with PyTorch is removed and the stage fails.
    """
    model, meta = load_deployable(deployable)
    rows, _ = read_manifest(prepared)
    preset = eval_preset(meta.preprocess)
    split = {s: [r for r in rows if r.split == s] for s in ("train", "val", "test")}
    split["gate"] = split["val"] + [r for r in rows if r.split == "gate"]  # never trained on, labelled
    labels = {s: np.array([r.label for r in split[s]]) for s in ("val", "gate", "test")}
    held_out = len(split["gate"]) - len(split["val"])
    where = f"the validation split ({len(split['val'])} images)" + (
        f" with {held_out} held-out gate images" if held_out else ""
    )
    check_gate_images(cfg.gates, cfg.precisions, len(split["gate"]), where)

    for path in [*onnx_files.values(), *([fused] if fused else [])]:
        path.unlink(missing_ok=True)
    fp32 = onnx_files["fp32"]
    export_fp32(model, fp32, meta.preprocess.crop, cfg.opset, meta)
    session = onnx_runtime.session(fp32, "cuda" if torch.cuda.is_available() else "cpu")
    fp32_run = lambda x: onnx_runtime.run(session, x)  # noqa: E731
    out = logits_over({"pytorch": torch_runner(model), "fp32": fp32_run}, split["test"], preset)
    parity = check_parity(out["fp32"], out["pytorch"])
    if not parity["passed"]:
        fp32.unlink()
        raise ExportError(f"{fp32}: ONNX Runtime disagrees with PyTorch on the test images ({parity}); file removed")
    reference = {"test": out["fp32"], "gate": logits_over({"r": fp32_run}, split["gate"], preset)["r"]}
    variants = {
        "fp32": Variant(
            precision="fp32",
            file=str(fp32),
            status="reference",
            test_top1=accuracy(reference["test"], labels["test"])["top1"],
            provider=onnx_runtime.provider(session),
            details={"parity_vs_pytorch": parity, "gate_top1": accuracy(reference["gate"], labels["gate"])["top1"]},
        )
    }

    order = np.random.default_rng(seed).permutation(len(split["train"]))[: cfg.calib_images]
    calibration = stack_images([split["train"][i] for i in order], preset).numpy()
    inputs = Inputs(fp32, calibration, meta, cfg.int8_repair_stages)

    def gate(path: Path, precision: str) -> tuple[GateResult, str]:
        sess = onnx_runtime.session(path)
        run = lambda x: onnx_runtime.run(sess, x)  # noqa: E731
        logits = {s: logits_over({"v": run}, split[s], preset)["v"] for s in ("gate", "test")}
        return judge(cfg.gates[precision], reference, logits, labels), onnx_runtime.provider(sess)

    for precision in cfg.precisions:
        if precision != "fp32":
            variants[precision] = export_variant(precision, RECIPES[precision], inputs, onnx_files[precision], gate)
    fused_check = None
    if cfg.fuse_preprocess and fused is not None:
        fused_check = export_fused_checked(model, fused, meta, cfg.opset, split["test"], reference["test"])
    result = ExportReport(
        decided_on=f"{where}, against onnxruntime-fp32 on {onnx_runtime.provider(session)}",
        variants=variants,
        fused_preprocess=fused_check,
    )
    result.save(report)
    return result


def export_variant(
    precision: str, recipe: Recipe, inputs: Inputs, out: Path, gate: Callable[[Path, str], tuple[GateResult, str]]
) -> Variant:
    """Candidates -> gate each -> if all failed, repair tries until one passes -> the fastest that
    passes lands at `out` (a rejected variant leaves no file; its numbers stay in the report)."""
    details: dict = {"calibration_images": len(inputs.calibration)} if recipe.calibrated else {}
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        tried = [(c, *gate(c.path, precision)) for c in recipe.candidates(inputs, Path(tmp))]
        speeds = {}
        if len(tried) > 1:  # a choice between candidates: the fastest that passes
            speeds = {c.label: batch32_throughput(c.path, inputs.calibration) for c, _, _ in tried}
            details["candidates"] = [
                {**c.details, "batch32_img_s": speeds[c.label], "gate": asdict(v)} for c, v, _ in tried
            ]
        repaired = []
        if recipe.repair is not None and inputs.repair_stages and not any(v.passed for _, v, _ in tried):
            closest = max(tried, key=lambda t: t[1].agreement)
            for candidate in recipe.repair(inputs, Path(tmp), closest[0]):
                repaired.append((candidate, *gate(candidate.path, precision)))
                if repaired[-1][1].passed:
                    break
            details["repair"] = {
                "first_try": {"candidate": closest[0].label, "gate": asdict(closest[1])},
                "tries": [{"kept_in_fp32": c.details["kept_in_fp32"], "gate": asdict(v)} for c, v, _ in repaired],
            }
        passing = [t for t in tried + repaired if t[1].passed]
        if passing:  # a repair runs only when no candidate passed: at most its last try passes
            chosen = max(passing, key=lambda t: speeds.get(t[0].label, 0.0))
            os.replace(chosen[0].path, out)
            details |= {k: v for k, v in chosen[0].details.items() if k in ("format", "calibration", "kept_in_fp32")}
        else:  # the last repair, or the closest candidate, speaks for the variant
            chosen = repaired[-1] if repaired else min(tried, key=lambda t: t[1].top1_drop)
        _, verdict, provider = chosen
    return Variant(
        precision=precision,
        file=str(out),
        status="passed" if verdict.passed else "rejected",
        test_top1=verdict.test_top1,
        provider=provider,
        gate=verdict,
        details=details,
    )


def export_fused_checked(
    model: nn.Module, path: Path, meta: Deployable, opset: int, rows: list[Record], reference: np.ndarray
) -> dict:
    """The fused variant, fed the client's uint8 crops of the test images, must give FP32's top-1
    and logits within 1e-4 of the largest (else it is removed and the stage fails)."""
    export_fused(model, path, opset, meta)
    sess = onnx_runtime.session(path)
    crops = np.concatenate([resize_and_crop(r.path, meta.preprocess) for r in rows])
    logits = np.concatenate([sess.run(None, {"images": crops[i : i + 32]})[0] for i in range(0, len(crops), 32)])
    parity = check_parity(logits, reference)
    if not parity["passed"]:
        path.unlink()
        raise ExportError(f"{path}: the fused-preprocessing model disagrees with FP32 on the test images ({parity})")
    return {"file": str(path), "input": "uint8 [batch, crop, crop, 3]", "parity_vs_fp32": parity}
