"""Triton Python-backend model `lio_preprocess`: encoded image bytes (BYTES, batched) -> the model's
float32 input, by `pipeline.deploy.preprocess.preprocess`, the function the pipeline scored with (the
pixel limit and the truncated-file check included), after a limit on the encoded size. A bad image
fails its own request with INVALID_ARG (HTTP 400) naming what was wrong; the other requests of the
batch are answered."""

import json

import numpy as np
import triton_python_backend_utils as pb_utils

from pipeline.data.dataset import ImageError
from pipeline.deploy.preprocess import preprocess


class TritonPythonModel:
    def initialize(self, args):
        parameters = json.loads(args["model_config"])["parameters"]
        self.spec = json.loads(parameters["preprocess"]["string_value"])
        self.max_pixels = int(parameters["max_pixels"]["string_value"])
        self.max_bytes = int(parameters["max_bytes"]["string_value"])

    def pixels(self, request) -> np.ndarray:
        images = pb_utils.get_input_tensor_by_name(request, "IMAGE").as_numpy().reshape(-1)
        for i, raw in enumerate(images):
            if len(raw) > self.max_bytes:
                raise ImageError(
                    f"IMAGE[{i}]: {len(raw):,} bytes, over the limit of {self.max_bytes:,}; send a smaller file"
                )
        return np.concatenate(
            [preprocess(bytes(raw), self.spec, self.max_pixels, f"IMAGE[{i}]") for i, raw in enumerate(images)]
        )

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                out = pb_utils.Tensor("PIXELS", self.pixels(request))
                responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
            except ImageError as e:
                error = pb_utils.TritonError(str(e), pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=error))
        return responses
