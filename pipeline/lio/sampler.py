"""Batches of same-class groups (docs/method.md, "Batches").

Each batch is a run of groups of P+1 images of one class; an image's positives are the
other P members of its group, so one forward pass serves anchors and positives alike.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor
from torch.utils.data import Sampler

POSITIVES = ("same_class", "batch")


def group_positives(num_groups: int, P: int) -> Tensor:
    """The [B, P] positives index of a batch laid out as `num_groups` groups of P+1."""
    size = P + 1
    member = torch.arange(size)
    others = torch.stack([torch.cat([member[:k], member[k + 1 :]]) for k in range(size)])  # [P+1, P]
    base = torch.arange(num_groups).repeat_interleave(size).unsqueeze(1) * size
    return base + others.repeat(num_groups, 1)


def code_positives(num_groups: int, P: int) -> Tensor:
    """The [B, P] positives the authors' released code compares, on the same batch (`lio.positives: batch`).

    The code stacks N anchors, then the first positive of every anchor, then the second, ...
    (`train_util_index.py`: `view(N, P, ...).transpose(0, 1)`, `cat((main, positives))`), and
    `get_mask` takes P+1 *consecutive* rows of that tensor as one group (docs/method.md, "The
    released code's positives"). Reading a batch of same-class groups position-major gives that
    tensor; its consecutive runs of P+1 hold images of P+1 different groups, of whatever
    classes the sampler drew.
    """
    size = P + 1
    code_order = torch.arange(num_groups * size).view(num_groups, size).t().flatten()  # code row -> batch index
    runs = code_order.view(-1, size)  # get_mask's groups, as batch indices
    within = group_positives(1, P)  # [P+1, P]: the other members of a run
    positives = torch.empty(num_groups * size, P, dtype=torch.long)
    positives[runs.flatten()] = runs[:, within].reshape(-1, P)
    return positives


def batch_positives(num_groups: int, P: int, positives: str = "same_class") -> Tensor:
    """The positives index of a sampler batch under `lio.positives` (same_class: the paper)."""
    if positives == "same_class":
        return group_positives(num_groups, P)
    if positives == "batch":
        return code_positives(num_groups, P)
    raise ValueError(f"positives must be one of {POSITIVES}, got {positives!r}")


class GroupBatchSampler(Sampler[list[int]]):
    """Yields batches of `groups_per_batch` groups of P+1 same-class dataset indices.

    Deterministic for (seed, epoch). A class with at least P+1 images is shuffled and cut
    into groups, the last one topped up from the same class, so every image appears in
    every epoch; a smaller class is sampled with replacement (and named in a warning).
    Under DistributedDataParallel, rank r takes every world_size-th group, after the group
    list is padded to a multiple of world_size so that all ranks run the same steps.
    """

    def __init__(
        self,
        labels: Sequence[int],
        P: int,
        groups_per_batch: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        class_names: Sequence[str] | None = None,
    ):
        if P < 1:
            raise ValueError(f"P must be >= 1, got {P}")
        if groups_per_batch < 1:
            raise ValueError(f"groups_per_batch must be >= 1, got {groups_per_batch}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.P, self.groups_per_batch = P, groups_per_batch
        self.seed, self.rank, self.world_size, self.epoch = seed, rank, world_size, 0
        by_class: dict[int, list[int]] = {}
        for index, label in enumerate(labels):
            by_class.setdefault(int(label), []).append(index)
        self.by_class = dict(sorted(by_class.items()))
        small = [c for c, idx in self.by_class.items() if len(idx) < P + 1]
        if small:
            names = [class_names[c] if class_names else str(c) for c in small]
            warnings.warn(
                f"{len(small)} class(es) have fewer than P+1={P + 1} training images and are "
                f"sampled with replacement: {', '.join(names)}",
                stacklevel=2,
            )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _groups(self) -> list[list[int]]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        size = self.P + 1
        groups = []
        for indices in self.by_class.values():
            idx = torch.tensor(indices)
            if len(idx) < size:
                groups.append(idx[torch.randint(len(idx), (size,), generator=g)].tolist())
                continue
            perm = idx[torch.randperm(len(idx), generator=g)].tolist()
            for start in range(0, len(perm), size):
                group = perm[start : start + size]
                if len(group) < size:  # top up from the rest of the class, no repeats within the group
                    rest = perm[:start]
                    pick = torch.randperm(len(rest), generator=g)[: size - len(group)].tolist()
                    group += [rest[i] for i in pick]
                groups.append(group)
        order = torch.randperm(len(groups), generator=g).tolist()
        groups = [groups[i] for i in order]
        pad = -len(groups) % self.world_size
        return groups + groups[:pad]

    def __iter__(self) -> Iterator[list[int]]:
        mine = self._groups()[self.rank :: self.world_size]
        for start in range(0, len(mine), self.groups_per_batch):
            yield [i for group in mine[start : start + self.groups_per_batch] for i in group]

    def __len__(self) -> int:
        size = self.P + 1
        total = sum(max(1, -(-len(idx) // size)) for idx in self.by_class.values())
        per_rank = -(-total // self.world_size)
        return -(-per_rank // self.groups_per_batch)
