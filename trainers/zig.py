"""Zero-invariant groups (ZIGs) of a partition, as index tensors over torch parameters.

DHSPG's unit is one channel of one prunable group: every producer slice of that channel. Zeroing
all of a ZIG's elements makes its channel carry exactly 0, so the channel can be deleted.

A producer member is a whole slice along one axis, so each parameter is indexed by ``rows``: the
ZIG id of every index along that axis (``K``, a spill slot, where no ZIG owns it). Per-ZIG sums
are then a reduction over the other axes plus one ``index_add_`` of ``S`` row sums, and per-ZIG
factors reach the elements by broadcasting ``factor[rows]``: no Python loop over ZIGs and no
per-element index tensors on the hot path (gathering by element indices costs a pass over index
tensors as large as the weights). Element indices are still available (``flat``, ``zig``) for
checks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache, cached_property

import numpy as np
import torch

from onnxoto.groups import Group

__all__ = ["CHUNK_BYTES", "ParamEntries", "ZigIndex", "build_zig_index", "compiled_row_stats",
           "row_stats"]

Tensors = Mapping[str, torch.Tensor]


def _rows(view: torch.Tensor) -> tuple[torch.Tensor, int | tuple[int, int]]:
    """A (before, S, after) view and the dims that sum it per row. When ``before`` is 1 the
    rows are contiguous, and reducing dim 1 of the 2-D view is the faster kernel on CPU."""
    return (view[0], 1) if view.shape[0] == 1 else (view, (0, 2))


def _sq_norm(view: torch.Tensor) -> torch.Tensor:
    """Per-row squared norms via ``vector_norm``: no temporary as large as the parameter."""
    rows, dims = _rows(view)
    return torch.linalg.vector_norm(rows, dim=dims).square()


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    (a, dims), (b, _) = _rows(a), _rows(b)
    return (a * b).sum(dims)  # faster than einsum or bmm on CPU


# Bytes of rows that ``row_stats`` sums per call on a large CPU parameter (see ``row_stats``).
CHUNK_BYTES = 1 << 20


@torch.no_grad()
def row_stats(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-row <a,a>, <a,b>, <b,b> (Tensor[3, S]) of two (before, S, after) views, eager and
    without autograd (optimizer sums; the chunks write into preallocated outputs).

    A large CPU tensor with contiguous rows (``before`` 1, at least two chunks) goes
    ``CHUNK_BYTES`` of rows at a time: the <a,b> product then sits in a reused buffer that stays
    in the core's L2 cache instead of a temporary as large as the parameter, and the second norm
    reads its rows back from cache (the chunk size and its effect are measured in
    benchmarks/README.md); on CUDA one call per sum is cheap already."""
    if (a.device.type == "cpu" and a.shape[0] == 1
            and a.numel() * a.element_size() >= 2 * CHUNK_BYTES):
        return _chunked_row_stats(a[0], b[0])
    return torch.stack([_sq_norm(a), _dot(a, b), _sq_norm(b)])


def _chunked_row_stats(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``row_stats`` of two (S, n) tensors, ``CHUNK_BYTES`` of rows at a time."""
    size, width = a.shape
    step = max(1, min(size, CHUNK_BYTES // (width * a.element_size())))
    stats = a.new_empty(3, size)
    product = a.new_empty(step, width)
    for start in range(0, size, step):
        rows = slice(start, start + step)
        part_a, part_b = a[rows], b[rows]
        part_product = product[:len(part_a)]
        torch.linalg.vector_norm(part_a, dim=1, out=stats[0, rows])
        torch.mul(part_a, part_b, out=part_product)
        torch.sum(part_product, dim=1, out=stats[1, rows])
        torch.linalg.vector_norm(part_b, dim=1, out=stats[2, rows])
    stats[0::2].square_()  # the norms, squared
    return stats


def _all_row_stats(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
    """``row_stats`` of every (a, b) pair of views, concatenated (Tensor[3, R])."""
    return torch.cat([row_stats(x, y) for x, y in zip(a, b, strict=True)], dim=1)


def _fused_all_row_stats(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
    """The same sums written for torch.compile, which fuses each pair's three into one pass."""
    return torch.cat([torch.stack([(x * x).sum((0, 2)), (x * y).sum((0, 2)), (y * y).sum((0, 2))])
                      for x, y in zip(a, b, strict=True)], dim=1)


@cache
def compiled_row_stats() -> Callable[[list[torch.Tensor], list[torch.Tensor]], torch.Tensor]:
    """``_all_row_stats`` as one torch.compile'd graph: one pass over both tensors and no
    temporary for <a,b> (eager allocates a product as large as the parameter), and one call
    for all parameters (compiled code has a per-call overhead). Compiles on first call (seconds
    for a large model; needs a C++ compiler on CPU) and again for new parameter shapes."""
    return torch.compile(_fused_all_row_stats, dynamic=False)


@dataclass(frozen=True)
class ParamEntries:
    """The ZIG elements of one parameter: index ``i`` along ``axis`` belongs to ZIG ``rows[i]``
    (``rows[i] == num_groups`` when no ZIG owns it)."""

    name: str
    param: torch.Tensor
    axis: int
    rows: torch.Tensor
    num_groups: int

    @cached_property
    def shape3(self) -> tuple[int, int, int]:
        """(before, axis, after) sizes: every per-row operation works on this 3-D view."""
        shape = self.param.shape
        before = int(np.prod(shape[:self.axis], dtype=np.int64))
        after = int(np.prod(shape[self.axis + 1:], dtype=np.int64))
        return before, shape[self.axis], after

    @cached_property
    def covered(self) -> torch.Tensor:
        return self.rows < self.num_groups

    @property
    def dense(self) -> bool:
        """True when every element of the parameter belongs to some ZIG."""
        return bool(self.covered.all())

    def view3(self, tensor: torch.Tensor) -> torch.Tensor:
        """A (before, axis, after) view for reading (a copy if ``tensor`` is not contiguous)."""
        return tensor.reshape(self.shape3)

    def row_dot(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Per-row inner products of two tensors shaped like ``param`` (Tensor[S])."""
        return _dot(self.view3(a), self.view3(b))

    def row_sq_norm(self, a: torch.Tensor) -> torch.Tensor:
        """Per-row squared l2 norms (Tensor[S])."""
        return _sq_norm(self.view3(a))

    def row_sum(self, values: torch.Tensor) -> torch.Tensor:
        rows, dims = _rows(self.view3(values))
        return rows.sum(dims)

    def per_row(self, per_zig: torch.Tensor, fill: float | bool) -> torch.Tensor:
        """``per_zig`` (Tensor[K]) shaped to broadcast against ``param`` along ``axis``;
        ``fill`` where no ZIG owns an index. In-place ops then need no view of the param."""
        extended = torch.cat([per_zig, per_zig.new_full((1,), fill)])
        shape = [1] * self.param.dim()
        shape[self.axis] = -1
        return extended[self.rows].view(shape)

    @cached_property
    def flat(self) -> torch.Tensor:
        """Flat indices of the ZIG elements, ascending (for checks; not used by the optimizer)."""
        index = torch.arange(self.param.numel(), device=self.rows.device).view(self.shape3)
        return index[:, self.covered, :].reshape(-1).sort().values

    @cached_property
    def zig(self) -> torch.Tensor:
        """The ZIG id of each element of ``flat``."""
        before, size, after = self.shape3
        return self.rows.view(1, size, 1).expand(before, size, after).reshape(-1)[self.flat]


@dataclass(eq=False)
class ZigIndex:
    """All ZIGs of the prunable groups; ZIG ids are laid out group by group, channel by channel."""

    num_groups: int
    owners: list[tuple[int, int]]
    entries: list[ParamEntries]
    group_sizes: dict[int, int]

    @property
    def device(self) -> torch.device:
        return self.entries[0].param.device if self.entries else torch.device("cpu")

    @property
    def sizes(self) -> torch.Tensor:
        """Elements per ZIG (LongTensor[K])."""
        return self._scatter(lambda e: torch.full((e.shape3[1],), e.shape3[0] * e.shape3[2],
                                                  dtype=torch.long, device=self.device),
                             torch.long)

    def params(self) -> dict[str, torch.Tensor]:
        return {e.name: e.param for e in self.entries}

    @cached_property
    def _all_rows(self) -> tuple[torch.Tensor, list[int], list[list[int]]]:
        shapes = []
        for e in self.entries:
            shape = [1] * e.param.dim()
            shape[e.axis] = -1
            shapes.append(shape)
        rows = torch.cat([e.rows for e in self.entries]) if self.entries else None
        return rows, [e.rows.numel() for e in self.entries], shapes

    @cached_property
    def _row_spans(self) -> dict[str, tuple[int, int, list[int]]]:
        """name -> (start, stop, broadcast shape) of its rows in ``_all_rows``' order."""
        _, counts, shapes = self._all_rows
        stops = np.cumsum(counts).tolist()
        return {e.name: (stop - count, stop, shape) for e, count, stop, shape
                in zip(self.entries, counts, stops, shapes, strict=True)}

    def broadcast(self, per_zig: torch.Tensor, fill: float | bool,
                  entries: Sequence[ParamEntries] | None = None) -> dict[str, torch.Tensor]:
        """``ParamEntries.per_row`` for every parameter (or only ``entries``) with one gather
        (step-time helper; views are made only for the parameters asked for)."""
        rows = self._all_rows[0]
        if rows is None:
            return {}
        extended = torch.cat([per_zig, per_zig.new_full((1,), fill)])[rows]
        views = {}
        for e in self.entries if entries is None else entries:
            start, stop, shape = self._row_spans[e.name]
            views[e.name] = extended[start:stop].view(shape)
        return views

    @cached_property
    def _entry_of_row(self) -> torch.Tensor:
        _, counts, _ = self._all_rows
        return torch.repeat_interleave(torch.arange(len(self.entries), device=self.device),
                                       torch.tensor(counts, device=self.device))

    def touched(self, *per_zig: torch.Tensor) -> list[list[ParamEntries]]:
        """For each BoolTensor[K] mask, the entries with at least one row whose ZIG is True,
        found for all masks with one gather, one reduction and one host sync rather than a
        check per parameter."""
        rows = self._all_rows[0]
        if rows is None:
            return [[] for _ in per_zig]
        masks = torch.stack(per_zig)
        hits = torch.cat([masks, masks.new_zeros(len(per_zig), 1)], dim=1)[:, rows]
        per_entry = torch.zeros(len(per_zig), len(self.entries), dtype=torch.int32,
                                device=self.device)
        per_entry.index_add_(1, self._entry_of_row, hits.to(torch.int32))
        return [[e for e, count in zip(self.entries, counts, strict=True) if count]
                for counts in per_entry.tolist()]

    def _scatter(self, row_values: Callable[[ParamEntries], torch.Tensor],
                 dtype: torch.dtype | None = None) -> torch.Tensor:
        """Sum per-row values (Tensor[S] or Tensor[C, S] per parameter) into per-ZIG totals
        (Tensor[K] or Tensor[C, K]) with one ``index_add_`` over all parameters; rows owned by
        no ZIG land in a dropped slot."""
        if not self.entries:
            return torch.zeros(0, dtype=dtype or torch.float32, device=self.device)
        return self._sum_rows(torch.cat([row_values(e) for e in self.entries], dim=-1), dtype)

    def _sum_rows(self, values: torch.Tensor, dtype: torch.dtype | None = None, *,
                  rows: torch.Tensor | None = None) -> torch.Tensor:
        """Per-ZIG totals of per-row ``values`` laid out as ``rows`` (default: entry order)."""
        rows = self._all_rows[0] if rows is None else rows
        out = values.new_zeros((*values.shape[:-1], self.num_groups + 1), dtype=dtype)
        out.index_add_(-1, rows, values.to(out.dtype))
        return out[..., :-1]

    @torch.no_grad()
    def dot(self, a: Tensors, b: Tensors) -> torch.Tensor:
        """Per-ZIG inner products <a_g, b_g> (Tensor[K])."""
        return self._scatter(lambda e: e.row_dot(a[e.name], b[e.name]))

    @torch.no_grad()
    def pair_stats(self, a: Tensors, b: Tensors, *,
                   compiled: bool = False) -> tuple[torch.Tensor, ...]:
        """Per-ZIG <a,a>, <a,b>, <b,b> (DHSPG's per-step sums) in one sweep and one scatter;
        ``compiled`` uses ``compiled_row_stats``."""
        if not self.entries:
            return tuple(torch.zeros(3, 0, device=self.device))
        blocks, vectors, rows = self._stats_layout
        parts = []
        if blocks:
            kernel = compiled_row_stats() if compiled else _all_row_stats
            parts.append(kernel([e.view3(a[e.name]) for e in blocks],
                                [e.view3(b[e.name]) for e in blocks]))
        if vectors:
            x = torch.cat([a[e.name].reshape(-1) for e in vectors])
            y = torch.cat([b[e.name].reshape(-1) for e in vectors])
            parts.append(torch.stack([x * x, x * y, y * y]))
        return tuple(self._sum_rows(torch.cat(parts, dim=1), rows=rows))

    @cached_property
    def _stats_layout(self) -> tuple[list[ParamEntries], list[ParamEntries], torch.Tensor]:
        """``pair_stats``' order: entries with several elements a row, then the one-element-a-row
        vectors (BN scales and shifts, biases), whose sums take three ops for all of them
        together instead of a few calls each (large CNNs have a hundred of them); and the ZIG
        id of every row in that order."""
        blocks = [e for e in self.entries if e.shape3[0] * e.shape3[2] > 1]
        vectors = [e for e in self.entries if e.shape3[0] * e.shape3[2] == 1]
        return blocks, vectors, torch.cat([e.rows for e in blocks + vectors])

    @torch.no_grad()
    def group_sq_norms(self, tensors: Tensors | None = None) -> torch.Tensor:
        """Per-ZIG squared l2 norms (Tensor[K]); defaults to the indexed parameters."""
        tensors = self.params() if tensors is None else tensors
        return self._scatter(lambda e: e.row_sq_norm(tensors[e.name]))

    @torch.no_grad()
    def nonzero_counts(self, tensors: Tensors | None = None) -> torch.Tensor:
        """Non-zero elements per ZIG: exact, where a squared norm can underflow to 0."""
        tensors = self.params() if tensors is None else tensors
        return self._scatter(lambda e: e.row_sum(tensors[e.name] != 0), torch.long)

    def zero_zigs(self, tensors: Tensors | None = None) -> torch.Tensor:
        """BoolTensor[K]: True where every element of the ZIG is exactly 0."""
        return self.nonzero_counts(tensors) == 0

    @torch.no_grad()
    def scale_(self, tensors: Tensors, factor: torch.Tensor) -> None:
        """Multiply every ZIG's elements by ``factor[zig]`` in place."""
        for e in self.entries:
            tensors[e.name].mul_(e.per_row(factor, 1.0))

    @torch.no_grad()
    def zero_(self, tensors: Tensors, mask: torch.Tensor) -> None:
        """Set the elements of the ZIGs where ``mask`` is True to exactly 0, in place.

        A broadcast masked fill: no index lists, so no host-device sync. Names not in
        ``tensors`` are skipped (optimizer state may hold only some parameters)."""
        for e in self.entries:
            if e.name in tensors:
                tensors[e.name].masked_fill_(e.per_row(mask, False), 0)

    def zero_fraction(self, tensors: Tensors | None = None) -> float:
        """Share of ZIGs that are entirely zero (the group sparsity DHSPG targets)."""
        if self.num_groups == 0:
            return 0.0
        return int(self.zero_zigs(tensors).sum()) / self.num_groups  # exact, not float32

    def masks(self, tensors: Tensors | None = None, *,
              zero: torch.Tensor | None = None) -> dict[int, np.ndarray]:
        """onnxoto masks (group id -> bool keep, True = keep): a channel goes when its ZIG is 0,
        or, given ``zero`` (BoolTensor[K]), when its ZIG is True there.

        A group is never emptied (shrink needs one channel): if all its ZIGs are zero its first
        channel is kept, as ``onnxoto.masking.masks_from_zeros`` does.
        """
        zero = self.zero_zigs(tensors) if zero is None else zero
        keep = (~zero).cpu().numpy()
        out, start = {}, 0
        for gid, size in self.group_sizes.items():
            mask = keep[start:start + size].copy()
            if not mask.any():
                mask[0] = True
            out[gid] = mask
            start += size
        return out


def build_zig_index(
    groups: Sequence[Group],
    params: Tensors,
    *,
    roles: Sequence[str] = ("producer",),
) -> ZigIndex:
    """Index the ZIGs of the prunable ``groups`` over ``params`` (initializer name -> tensor).

    Members of ``roles`` (default producers only: zeroing them zeroes the channel) are indexed.
    Raises ValueError if a member's initializer is missing from ``params``, if an element would
    belong to two ZIGs, or if one parameter's ZIG slices lie on two different axes.
    """
    rows: dict[str, np.ndarray] = {}
    axes: dict[str, int] = {}
    owners: list[tuple[int, int]] = []
    group_sizes: dict[int, int] = {}
    for group in (g for g in groups if g.prunable):
        first = len(owners)
        owners.extend((group.id, c) for c in range(group.size))
        group_sizes[group.id] = group.size
        for member in (m for m in group.members if m.role in roles):
            name = member.initializer
            if name not in params:
                raise ValueError(f"group {group.id}: {member.role} '{name}' is not among the "
                                 f"parameters given; bind every float initializer")
            shape = tuple(params[name].shape)
            if axes.setdefault(name, member.axis) != member.axis:
                raise ValueError(f"'{name}': ZIG slices on axes {axes[name]} and {member.axis}; "
                                 f"a parameter may feed ZIGs along one axis only")
            owned = rows.setdefault(name, np.full(shape[member.axis], -1, dtype=np.int64))
            _claim(owned, member.index_map.indices(np.arange(group.size)),
                   first + np.repeat(np.arange(group.size), member.index_map.block), name)
    k = len(owners)
    entries = []
    for name, owned in rows.items():
        param = params[name]
        slots = torch.as_tensor(np.where(owned < 0, k, owned), device=param.device)
        entries.append(ParamEntries(name, param, axes[name], slots, k))
    return ZigIndex(num_groups=k, owners=owners, entries=entries, group_sizes=group_sizes)


def _claim(owned: np.ndarray, indices: np.ndarray, zigs: np.ndarray, name: str) -> None:
    """Give axis ``indices`` to ``zigs``, refusing indices out of range or already owned."""
    if indices.size and (indices.min() < 0 or indices.max() >= owned.size):
        raise ValueError(f"'{name}': the group map needs index {int(indices.max())} on an axis "
                         f"of {owned.size}")
    if (owned[indices] >= 0).any() or np.unique(indices).size != indices.size:
        raise ValueError(f"'{name}': some elements belong to two ZIGs; the partition overlaps")
    owned[indices] = zigs
