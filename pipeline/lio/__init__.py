"""Look-into-Object: training-only heads and losses (docs/method.md): `sampler` (groups of P+1),
`oel` (object-extent learning and the pseudo mask), `scl` (spatial context learning), `model` (the
heads on the backbone's stages) and `checkpoint` (models/lio.pt, `TrainedModel`)."""

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
