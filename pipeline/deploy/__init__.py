"""Deployment: the converters, file in and file out (`convert`, with ONNX Runtime's CPU INT8 in
`quantize`), the registry of precisions (`recipes`), the judge of every reduced precision (`judge`),
the export sequencer (`export`) with its fallback (`int8_fallback`) and quantization-aware fine-tuning
(`qat`), ONNX Runtime sessions (`onnx_runtime`), the backends as callables (`runners`), the TensorRT
engine (`engine`), what ships per target (`choice`), and what a client runs (`preprocess`, `predict`)."""
