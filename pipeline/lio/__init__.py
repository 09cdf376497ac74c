"""Look-into-Object: training-only heads and losses (docs/method.md)."""

from pipeline.lio.model import LIOModel, LIOOutput
from pipeline.lio.oel import OELHead, PairIndex, pair_index, pseudo_mask
from pipeline.lio.sampler import GroupBatchSampler, group_positives
from pipeline.lio.scl import SCLHead, polar_targets, scl_loss

__all__ = [
    "LIOModel",
    "LIOOutput",
    "OELHead",
    "PairIndex",
    "pair_index",
    "pseudo_mask",
    "GroupBatchSampler",
    "group_positives",
    "SCLHead",
    "polar_targets",
    "scl_loss",
]
