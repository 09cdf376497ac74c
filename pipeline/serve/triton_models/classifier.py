"""Triton Python-backend model `lio_cpu`: the model's float32 input -> its logits (the ONNX graph's own
tensor names), on
the CPU runtime reports/runtime.json chose (ONNX Runtime or OpenVINO, `pipeline.serve.candidates`),
with the machine's threads. Triton's dynamic batcher hands over several requests at once: they run
as one batch and are split back, each response from its own request's rows."""

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from pipeline.serve.candidates import candidate


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        graph = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        self.run = candidate(config["parameters"]["candidate"]["string_value"]).open(graph).run
        self.input, self.output = config["input"][0]["name"], config["output"][0]["name"]

    def execute(self, requests):
        inputs = [pb_utils.get_input_tensor_by_name(r, self.input).as_numpy() for r in requests]
        logits = self.run(np.concatenate(inputs))
        responses, start = [], 0
        for x in inputs:
            rows = logits[start : start + len(x)]
            start += len(x)
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(self.output, rows)]))
        return responses
