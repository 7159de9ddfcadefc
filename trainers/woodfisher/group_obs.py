"""Structured OBS: whole zero-invariant groups (ZIGs) removed at once, so the pruned model
shrinks (``onnxoto shrink --zeros``) instead of only holding scattered zeros.

For a ZIG Q (every producer element of one channel, from ``trainers.zig``) the loss increase of
removing it and the best compensation of the rest are
rho_Q = 1/2 w_Q^T ([F^-1]_QQ)^-1 w_Q and dw = -F^-1[:, Q] ([F^-1]_QQ)^-1 w_Q.

Groups spanning blocks: F^-1 is block-diagonal, so [F^-1]_QQ is block-diagonal over the blocks
Q touches. rho_Q is then exactly the sum of per-block pieces and each block's part of dw uses
only that block's piece of Q; nothing is approximated beyond the block-diagonal Fisher. The
Fisher is laid out with each parameter's ZIG axis first (``BlockLayout.axes``), so a channel's
row is contiguous and sits in one or two blocks; its BatchNorm scale and bias are one-element
pieces in their own parameters' blocks. Several pruned ZIGs' updates are summed, as the
unstructured pruner sums single weights'; groups of one element then reduce to it exactly.
``joint`` instead solves for the whole pruned set P of each block at once,
dw = -F^-1[:, P] ([F^-1]_PP)^-1 w_P: the exact minimizer of the quadratic model with w_P = 0,
which the sum is not when pruned groups are correlated.
One ZIG of every group is never pruned (shrink keeps at least one channel).

Either block form works (``FisherOptions.low_rank``): with the low-rank one, rho_Q and the update
cost O(N^2 m) per group of m elements and O(N d) per block, so a block can be a whole layer and
a consumer-side group's compensation can use every other input channel of that layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from onnxoto.errors import OnnxotoError
from trainers.woodfisher.fisher import BlockFisher, LowRankInverse, inverse_times, solve_principal
from trainers.woodfisher.macs import MacTarget
from trainers.zig import ZigIndex

__all__ = ["GROUP_CRITERIA", "GroupOBS", "prune_groups", "zig_axes"]

GROUP_CRITERIA = ("woodfisher", "magnitude")


def zig_axes(zig: ZigIndex) -> dict[str, int]:
    """Each ZIG parameter's channel axis: ``BlockLayout`` puts it first."""
    return {e.name: e.axis for e in zig.entries}


@dataclass
class _Pieces:
    """The ZIGs with ``m`` elements in one block: their ids, local indices (nq, m) and
    ([F^-1]_QQ)^-1 w_Q (nq, m)."""

    block: int
    zigs: torch.Tensor
    index: torch.Tensor
    coef: torch.Tensor


@dataclass
class GroupOBS:
    """Per-ZIG saliencies and the pieces that build the OBS update of any pruned set."""

    fisher: BlockFisher
    zig: ZigIndex
    saliency: torch.Tensor
    pieces: list[_Pieces]
    weights: dict[str, torch.Tensor] = field(default_factory=dict)

    @classmethod
    @torch.no_grad()
    def compute(cls, fisher: BlockFisher, zig: ZigIndex) -> GroupOBS:
        """rho_Q for every ZIG of ``zig`` from ``fisher`` (laid out with ``zig_axes``)."""
        layout = fisher.layout
        laid_out = all(layout.axes.get(e.name, 0) == e.axis for e in zig.entries)
        if not laid_out or set(layout.shapes) != {e.name for e in zig.entries}:
            raise OnnxotoError("group OBS: the Fisher must cover exactly the ZIG parameters, "
                               "laid out with zig_axes(zig)")
        owner = {}
        weights = {}
        for e in zig.entries:
            before, _, after = e.shape3
            owner[e.name] = e.rows.cpu().repeat_interleave(before * after)
            weights[e.name] = layout.flat(e.name, e.param.detach()).double().cpu()
        saliency = torch.zeros(zig.num_groups + 1, dtype=torch.float64)
        pieces = []
        for b, (block, inverse) in enumerate(zip(fisher.blocks, fisher.inverses, strict=True)):
            owners = owner[block.name][block.start:block.stop]
            w_block = weights[block.name][block.start:block.stop].to(fisher.options.dtype)
            for zigs, index in _split_by_owner(owners, zig.num_groups):
                step = _groups_per_call(inverse, index.shape[1])
                for start in range(0, len(zigs), step):
                    part, ids = index[start:start + step], zigs[start:start + step]
                    w = w_block[part]
                    coef = solve_principal(inverse, part, w)
                    saliency.index_add_(0, ids, 0.5 * (w * coef).sum(1).cpu())
                    pieces.append(_Pieces(b, ids, part, coef))
        return cls(fisher, zig, saliency[:-1], pieces, weights)

    @torch.no_grad()
    def update(self, pruned: torch.Tensor, *, joint: bool = False) -> dict[str, torch.Tensor]:
        """dw = -sum over pruned ZIGs Q of F^-1[:, Q] ([F^-1]_QQ)^-1 w_Q, or with ``joint``
        -F^-1[:, P] ([F^-1]_PP)^-1 w_P over each block's whole pruned set P; name -> dw shaped
        like the parameter. ``pruned`` is BoolTensor[K]."""
        fisher, layout = self.fisher, self.fisher.layout
        pruned = torch.cat([pruned.cpu(), pruned.new_zeros(1).cpu()])
        chosen: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        for piece in self.pieces:
            take = pruned[piece.zigs]
            if take.any():
                chosen.setdefault(piece.block, []).append(
                    (piece.index[take].reshape(-1), piece.coef[take].reshape(-1)))
        delta = {n: torch.zeros(torch.Size(s).numel(), dtype=torch.float64)
                 for n, s in layout.shapes.items()}
        for b, parts in chosen.items():
            block, inverse = fisher.blocks[b], fisher.inverses[b]
            index = torch.cat([i for i, _ in parts])
            if joint:
                w = self.weights[block.name][block.start:block.stop].to(fisher.options.dtype)
                coef = solve_principal(inverse, index.unsqueeze(0), w[index].unsqueeze(0))[0]
            else:
                coef = torch.cat([c for _, c in parts])
            spread = torch.zeros(block.size, dtype=coef.dtype, device=coef.device)
            spread.index_add_(0, index, coef)
            delta[block.name][block.start:block.stop] -= inverse_times(inverse, spread).cpu()
        return {n: layout.unflat(n, d) for n, d in delta.items()}


# Elements of whitened columns (N x groups x m) one low-rank solve may hold: 128 MB in float64.
_WHITENED_ELEMENTS = 1 << 24


def _groups_per_call(inverse: object, size: int) -> int:
    """How many groups of ``size`` elements one ``solve_principal`` call takes: all for a dense
    block, a bounded workspace for a low-rank one."""
    if not isinstance(inverse, LowRankInverse):
        return 1 << 30
    return max(1, _WHITENED_ELEMENTS // (inverse.grads.shape[0] * size))


def _split_by_owner(owners: torch.Tensor, none: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Local indices of each owned ZIG's elements in one block, bucketed by count:
    [(zig ids (nq,), indices (nq, m))]."""
    owned = torch.nonzero(owners < none).squeeze(1)
    if not owned.numel():
        return []
    ids = owners[owned]
    order = torch.sort(ids, stable=True).indices
    ids, owned = ids[order], owned[order]
    unique, counts = torch.unique_consecutive(ids, return_counts=True)
    buckets = []
    for m in torch.unique(counts).tolist():
        take = counts == m
        starts = (torch.cumsum(counts, 0) - counts)[take]
        index = owned[starts.unsqueeze(1) + torch.arange(m)]
        buckets.append((unique[take], index))
    return buckets


def _protected(zig: ZigIndex, scores: torch.Tensor) -> torch.Tensor:
    """BoolTensor[K]: the highest-scored ZIG of every group, which is never pruned."""
    protect = torch.zeros(zig.num_groups, dtype=torch.bool)
    start = 0
    for size in zig.group_sizes.values():
        protect[start + int(torch.argmax(scores[start:start + size]))] = True
        start += size
    return protect


@torch.no_grad()
def prune_groups(zig: ZigIndex, sparsity: float | MacTarget, criterion: str = "woodfisher", *,
                 fisher: BlockFisher | None = None, update: bool = True,
                 joint: bool = False) -> torch.Tensor:
    """Zero ``round(sparsity * K)`` ZIGs of ``zig`` in place (exact zeros) and return the pruned
    BoolTensor[K]; given a ``MacTarget`` instead, the ZIGs it chooses (per MAC saved, until the
    slim model meets its budget). ``woodfisher`` ranks by rho_Q and applies the group OBS update
    (unless ``update`` is False; ``joint``: see ``GroupOBS.update``); ``magnitude`` ranks by
    ||w_Q||^2. Already-zero ZIGs rank first, so a gradual schedule keeps its earlier choices;
    ZIGs with no element in ``zig`` (an index of other roles than producers may miss some) are
    never chosen."""
    if criterion not in GROUP_CRITERIA:
        raise OnnxotoError(f"group criterion {criterion!r}: choose from "
                           f"{', '.join(GROUP_CRITERIA)}")
    if not isinstance(sparsity, MacTarget) and not 0.0 <= sparsity <= 1.0:
        raise OnnxotoError(f"group sparsity must be in [0, 1], got {sparsity}")
    obs = None
    if criterion == "woodfisher":
        if fisher is None:
            raise OnnxotoError("group criterion woodfisher needs the inverse Fisher (fisher=)")
        obs = GroupOBS.compute(fisher, zig)
        scores = obs.saliency.clone()
    else:
        scores = zig.group_sq_norms().double().cpu()
    scores[zig.zero_zigs().cpu()] = -1.0
    scores[_protected(zig, scores)] = float("inf")
    scores[zig.sizes.cpu() == 0] = float("inf")  # no element of this index: nothing to prune
    if isinstance(sparsity, MacTarget):
        pruned = sparsity.choose(scores)
    else:
        count = min(round(sparsity * zig.num_groups), int(torch.isfinite(scores).sum()))
        pruned = torch.zeros(zig.num_groups, dtype=torch.bool)
        if count:
            pruned[torch.topk(scores, count, largest=False).indices] = True
    params = zig.params()
    if obs is not None and update:
        for name, dw in obs.update(pruned, joint=joint).items():
            params[name].add_(dw.to(params[name]))
    zig.zero_(params, pruned.to(zig.device))
    return pruned
