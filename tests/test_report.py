"""Report helpers: accuracy, mask IoU, latency statistics, the Markdown table."""
import numpy as np
import torch

from pipeline.report import accuracy, latency, markdown_table, mask_iou, upsample


def test_accuracy_top1_top5():
    logits = np.array([[0.1, 0.9, 0.0, 0, 0, 0], [0.8, 0.1, 0.05, 0.04, 0.03, 0.02]])
    got = accuracy(logits, np.array([1, 5]))
    assert got == {"top1": 0.5, "top5": 0.5}  # label 5 is the 6th-best of image 2


def test_mask_iou_by_hand():
    extent = torch.tensor([[[0.0, 1.0], [0.0, 1.0]]])  # right half of the object is predicted
    masks = torch.zeros(1, 4, 4, dtype=torch.bool)
    masks[0, :, 2:] = True
    assert mask_iou(extent, masks, 0.5).item() == 1.0
    masks[0, :, 1] = True  # the object is wider than predicted: IoU 8 / 12
    assert abs(mask_iou(extent, masks, 0.5).item() - 8 / 12) < 1e-6
    up = upsample(extent, 4)
    assert up.shape == (1, 4, 4) and up.min() == 0 and up.max() == 1


def test_latency_percentiles_are_ordered():
    stats = latency(lambda x: sum(range(2000)), None, warmup=1, iters=20)
    assert 0 < stats["p50_ms"] <= stats["p90_ms"] <= stats["p99_ms"]


def test_markdown_table():
    text = markdown_table([{"a": "x", "b": 0.12345}, {"a": "y"}], [("a", "A", ""), ("b", "B", ".2f")])
    assert text.splitlines() == ["| A | B |", "|---|---|", "| x | 0.12 |", "| y | n/a |"]
