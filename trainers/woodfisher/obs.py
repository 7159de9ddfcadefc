"""Unstructured pruning by Optimal Brain Surgeon with the blockwise inverse Fisher, and the
baselines that share its code path (one scoring function each, one selection, one update).

WoodFisher removes weight q at the estimated loss increase rho_q = w_q^2 / (2 [F^-1]_qq) and
moves the others by dw = -w_q F^-1 e_q / [F^-1]_qq. For a set of pruned weights the individual
updates are summed, as the paper does (its "joint" mode ranks globally but does not solve the
joint system). One threshold over all layers sets each layer's sparsity by itself.

Baselines: ``global_magnitude`` |w| with one threshold, ``layer_magnitude`` |w| at the same
sparsity in every parameter, ``diagonal_fisher`` w_q^2 F_qq / 2 (the OBS saliency of a diagonal
Fisher, whose update only zeroes w_q). Pruned weights are set to exactly 0 after the update.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from onnxoto.errors import OnnxotoError
from trainers.woodfisher.fisher import BlockFisher, BlockLayout

__all__ = ["CRITERIA", "apply_masks", "diagonal_fisher", "obs_update", "prune_unstructured",
           "saliencies", "select"]

Tensors = Mapping[str, torch.Tensor]
CRITERIA = ("woodfisher", "diagonal_fisher", "global_magnitude", "layer_magnitude")


def diagonal_fisher(grads: Tensors, layout: BlockLayout, damping: float) -> dict[str, torch.Tensor]:
    """F_qq = lam + (1/N) sum g_q^2 per parameter, from ``collect_gradients``' output."""
    return {n: layout.unflat(n, g.double().square().mean(0) + damping) for n, g in grads.items()}


def saliencies(criterion: str, weights: Tensors, *, fisher: BlockFisher | None = None,
               diag: Tensors | None = None) -> dict[str, torch.Tensor]:
    """Per-weight scores of ``criterion`` (lower = pruned first), shaped like the weights.
    ``woodfisher`` needs ``fisher``, ``diagonal_fisher`` needs ``diag``."""
    if criterion not in CRITERIA:
        raise OnnxotoError(f"criterion {criterion!r}: choose from {', '.join(CRITERIA)}")
    w = {n: t.detach().double() for n, t in weights.items()}
    if criterion == "woodfisher":
        if fisher is None:
            raise OnnxotoError("criterion woodfisher needs the inverse Fisher (fisher=)")
        inverse_diag = fisher.diagonals()
        return {n: t.square() / (2 * inverse_diag[n].to(t)) for n, t in w.items()}
    if criterion == "diagonal_fisher":
        if diag is None:
            raise OnnxotoError("criterion diagonal_fisher needs the Fisher diagonal (diag=)")
        return {n: t.square() * diag[n].to(t) / 2 for n, t in w.items()}
    return {n: t.abs() for n, t in w.items()}


def select(scores: Tensors, sparsity: float, *, per_layer: bool = False,
           keep: Tensors | None = None) -> dict[str, torch.Tensor]:
    """Keep masks (True = keep) that prune ``round(sparsity * count)`` lowest-scored weights,
    over all parameters at once or (``per_layer``) in each. Weights already pruned in ``keep``
    stay pruned and count toward the target."""
    if not 0.0 <= sparsity <= 1.0:
        raise OnnxotoError(f"sparsity must be in [0, 1], got {sparsity}")
    ranked = {n: s.masked_fill(~keep[n], -1.0) if keep is not None else s
              for n, s in scores.items()}
    if per_layer:
        return {n: _keep_highest(s.reshape(-1), sparsity).view(s.shape) for n, s in ranked.items()}
    names = list(ranked)
    flat = _keep_highest(torch.cat([ranked[n].reshape(-1) for n in names]), sparsity)
    sizes = [ranked[n].numel() for n in names]
    return {n: part.view(ranked[n].shape)
            for n, part in zip(names, flat.split(sizes), strict=True)}


def _keep_highest(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    count = round(sparsity * scores.numel())
    keep = torch.ones(scores.numel(), dtype=torch.bool, device=scores.device)
    if count:
        keep[torch.topk(scores, count, largest=False).indices] = False
    return keep


def obs_update(weights: Tensors, fisher: BlockFisher, keep: Tensors, *,
               joint: bool = False) -> dict[str, torch.Tensor]:
    """The summed OBS update dw = -sum_q (w_q / [F^-1]_qq) F^-1 e_q over the pruned weights q
    (``keep`` False), block by block; name -> dw shaped like the weight. ``joint`` solves for
    the pruned set P of each block at once, dw = -F^-1[:, P] ([F^-1]_PP)^-1 w_P, which zeroes
    w_P exactly at the least quadratic cost."""
    layout = fisher.layout
    flat_w = {n: layout.flat(n, w.detach()).double() for n, w in weights.items()}
    flat_keep = {n: layout.flat(n, k) for n, k in keep.items()}
    delta = {n: torch.zeros_like(w) for n, w in flat_w.items()}
    for block, inverse in zip(fisher.blocks, fisher.inverses, strict=True):
        if block.name not in flat_w:
            continue
        span = slice(block.start, block.stop)
        # on the CPU, as the inverse is: a CUDA index cannot index it
        pruned = torch.nonzero(~flat_keep[block.name][span].cpu()).squeeze(1)
        if pruned.numel():
            w = flat_w[block.name][span][pruned].to(inverse)
            columns = inverse[:, pruned]
            if joint:
                coef = torch.linalg.solve(columns[pruned], w)
            else:
                coef = w / columns[pruned, torch.arange(len(pruned))]
            delta[block.name][span] -= (columns @ coef).to(delta[block.name])
    return {n: layout.unflat(n, d) for n, d in delta.items()}


@torch.no_grad()
def apply_masks(params: Tensors, keep: Tensors) -> None:
    """Set pruned weights (``keep`` False) to exactly 0, in place."""
    for name, mask in keep.items():
        params[name].masked_fill_(~mask.to(params[name].device), 0)


@torch.no_grad()
def prune_unstructured(params: Tensors, sparsity: float, criterion: str = "woodfisher", *,
                       fisher: BlockFisher | None = None, diag: Tensors | None = None,
                       keep: Tensors | None = None, update: bool = True,
                       joint: bool = False) -> dict[str, torch.Tensor]:
    """Prune ``params`` in place to ``sparsity`` by ``criterion`` and return the keep masks.

    ``woodfisher`` also applies the OBS update unless ``update`` is False; ``keep`` holds masks
    of an earlier step (gradual pruning), whose pruned weights stay pruned.
    """
    scores = saliencies(criterion, params, fisher=fisher, diag=diag)
    masks = select(scores, sparsity, per_layer=criterion == "layer_magnitude", keep=keep)
    if criterion == "woodfisher" and update:
        for name, dw in obs_update(params, fisher, masks, joint=joint).items():
            params[name].add_(dw.to(params[name]))
    apply_masks(params, masks)
    return masks
