"""Deployment: ONNX export and its gates (`export`, with ONNX Runtime's CPU INT8 in `quantize`),
ONNX Runtime sessions (`onnx_runtime`), the TensorRT engine (`engine`), a Triton repository
(`triton`), the plain model as a callable (`runners`), and what a client runs (`preprocess`,
`predict`)."""
