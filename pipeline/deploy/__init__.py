"""Deployment: the converters, file in and file out (`convert`; ONNX Runtime's CPU INT8 runs in a fresh
interpreter from `quantize`, which also reads which layers a graph computes in INT8), the registry of
precisions (`recipes`), the judge of every reduced precision (`judge`), the export sequencer (`export`),
one variant being made (`made`) with its fallback (`int8_fallback`) and quantization-aware fine-tuning
(`qat`), ONNX Runtime sessions (`onnx_runtime`), the backends as callables (`runners`), the TensorRT
engine (`engine`), what ships per target (`choice`), and what a client runs (`preprocess`, `predict`)."""
