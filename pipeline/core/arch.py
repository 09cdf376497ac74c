"""Architecture constants the configuration checks against, without importing torchvision."""

from __future__ import annotations

#: torchvision classifiers LIO can train (each has layer1..layer4 and an `fc` head).
ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d", "wide_resnet50_2")
#: the stages whose output maps LIO's heads can read, and each one's stride from the input
STAGES = ("layer1", "layer2", "layer3", "layer4")
STRIDES = {"layer1": 4, "layer2": 8, "layer3": 16, "layer4": 32}

#: ONNX variants (pipeline/core/paths.py names their files): fp32 from torch.export, fp16 by ModelOpt
#: AutoCast, int8 by ModelOpt post-training quantization (QDQ for TensorRT), int8_cpu by ONNX Runtime's
#: static quantization (the format its CPU kernels run fastest).
PRECISIONS = ("fp32", "fp16", "int8", "int8_cpu")
#: what TensorRT builds from (int8_cpu is ONNX Runtime's own CPU quantization)
GPU_PRECISIONS = ("fp32", "fp16", "int8")


def stage_size(stage: str, crop: int) -> int:
    """Side of a stage's output map for a crop x crop input: every stride-2 step rounds up."""
    size = crop
    for _ in range(STRIDES[stage].bit_length() - 1):
        size = -(-size // 2)
    return size
