"""Pruning whole ZIGs to a MAC budget instead of a group sparsity.

Why a MAC budget: a group sparsity says nothing about speed (a channel of a wide late conv and
one of an early narrow layer cost very different MACs), so methods compared at one group sparsity
land at different costs. Here the target is the slim model's MACs as ``onnxoto.metrics`` counts
them after ``shrink`` (the count ``onnxoto shrink`` and the trainers report), measured on the
graph itself, so bilinear costs (a conv's MACs are its input channels times its output channels)
are counted exactly rather than modelled.

How channels are chosen: by score per MAC saved (the MACs one more channel of its group removes
from the slim model, measured once per pruning step), lowest first; then the fewest of them, in
that order, whose slim model is at or below the budget (a binary search, slim MACs only fall as
channels go), so the budget is met to within one channel's MACs. Ranked by the score alone, the
cheapest channels (a narrow layer, the classifier's input) went first and whole layers emptied.
Ranked per MAC alone, the costliest layer (DemoNet's conv5) was emptied at 24 % MACs and
accuracy collapsed, so at most ``max_group_share`` of any group's channels go (default 0.75),
and one channel of every group always stays (shrink keeps at least one).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from onnxoto.errors import OnnxotoError
from onnxoto.metrics import measure
from onnxoto.partition import Partition
from onnxoto.shrink import ShrinkOptions, shrink
from trainers.zig import ZigIndex

__all__ = ["DEFAULT_GROUP_SHARE", "MacCounter", "MacTarget"]

DEFAULT_GROUP_SHARE = 0.75
_COUNT_ONLY = ShrinkOptions(validate=False)


class MacCounter:
    """MACs of the slim model that pruning a set of ZIGs of ``zig`` leaves, from ``parts`` (the
    partition whose groups ``zig`` indexes; only the graph's structure matters, not the weights
    in it). ``max_group_share`` caps the share of any group's channels a ``MacTarget`` removes."""

    def __init__(self, parts: Partition, zig: ZigIndex, *,
                 max_group_share: float = DEFAULT_GROUP_SHARE) -> None:
        if not 0 < max_group_share <= 1:
            raise OnnxotoError(f"max_group_share {max_group_share}: need 0 < share <= 1")
        self.parts = parts
        self.zig = zig
        self.max_group_share = max_group_share
        self.dense = measure(parts.model).macs
        if not self.dense:
            raise OnnxotoError(f"'{parts.model.graph.name}': onnxoto.metrics counts no MACs in "
                               f"it (no Conv, Gemm or MatMul with known shapes); prune by group "
                               f"sparsity instead of a MAC target")

    def slim_macs(self, pruned: torch.Tensor) -> int:
        """MACs of the slim model without the ZIGs where ``pruned`` (BoolTensor[K]) is True."""
        keep = self.zig.masks(zero=pruned.cpu())
        return measure(shrink(self.parts.model, keep, options=_COUNT_ONLY,
                              result=self.parts).model).macs

    def channel_costs(self, pruned: torch.Tensor) -> torch.Tensor:
        """MACs one more channel of each ZIG's group removes once ``pruned`` is gone
        (Tensor[K], float64, >= 1); the same for every ZIG of a group."""
        pruned = pruned.cpu()
        now = self.slim_macs(pruned)
        cost = torch.ones(self.zig.num_groups, dtype=torch.float64)
        start = 0
        for size in self.zig.group_sizes.values():
            free = torch.nonzero(~pruned[start:start + size]).squeeze(1)
            if len(free) > 1:
                more = pruned.clone()
                more[start + int(free[0])] = True
                cost[start:start + size] = max(1, now - self.slim_macs(more))
            start += size
        return cost

    def order(self, scores: torch.Tensor) -> torch.Tensor:
        """ZIG ids in the order they go (lowest score first), without those a ``prune_groups``
        score of +inf protects and without those past ``max_group_share`` of their group."""
        order = torch.argsort(scores, stable=True)
        order = order[torch.isfinite(scores[order])]
        sizes = torch.tensor(list(self.zig.group_sizes.values()))
        group = torch.repeat_interleave(torch.arange(len(sizes)), sizes)
        limit = torch.minimum((self.max_group_share * sizes).floor().long(), sizes - 1)
        taken = torch.zeros(len(sizes), dtype=torch.long)
        kept = []
        for z in order.tolist():
            if taken[group[z]] < limit[group[z]]:
                taken[group[z]] += 1
                kept.append(z)
        return torch.tensor(kept, dtype=torch.long)


@dataclass(frozen=True)
class MacTarget:
    """Prune until the slim model has at most ``fraction`` of the dense model's MACs: what
    ``prune_groups`` takes in place of a group sparsity."""

    counter: MacCounter
    fraction: float

    def __post_init__(self) -> None:
        if not 0 < self.fraction <= 1:
            raise OnnxotoError(f"MAC target {self.fraction}: need 0 < fraction <= 1 of the "
                               f"dense model's MACs")

    @property
    def macs(self) -> float:
        return self.fraction * self.counter.dense

    def choose(self, scores: torch.Tensor) -> torch.Tensor:
        """The pruned BoolTensor[K] for ``prune_groups``' ``scores`` (already-zero ZIGs below
        every other, protected ones +inf): ranked per MAC saved, the fewest that meet the
        budget, or every allowed one when even they do not."""
        zero = scores < 0
        cost = self.counter.channel_costs(zero)
        order = self.counter.order(scores.double().cpu() / cost)

        def pruned(count: int) -> torch.Tensor:
            mask = torch.zeros(self.counter.zig.num_groups, dtype=torch.bool)
            mask[order[:count]] = True
            return mask

        low, high = int(zero[order].sum()), len(order)
        if self.counter.slim_macs(pruned(high)) > self.macs:
            return pruned(high)
        while low < high:
            middle = (low + high) // 2
            if self.counter.slim_macs(pruned(middle)) <= self.macs:
                high = middle
            else:
                low = middle + 1
        return pruned(low)
