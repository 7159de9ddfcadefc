"""Gradual pruning: the cubic sparsity schedule of Zhu & Gupta that WoodFisher's gradual runs
use, and a pruner that re-estimates the Fisher at every pruning step and holds the masks in
between (pruned weights would otherwise grow back under the optimizer).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch

from onnxoto.errors import OnnxotoError
from trainers.woodfisher.fisher import Batch, BlockFisher, FisherOptions, LossFn
from trainers.woodfisher.obs import apply_masks, prune_unstructured

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
    """Unstructured gradual pruning of ``params``: call ``step(t, ...)`` before each training
    step t (it prunes when the schedule says so, with a fresh Fisher for ``woodfisher``) and
    ``hold()`` after each optimizer step to keep pruned weights at exactly 0. ``joint`` selects
    the joint OBS update (see ``obs_update``)."""

    def __init__(self, params: Mapping[str, torch.Tensor], schedule: CubicSchedule,
                 criterion: str = "woodfisher", fisher: FisherOptions | None = None, *,
                 joint: bool = False) -> None:
        self.params = dict(params)
        self.schedule = schedule
        self.criterion = criterion
        self.fisher_options = fisher or FisherOptions()
        self.joint = joint
        self.keep: dict[str, torch.Tensor] | None = None

    def step(self, step: int, model: torch.nn.Module,
             batches: Callable[[], Iterable[Batch]], loss_fn: LossFn) -> bool:
        """Prune to the schedule's sparsity if ``step`` is a pruning step; ``batches`` is called
        for the Fisher's data only then. Returns whether it pruned."""
        if not self.schedule.prunes_at(step):
            return False
        fisher = None
        if self.criterion == "woodfisher":
            fisher = BlockFisher.estimate(model, self.params, batches(), loss_fn,
                                          self.fisher_options)
        self.keep = prune_unstructured(self.params, self.schedule.sparsity(step),
                                       self.criterion, fisher=fisher, keep=self.keep,
                                       joint=self.joint)
        return True

    def hold(self) -> None:
        if self.keep is not None:
            apply_masks(self.params, self.keep)
