"""params.yaml `train`, and the train stage's view (seed, data, model, lio, train) with the
checks that span those sections."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Literal

from pipeline.config.data import PrepareParams
from pipeline.config.lio import LIOConfig
from pipeline.config.model import ModelConfig
from pipeline.config.schema import need, need_number
from pipeline.core.arch import stage_size

DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


@dataclass
class TrainConfig:
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    epochs: int = 14
    batch_size: int = 24  # images per step on each rank, a multiple of P+1
    optimizer: Literal["sgd", "adamw"] = "adamw"
    lr: float = 1e-3
    head_lr_mult: float = 1.0  # learning-rate multiplier for the new layers (heads and fc)
    weight_decay: float = 0.05
    momentum: float = 0.9
    schedule: Literal["cosine", "step"] = "cosine"
    warmup_epochs: float = 1.0
    step_epochs: list[int] = field(default_factory=list)
    step_gamma: float = 0.1
    ema_decay: float = 0.0  # 0 disables the weight EMA
    label_smoothing: float = 0.0  # of the classification loss
    amp: Literal["auto", "true", "false"] = "auto"  # bf16 autocast: auto = where the device has native bf16
    channels_last: bool = True  # on CUDA
    compile: Literal["auto", "true", "false"] = "auto"  # torch.compile the training step; auto: on CUDA
    eval_batch_size: int = 64
    checkpoint_every: int = 1  # epochs between checkpoints (and after the last); resuming redoes at most this many - 1

    def check(self, where: str) -> None:
        need(
            DEVICE.fullmatch(self.device) is not None,
            where,
            "train.device",
            f"{self.device!r} is not a device; use auto, cpu, cuda or cuda:N",
        )
        need(self.epochs >= 1, where, "train.epochs", "must be >= 1")
        need_number(self.lr, where, "train.lr", "1.0e-3", above=True)
        need_number(self.weight_decay, where, "train.weight_decay", "1.0e-4")
        need_number(self.warmup_epochs, where, "train.warmup_epochs", "1")
        need_number(self.head_lr_mult, where, "train.head_lr_mult", "10", above=True)
        need(
            math.isfinite(self.momentum) and 0 <= self.momentum < 1,
            where,
            "train.momentum",
            "must be in [0, 1); e.g. 0.9",
        )
        need_number(self.step_gamma, where, "train.step_gamma", "0.1", above=True)
        need(
            self.eval_batch_size >= 1,
            where,
            "train.eval_batch_size",
            f"must be >= 1, got {self.eval_batch_size}; e.g. 64",
        )
        need(
            self.checkpoint_every >= 1,
            where,
            "train.checkpoint_every",
            f"must be >= 1, got {self.checkpoint_every}; e.g. 4 (epochs between checkpoints)",
        )
        need(0 <= self.ema_decay < 1, where, "train.ema_decay", "must be in [0, 1); 0 disables the EMA")
        need(
            0 <= self.label_smoothing < 1,
            where,
            "train.label_smoothing",
            f"must be in [0, 1), got {self.label_smoothing}; e.g. 0.1, or 0 for none",
        )


@dataclass
class TrainParams(PrepareParams):
    """PrepareParams' sections (seed, data), then the model's, LIO's and training's."""

    model: ModelConfig = field(default_factory=ModelConfig)
    lio: LIOConfig = field(default_factory=LIOConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def cross_check(self, where: str) -> None:
        """A batch of whole P+1 groups; every LIO stage map at least 2x2 at the crop size."""
        group = self.lio.P + 1
        need(
            self.train.batch_size >= group and self.train.batch_size % group == 0,
            where,
            "train.batch_size",
            f"{self.train.batch_size} is not a multiple of lio.P+1={group}; "
            f"use e.g. {group * max(1, self.train.batch_size // group)}",
        )
        crop = self.data.transforms.crop
        for stage in self.lio.stages:
            side = stage_size(stage, crop) // self.lio.pool
            need(
                side >= 2,
                where,
                "lio.pool",
                f"{self.lio.pool} pools {stage}'s {stage_size(stage, crop)}x{stage_size(stage, crop)} map at "
                f"data.transforms.crop {crop} to {side}x{side}, smaller than 2x2; lower lio.pool, raise the crop, "
                f"or drop {stage} from lio.stages",
            )
