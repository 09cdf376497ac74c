"""The Triton model repository the bundled server runs (models/triton_cpu), and the front both
repositories share:

- `lio` (ensemble): encoded image bytes (BYTES, batchable) -> the logits, labelled, so that Triton's
  classification extension answers the top k labels with their scores (`class_count`);
- `lio_preprocess` (Python backend): the bytes -> the model's input, by the pipeline's own
  `preprocess` (pipeline/serve/triton_models/preprocess.py);
- `lio_cpu` (Python backend, this repository only): the chosen CPU candidate on a byte-identical copy
  of its ONNX graph (pipeline/serve/triton_models/classifier.py). PyPI's bundled server has only the
  Python backend; NGC's container runs the same graph on its native backend (pipeline/serve/triton.py).

`files.json` lists every file with its SHA-256: `lio serve` refuses to start when one changed on disk.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import onnx

from pipeline.artifacts.deployable import Preprocess
from pipeline.artifacts.triton import Repository
from pipeline.core.io import atomic_dir, sha256, write_json
from pipeline.deploy.preprocess import MAX_PIXELS

ENSEMBLE, PREPROCESS, CLASSIFIER = "lio", "lio_preprocess", "lio_cpu"
IMAGE, PIXELS, LOGITS = "IMAGE", "PIXELS", "LOGITS"  # the ensemble's tensors
MODELS_SOURCE = Path(__file__).with_name("triton_models")
FILES = "files.json"
#: the largest encoded image a request may carry (a 448 px JPEG is about 50 KB; a 24 MP photo about 10 MB)
MAX_IMAGE_BYTES = 16 * 2**20


def _tensor(name: str, dtype: str, dims: list[int], labels: bool = False) -> str:
    label = '\n    label_filename: "labels.txt"' if labels else ""
    return f'  {{\n    name: "{name}"\n    data_type: {dtype}\n    dims: [ {", ".join(map(str, dims))} ]{label}\n  }}'


def _parameters(values: dict[str, str]) -> str:
    items = [f'  {{\n    key: "{k}"\n    value: {{ string_value: {json.dumps(v)} }}\n  }}' for k, v in values.items()]
    return f"parameters [\n{','.join(items)}\n]\n"


def python_config(name: str, max_batch: int, inputs: list[str], outputs: list[str], parameters: dict) -> str:
    """A Python-backend model on one CPU instance, dynamically batched up to `max_batch`."""
    return (
        f'name: "{name}"\nbackend: "python"\nmax_batch_size: {max_batch}\n'
        f"input [\n{','.join(inputs)}\n]\noutput [\n{','.join(outputs)}\n]\n"
        f"dynamic_batching {{\n  max_queue_delay_microseconds: 500\n}}\n"
        f"instance_group [\n  {{\n    count: 1\n    kind: KIND_CPU\n  }}\n]\n" + _parameters(parameters)
    )


def ensemble_config(classifier: str, tensors: tuple[str, str], max_batch: int, classes: int) -> str:
    """`lio`: bytes -> `lio_preprocess` -> `classifier` (its input and output tensor names) -> labelled logits."""
    given, made = tensors
    return (
        f'name: "{ENSEMBLE}"\nplatform: "ensemble"\nmax_batch_size: {max_batch}\n'
        f"input [\n{_tensor(IMAGE, 'TYPE_STRING', [1])}\n]\n"
        f"output [\n{_tensor(LOGITS, 'TYPE_FP32', [classes], labels=True)}\n]\n"
        "ensemble_scheduling {\n  step [\n"
        f'    {{\n      model_name: "{PREPROCESS}"\n      model_version: -1\n'
        f'      input_map {{ key: "{IMAGE}" value: "{IMAGE}" }}\n'
        f'      output_map {{ key: "{PIXELS}" value: "pixels" }}\n    }},\n'
        f'    {{\n      model_name: "{classifier}"\n      model_version: -1\n'
        f'      input_map {{ key: "{given}" value: "pixels" }}\n'
        f'      output_map {{ key: "{made}" value: "{LOGITS}" }}\n    }}\n'
        "  ]\n}\n"
    )


def write_front(
    root: Path, classifier: str, tensors: tuple[str, str], preprocess: Preprocess, max_batch: int, classes: list[str]
) -> None:
    """`lio_preprocess` and the `lio` ensemble in front of `classifier`, shared by both repositories."""
    folder = root / PREPROCESS
    (folder / "1").mkdir(parents=True)
    shutil.copyfile(MODELS_SOURCE / "preprocess.py", folder / "1" / "model.py")
    crop = preprocess.crop
    (folder / "config.pbtxt").write_text(
        python_config(
            PREPROCESS,
            max_batch,
            [_tensor(IMAGE, "TYPE_STRING", [1])],
            [_tensor(PIXELS, "TYPE_FP32", [3, crop, crop])],
            {
                "preprocess": json.dumps(dataclasses.asdict(preprocess)),
                "max_pixels": str(MAX_PIXELS),
                "max_bytes": str(MAX_IMAGE_BYTES),
            },
        )
    )
    (root / ENSEMBLE / "1").mkdir(parents=True)
    # Triton needs the ensemble's version folder, and neither git nor DVC keeps an empty one
    (root / ENSEMBLE / "1" / "ensemble.txt").write_text("The `lio` ensemble has no model file: config.pbtxt is it.\n")
    (root / ENSEMBLE / "labels.txt").write_text("\n".join(classes) + "\n")
    (root / ENSEMBLE / "config.pbtxt").write_text(ensemble_config(classifier, tensors, max_batch, len(classes)))


def hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): sha256(p) for p in sorted(root.rglob("*")) if p.is_file() and p.name != FILES}


def write_cpu_repository(
    out: Path, graph: Path, candidate: str, preprocess: Preprocess, classes: list[str], max_batch: int
) -> Repository:
    """models/triton_cpu: the ensemble in front of `lio_cpu`, which runs `candidate` on a copy of `graph`."""
    model = onnx.load(str(graph), load_external_data=False).graph
    tensors = (model.input[0].name, model.output[0].name)
    crop = preprocess.crop
    with atomic_dir(out) as tmp:
        write_front(tmp, CLASSIFIER, tensors, preprocess, max_batch, classes)
        folder = tmp / CLASSIFIER
        (folder / "1").mkdir(parents=True)
        shutil.copyfile(MODELS_SOURCE / "classifier.py", folder / "1" / "model.py")
        shutil.copyfile(graph, folder / "1" / "model.onnx")
        (folder / "config.pbtxt").write_text(
            python_config(
                CLASSIFIER,
                max_batch,
                [_tensor(tensors[0], "TYPE_FP32", [3, crop, crop])],
                [_tensor(tensors[1], "TYPE_FP32", [len(classes)])],
                {"candidate": candidate},
            )
        )
        repository = Repository([ENSEMBLE, PREPROCESS, CLASSIFIER], candidate, max_batch, hashes(tmp))
        write_json(tmp / FILES, repository.to_json())
    return repository


def read_repository(root: Path) -> Repository:
    return Repository.load(root / FILES)
