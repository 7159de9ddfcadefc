"""Blockwise inverse of the empirical Fisher, the second-order model WoodFisher prunes with.

The empirical Fisher of N gradients g_i (each the mean gradient of ``mini_batch`` samples) is
F = lam I + (1/N) sum g_i g_i^T. A model's Fisher is too large to hold, so the flat parameter
vector is cut into blocks of at most ``block_size`` weights (blocks never straddle two
parameters) and F is taken as block-diagonal. Each block's inverse is exact:

- N < d (few gradients, a wide block): Woodbury through the N x N system,
  F^-1 = (1/lam) [I - G^T (N lam I + G G^T)^-1 G], one Cholesky solve, O(N^2 d + N d^2);
- N >= d: F itself is d x d, so it is formed and inverted, O(N d^2 + d^3).

With ``low_rank`` a block's inverse is never formed: it is kept as its gradients G and the
Cholesky factor of the N x N system (``LowRankInverse``), O(N d) memory instead of d^2. Group
OBS needs only principal sub-blocks [F^-1]_QQ, solves with them and products F^-1 v, all of
which go through L^-1 G; so a block can be a whole layer (DemoNet's conv5, 442k weights, would
need 1.5 TB as a d x d inverse and 0.9 GB as 256 gradients in float64).

The rank-1 recursion of the paper (Sherman-Morrison once per gradient, N sequential O(d^2)
updates) is kept as ``inverse_fisher_rank1``, the reference the batched forms are tested and
timed against. Blocks of equal size are inverted together as one batched call.

A parameter is flattened with its ``axis`` first (``BlockLayout``), so that the structured
pruner's rows (one channel's slice) are contiguous and mostly fall in one block.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import torch

from onnxoto.errors import OnnxotoError

__all__ = ["BlockFisher", "BlockLayout", "FisherOptions", "LowRankInverse", "collect_gradients",
           "fisher_memory", "inverse_fisher", "inverse_fisher_rank1", "inverse_times",
           "solve_principal"]

Tensors = Mapping[str, torch.Tensor]
Batch = tuple[torch.Tensor, torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class FisherOptions:
    """How the inverse Fisher is estimated. Defaults follow the official MNIST scripts where the
    CPU allows: damping 1e-5, N = 1000 gradients of mini-batch 1, blocks of 1,000 weights,
    float64 (with damping 1e-5 the damped Fisher is too ill-conditioned for float32 solves).
    ``low_rank`` keeps each block as a ``LowRankInverse`` (for blocks far larger than N)."""

    num_grads: int = 1000
    mini_batch: int = 1
    damping: float = 1e-5
    block_size: int = 1000
    dtype: torch.dtype = torch.float64
    # Blocks inverted per batched call: bounds the workspace, not the result.
    chunk_blocks: int = 16
    low_rank: bool = False

    def __post_init__(self) -> None:
        if self.num_grads < 1 or self.mini_batch < 1 or self.block_size < 1:
            raise OnnxotoError(f"fisher options: num_grads ({self.num_grads}), mini_batch "
                               f"({self.mini_batch}) and block_size ({self.block_size}) must "
                               f"be at least 1")
        if not self.damping > 0:
            raise OnnxotoError(f"fisher options: damping must be > 0, got {self.damping}")


# --------------------------------------------------------------------------- the inverse


def inverse_fisher(grads: torch.Tensor, damping: float) -> torch.Tensor:
    """Exact inverse of lam I + (1/N) G^T G for ``grads`` G of shape (..., N, d).

    Returns (..., d, d) in ``grads``' dtype; the cheaper of the Woodbury (N < d) and the direct
    (N >= d) form is used (see the module docstring).
    """
    n, d = grads.shape[-2:]
    eye = torch.eye(d, dtype=grads.dtype, device=grads.device)
    if n < d:
        system = grads @ grads.transpose(-1, -2)
        system.diagonal(dim1=-2, dim2=-1).add_(n * damping)
        solved = torch.cholesky_solve(grads, torch.linalg.cholesky(system))
        return (eye - grads.transpose(-1, -2) @ solved) / damping
    fisher = grads.transpose(-1, -2) @ grads / n
    fisher.diagonal(dim1=-2, dim2=-1).add_(damping)
    return torch.cholesky_inverse(torch.linalg.cholesky(fisher))


def inverse_fisher_rank1(grads: torch.Tensor, damping: float) -> torch.Tensor:
    """The same inverse by the paper's recursion: start from I/lam and apply one Sherman-Morrison
    update per gradient, F_k^-1 = F_{k-1}^-1 - u u^T / (N + g^T u) with u = F_{k-1}^-1 g.
    N sequential O(d^2) steps (in place, batched over blocks): the reference for
    ``inverse_fisher``."""
    n, d = grads.shape[-2:]
    flat = grads.reshape(-1, n, d)
    inverse = (torch.eye(d, dtype=grads.dtype, device=grads.device) / damping).repeat(
        flat.shape[0], 1, 1)
    for g in flat.unbind(1):
        u = torch.bmm(inverse, g.unsqueeze(2))
        scale = 1.0 / (n + torch.bmm(g.unsqueeze(1), u))
        inverse.baddbmm_(u * scale, u.transpose(1, 2), alpha=-1)
    return inverse.reshape(*grads.shape[:-2], d, d)


@dataclass
class LowRankInverse:
    """One block's inverse Fisher kept as its N gradients: F^-1 = (1/lam) (I - G^T M^-1 G) with
    M = N lam I + G G^T = L L^T. Every quantity OBS needs comes from whitened columns L^-1 G[:, I]
    (see ``solve_principal``), so memory is O(N d) and no d x d matrix is ever formed."""

    grads: torch.Tensor
    chol: torch.Tensor
    damping: float

    @classmethod
    def of(cls, grads: torch.Tensor, damping: float) -> LowRankInverse:
        """From gradients G (N, d) in the dtype the solves should use."""
        system = grads @ grads.T
        system.diagonal().add_(grads.shape[0] * damping)
        return cls(grads, torch.linalg.cholesky(system), damping)

    @property
    def shape(self) -> tuple[int, int]:
        d = self.grads.shape[1]
        return d, d

    def whiten(self, index: torch.Tensor) -> torch.Tensor:
        """L^-1 G[:, index] for an index tensor of any shape: (N, *index.shape)."""
        columns = self.grads[:, index.reshape(-1)]
        solved = torch.linalg.solve_triangular(self.chol, columns, upper=False)
        return solved.reshape(-1, *index.shape)

    def diagonal(self, chunk: int = 1 << 14) -> torch.Tensor:
        """[F^-1]_qq for every q, ``chunk`` columns at a time."""
        d = self.shape[0]
        parts = [self.whiten(torch.arange(s, min(s + chunk, d))).square().sum(0)
                 for s in range(0, d, chunk)]
        return (1.0 - torch.cat(parts)) / self.damping

    def principal(self, index: torch.Tensor) -> torch.Tensor:
        """[F^-1]_II for ``index`` (..., m): (..., m, m)."""
        a = self.whiten(index).movedim(0, -2)
        eye = torch.eye(index.shape[-1], dtype=a.dtype, device=a.device)
        return (eye - a.transpose(-1, -2) @ a) / self.damping

    def matvec(self, vector: torch.Tensor) -> torch.Tensor:
        """F^-1 v for v (d,)."""
        inner = torch.cholesky_solve((self.grads @ vector).unsqueeze(1), self.chol).squeeze(1)
        return (vector - self.grads.T @ inner) / self.damping

    def dense(self) -> torch.Tensor:
        """The d x d inverse (tests and small blocks only)."""
        return self.principal(torch.arange(self.shape[0], device=self.grads.device))


Inverse = torch.Tensor | LowRankInverse


def inverse_times(inverse: Inverse, vector: torch.Tensor) -> torch.Tensor:
    """F^-1 v for a dense or low-rank block inverse."""
    if isinstance(inverse, LowRankInverse):
        return inverse.matvec(vector)
    return inverse @ vector


def solve_principal(inverse: Inverse, index: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """([F^-1]_II)^-1 v for ``index`` and ``values`` (nq, m): OBS's coefficients of nq sets.

    Low-rank with m > N: [F^-1]_II = (1/lam) (I - A^T A) with A = L^-1 G_I (N x m), and Woodbury
    once more, (I - A^T A)^-1 = I + A^T (I - A A^T)^-1 A, solves it through an N x N system:
    O(N^2 m) instead of O(m^3), and the m x m matrix is never formed."""
    if isinstance(inverse, LowRankInverse):
        a = inverse.whiten(index).movedim(0, -2)  # (nq, N, m)
        n, m = a.shape[-2:]
        if m > n:
            inner = -(a @ a.transpose(-1, -2))
            inner.diagonal(dim1=-2, dim2=-1).add_(1.0)
            projected = a @ values.unsqueeze(-1)
            solved = torch.cholesky_solve(projected, torch.linalg.cholesky(inner))
            return inverse.damping * (values + (a.transpose(-1, -2) @ solved).squeeze(-1))
        sub = torch.eye(m, dtype=a.dtype, device=a.device) - a.transpose(-1, -2) @ a
        sub /= inverse.damping
    else:
        sub = inverse[index.unsqueeze(-1), index.unsqueeze(-2)]
    return torch.cholesky_solve(values.unsqueeze(-1), torch.linalg.cholesky(sub)).squeeze(-1)


# --------------------------------------------------------------------------- blocks


@dataclass(frozen=True)
class Block:
    """Weights [start, stop) of parameter ``name`` in its axis-first flat order."""

    name: str
    start: int
    stop: int

    @property
    def size(self) -> int:
        return self.stop - self.start


@dataclass
class BlockLayout:
    """The flat, axis-first order of each parameter and its cut into Fisher blocks.

    ``axes`` gives the axis that goes first per parameter (default 0: PyTorch's own order).
    """

    shapes: dict[str, tuple[int, ...]]
    block_size: int
    axes: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, params: Tensors, block_size: int,
           axes: Mapping[str, int] | None = None) -> BlockLayout:
        return cls({n: tuple(p.shape) for n, p in params.items()}, block_size, dict(axes or {}))

    def flat(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` (shaped like the parameter, with optional leading batch dims) flattened
        axis-first over its last ``len(shape)`` dims."""
        rank = len(self.shapes[name])
        lead = tensor.dim() - rank
        moved = tensor.movedim(lead + self.axes.get(name, 0), lead)
        return moved.reshape(*tensor.shape[:lead], -1)

    def unflat(self, name: str, vector: torch.Tensor) -> torch.Tensor:
        """Inverse of ``flat`` for one vector."""
        shape = list(self.shapes[name])
        axis = self.axes.get(name, 0)
        moved = [shape[axis]] + shape[:axis] + shape[axis + 1:]
        return vector.reshape(moved).movedim(0, axis)

    def blocks(self, name: str) -> list[Block]:
        numel = 1
        for size in self.shapes[name]:
            numel *= size
        return [Block(name, s, min(s + self.block_size, numel))
                for s in range(0, numel, self.block_size)]

    def all_blocks(self) -> Iterator[Block]:
        for name in self.shapes:
            yield from self.blocks(name)


def fisher_memory(shapes: Mapping[str, tuple[int, ...]], options: FisherOptions) -> dict[str, int]:
    """Bytes a blockwise inverse Fisher needs for parameters of ``shapes``: ``inverse`` (every
    block's d x d matrix, held for the OBS update; with ``low_rank`` its N x d gradients and
    N x N factor), ``gradients`` (N gradients, float32),
    ``workspace`` (one batched call's largest temporaries) and their ``total``."""
    layout = BlockLayout(dict(shapes), options.block_size)
    item = torch.finfo(options.dtype).bits // 8
    sizes = [b.size for b in layout.all_blocks()]
    numel = sum(sizes)
    n = options.num_grads
    if options.low_rank:
        inverse = sum(n * d + n * n for d in sizes) * item
    else:
        inverse = sum(d * d for d in sizes) * item
    biggest = max(sizes, default=0)
    per_block = (biggest * n + min(n, biggest) ** 2 + biggest * biggest) * item
    workspace = min(options.chunk_blocks, len(sizes)) * per_block
    if options.low_rank:  # one block at a time, and no d x d temporary: its N x N system
        workspace = n * n * item
    gradients = n * numel * 4
    return {"weights": numel, "blocks": len(sizes), "inverse": inverse, "gradients": gradients,
            "workspace": workspace, "total": inverse + gradients + workspace}


# --------------------------------------------------------------------------- gradients


def collect_gradients(
    model: torch.nn.Module,
    params: Tensors,
    batches: Iterable[Batch],
    loss_fn: LossFn,
    options: FisherOptions,
    layout: BlockLayout,
) -> dict[str, torch.Tensor]:
    """N = ``options.num_grads`` gradients, each the mean over ``mini_batch`` samples, per
    parameter flattened by ``layout``: name -> float32 (N, numel).

    ``batches`` yields (x, y); samples are consumed in order and regrouped into mini-batches of
    ``mini_batch``. Raises OnnxotoError if they run out before N gradients.
    """
    names = list(params)
    tensors = [params[n] for n in names]
    out = {n: torch.empty(options.num_grads, params[n].numel(), dtype=torch.float32)
           for n in names}
    count = 0
    for x, y in _regroup(batches, options.mini_batch):
        if count == options.num_grads:
            break
        grads = torch.autograd.grad(loss_fn(model(x), y), tensors, allow_unused=True)
        for name, grad, param in zip(names, grads, tensors, strict=True):
            grad = torch.zeros_like(param) if grad is None else grad
            out[name][count] = layout.flat(name, grad.detach()).float().cpu()
        count += 1
    if count < options.num_grads:
        raise OnnxotoError(f"fisher: the data gave {count} mini-batches of {options.mini_batch}, "
                           f"{options.num_grads} are needed; lower num_grads or pass more data")
    return out


def _regroup(batches: Iterable[Batch], size: int) -> Iterator[Batch]:
    """Re-cut a stream of (x, y) batches into batches of exactly ``size`` samples."""
    xs: list[torch.Tensor] = []
    ys: list[torch.Tensor] = []
    held = 0
    for x, y in batches:
        xs.append(x)
        ys.append(y)
        held += len(x)
        while held >= size:
            x_all, y_all = torch.cat(xs), torch.cat(ys)
            yield x_all[:size], y_all[:size]
            xs, ys, held = [x_all[size:]], [y_all[size:]], held - size


# --------------------------------------------------------------------------- the model's inverse


@dataclass
class BlockFisher:
    """Per-block inverse Fisher of a set of parameters (see ``BlockLayout``): d x d matrices, or
    ``LowRankInverse`` factors with ``options.low_rank`` (unstructured ``obs`` needs matrices;
    ``group_obs`` takes either)."""

    layout: BlockLayout
    blocks: list[Block]
    inverses: list[Inverse]
    options: FisherOptions

    @classmethod
    def from_gradients(cls, grads: Tensors, layout: BlockLayout,
                       options: FisherOptions) -> BlockFisher:
        """Invert every block of ``grads`` (name -> (N, numel) in ``layout``'s order); blocks of
        one size in one parameter go through ``inverse_fisher`` together, ``chunk_blocks`` at a
        time. With ``low_rank`` each block keeps its gradients instead."""
        blocks: list[Block] = []
        inverses: list[Inverse] = []
        for name in layout.shapes:
            g = grads[name]
            if options.low_rank:
                for block in layout.blocks(name):
                    part = g[:, block.start:block.stop].to(options.dtype)
                    inverses.append(LowRankInverse.of(part, options.damping))
                    blocks.append(block)
                continue
            full = g.shape[1] // layout.block_size
            whole = layout.block_size * full
            parts = g[:, :whole].reshape(g.shape[0], full, layout.block_size).transpose(0, 1)
            for start in range(0, full, options.chunk_blocks):
                chunk = parts[start:start + options.chunk_blocks].to(options.dtype)
                inverses.extend(inverse_fisher(chunk, options.damping).unbind(0))
            if whole < g.shape[1]:
                inverses.append(inverse_fisher(g[:, whole:].to(options.dtype), options.damping))
            blocks.extend(layout.blocks(name))
        return cls(layout, blocks, inverses, options)

    @classmethod
    def estimate(cls, model: torch.nn.Module, params: Tensors, batches: Iterable[Batch],
                 loss_fn: LossFn, options: FisherOptions = FisherOptions(),
                 axes: Mapping[str, int] | None = None) -> BlockFisher:
        """Collect gradients of ``params`` on ``batches`` and invert the blockwise Fisher."""
        layout = BlockLayout.of(params, options.block_size, axes)
        grads = collect_gradients(model, params, batches, loss_fn, options, layout)
        return cls.from_gradients(grads, layout, options)

    def diagonals(self) -> dict[str, torch.Tensor]:
        """[F^-1]_qq per parameter, in the parameter's shape."""
        per_name: dict[str, list[torch.Tensor]] = {n: [] for n in self.layout.shapes}
        for block, inverse in zip(self.blocks, self.inverses, strict=True):
            per_name[block.name].append(inverse.diagonal())
        return {n: self.layout.unflat(n, torch.cat(parts)) for n, parts in per_name.items()}
