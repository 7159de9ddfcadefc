"""Gradual pruning: the cubic sparsity schedule of Zhu & Gupta that WoodFisher's gradual runs
use, and a pruner that re-estimates the Fisher at every pruning step and holds the masks in
between (pruned weights would otherwise grow back under the optimizer), of single weights or
(``GradualPruner.structured``) of whole zero-invariant groups, to a group sparsity or to a MAC
budget (the schedule then runs over the share of MACs removed: 1 - the slim model's share).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch

from onnxoto.errors import OnnxotoError
from trainers.woodfisher.fisher import Batch, BlockFisher, FisherOptions, LossFn
from trainers.woodfisher.group_obs import GROUP_CRITERIA, prune_groups, zig_axes
from trainers.woodfisher.macs import MacCounter, MacTarget
from trainers.woodfisher.obs import apply_masks, prune_unstructured
from trainers.zig import ZigIndex

__all__ = ["CubicSchedule", "GradualPruner"]


@dataclass(frozen=True)
class CubicSchedule:
    """s_t = s_f - (s_f - s_i) (1 - (t - t0) / (T - t0))^3 for t0 <= t <= T, pruning every
    ``every`` steps from ``start`` (t0) to ``end`` (T); s_i before t0, s_f after T."""

    initial: float
    final: float
    start: int
    end: int
    every: int = 1

    def __post_init__(self) -> None:
        if not (0 <= self.initial <= self.final <= 1):
            raise OnnxotoError(f"cubic schedule: need 0 <= initial ({self.initial}) <= final "
                               f"({self.final}) <= 1")
        if self.end < self.start or self.every < 1:
            raise OnnxotoError(f"cubic schedule: need start ({self.start}) <= end ({self.end}) "
                               f"and every ({self.every}) >= 1")

    def sparsity(self, step: int) -> float:
        if step <= self.start:
            return self.initial
        if step >= self.end:
            return self.final
        left = 1 - (step - self.start) / (self.end - self.start)
        return self.final - (self.final - self.initial) * left ** 3

    def prunes_at(self, step: int) -> bool:
        """True at t0, every ``every`` steps after it, and at T."""
        inside = self.start <= step <= self.end
        return inside and ((step - self.start) % self.every == 0 or step == self.end)


class GradualPruner:
    """Gradual pruning of ``params``: call ``step(t, ...)`` before each training step t (it
    prunes when the schedule says so, with a fresh Fisher for ``woodfisher``) and ``hold()``
    after each optimizer step to keep pruned weights at exactly 0. ``joint`` selects the joint
    OBS update (see ``obs_update``). Unstructured (single weights) unless made by
    ``structured``; ``state_dict`` holds the masks, so a resumed run holds the same ones."""

    def __init__(self, params: Mapping[str, torch.Tensor], schedule: CubicSchedule,
                 criterion: str = "woodfisher", fisher: FisherOptions | None = None, *,
                 joint: bool = False) -> None:
        self.params = dict(params)
        self.schedule = schedule
        self.criterion = criterion
        self.fisher_options = fisher or FisherOptions()
        self.joint = joint
        self.keep: dict[str, torch.Tensor] | None = None
        self.zig: ZigIndex | None = None
        self.zero_also: ZigIndex | None = None
        self.macs: MacCounter | None = None
        self.pruned: torch.Tensor | None = None

    @classmethod
    def structured(cls, zig: ZigIndex, schedule: CubicSchedule, criterion: str = "woodfisher",
                   fisher: FisherOptions | None = None, *, joint: bool = False,
                   zero_also: ZigIndex | None = None,
                   macs: MacCounter | None = None) -> GradualPruner:
        """Whole ZIGs of ``zig`` (``prune_groups``: group OBS or group magnitude), the schedule's
        sparsity read as group sparsity; the Fisher covers the ZIG parameters, laid out with
        ``zig_axes``. Pruned ZIGs rank first at the next step, so earlier choices stay.
        ``zero_also`` is another index of the same ZIGs (other roles) whose pruned ZIGs are
        zeroed and held too: ranking and updating on the consumers, the producers must go to
        zero for shrink to remove the channel. With ``macs`` the schedule's value is the share
        of the dense MACs to remove: each step prunes to a ``MacTarget`` of 1 - that share."""
        if criterion not in GROUP_CRITERIA:
            raise OnnxotoError(f"group criterion {criterion!r}: choose from "
                               f"{', '.join(GROUP_CRITERIA)}")
        pruner = cls({e.name: e.param for e in zig.entries}, schedule, criterion, fisher,
                     joint=joint)
        pruner.zig = zig
        pruner.zero_also = zero_also
        pruner.macs = macs
        return pruner

    def step(self, step: int, model: torch.nn.Module,
             batches: Callable[[], Iterable[Batch]], loss_fn: LossFn) -> bool:
        """Prune to the schedule's sparsity if ``step`` is a pruning step; ``batches`` is called
        for the Fisher's data only then. Returns whether it pruned."""
        if not self.schedule.prunes_at(step):
            return False
        fisher = None
        if self.criterion == "woodfisher":
            axes = zig_axes(self.zig) if self.zig is not None else None
            fisher = BlockFisher.estimate(model, self.params, batches(), loss_fn,
                                          self.fisher_options, axes)
        sparsity = self.schedule.sparsity(step)
        if self.zig is not None:
            target = sparsity if self.macs is None else MacTarget(self.macs, 1 - sparsity)
            self.pruned = prune_groups(self.zig, target, self.criterion, fisher=fisher,
                                       joint=self.joint)
            self.hold()
        else:
            self.keep = prune_unstructured(self.params, sparsity, self.criterion,
                                           fisher=fisher, keep=self.keep, joint=self.joint)
        return True

    def hold(self) -> None:
        if self.pruned is not None:
            for zig in (self.zig, self.zero_also):
                if zig is not None:
                    zig.zero_(zig.params(), self.pruned.to(zig.device))
        elif self.keep is not None:
            apply_masks(self.params, self.keep)

    @torch.no_grad()
    def weight_sparsity(self) -> float:
        """Share of exactly-zero weights among the pruned parameters."""
        total = sum(p.numel() for p in self.params.values())
        zeros = sum(int((p == 0).sum()) for p in self.params.values())
        return zeros / total if total else 0.0

    def macs_fraction(self) -> float | None:
        """The slim model's share of the dense MACs as pruned so far (None without ``macs``)."""
        if self.macs is None:
            return None
        pruned = self.pruned if self.pruned is not None else torch.zeros(self.zig.num_groups,
                                                                          dtype=torch.bool)
        return self.macs.slim_macs(pruned) / self.macs.dense

    def state_dict(self) -> dict[str, object]:
        """The masks held so far (empty before the first pruning step)."""
        return {"keep": {n: k.clone() for n, k in (self.keep or {}).items()},
                "pruned": None if self.pruned is None else self.pruned.clone()}

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        keep, pruned = state["keep"], state["pruned"]
        wrong_kind = (pruned is not None and self.zig is None) or (keep and self.zig is not None)
        if set(keep) - set(self.params) or wrong_kind:
            raise OnnxotoError("gradual pruner state: masks for other parameters or of the "
                               "other kind (structured vs unstructured)")
        self.keep = {n: k.to(self.params[n].device) for n, k in keep.items()} or None
        self.pruned = None if pruned is None else pruned.cpu()
