"""Zero-invariant groups (ZIGs) of a partition, as index tensors over torch parameters.

DHSPG's unit is one channel of one prunable group: every producer slice of that channel. Zeroing
all of a ZIG's elements makes its channel carry exactly 0, so the channel can be deleted. Storing
the ZIGs as (flat element index, zig id) pairs per parameter lets the optimizer reduce and update
all ZIGs at once with ``index_add_`` and gathers, with no Python loop over groups.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from onnxoto.groups import Group, Member

__all__ = ["ParamEntries", "ZigIndex", "build_zig_index"]

Tensors = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class ParamEntries:
    """The elements of one parameter that belong to ZIGs.

    ``flat`` holds flat element indices (sorted), ``zig`` the ZIG id of each. ``dense`` is True
    when ``flat`` is every element in order, so gathers can be plain views.
    """

    name: str
    param: torch.Tensor
    flat: torch.Tensor
    zig: torch.Tensor
    dense: bool

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """The ZIG elements of ``tensor`` (same shape as ``param``), in ``flat`` order."""
        view = tensor.reshape(-1)
        return view if self.dense else view[self.flat]


@dataclass
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
        out = torch.zeros(self.num_groups, dtype=torch.long, device=self.device)
        for e in self.entries:
            out.index_add_(0, e.zig, torch.ones_like(e.zig))
        return out

    def params(self) -> dict[str, torch.Tensor]:
        return {e.name: e.param for e in self.entries}

    def segment_sum(self, values: Sequence[torch.Tensor]) -> torch.Tensor:
        """Per-ZIG sums of per-element ``values`` (one tensor per entry, in entry order).

        The building block for every per-ZIG reduction, so callers never loop over ZIGs."""
        dtype = values[0].dtype if values else torch.float32
        out = torch.zeros(self.num_groups, dtype=dtype, device=self.device)
        for e, v in zip(self.entries, values, strict=True):
            out.index_add_(0, e.zig, v)
        return out

    @torch.no_grad()
    def dot(self, a: Tensors, b: Tensors) -> torch.Tensor:
        """Per-ZIG inner products <a_g, b_g> (Tensor[K])."""
        return self.segment_sum([e.gather(a[e.name]) * e.gather(b[e.name]) for e in self.entries])

    def group_sq_norms(self, tensors: Tensors | None = None) -> torch.Tensor:
        """Per-ZIG squared l2 norms (Tensor[K]); defaults to the indexed parameters."""
        tensors = self.params() if tensors is None else tensors
        return self.dot(tensors, tensors)

    @torch.no_grad()
    def nonzero_counts(self, tensors: Tensors | None = None) -> torch.Tensor:
        """Non-zero elements per ZIG: exact, where a squared norm can underflow to 0."""
        tensors = self.params() if tensors is None else tensors
        return self.segment_sum([(e.gather(tensors[e.name]) != 0).long() for e in self.entries])

    def zero_zigs(self, tensors: Tensors | None = None) -> torch.Tensor:
        """BoolTensor[K]: True where every element of the ZIG is exactly 0."""
        return self.nonzero_counts(tensors) == 0

    @torch.no_grad()
    def scale_(self, tensors: Tensors, factor: torch.Tensor) -> None:
        """Multiply every ZIG's elements by ``factor[zig]`` in place."""
        for e in self.entries:
            view = tensors[e.name].view(-1)
            if e.dense:
                view.mul_(factor[e.zig])
            else:
                view[e.flat] = view[e.flat] * factor[e.zig]

    @torch.no_grad()
    def zero_(self, tensors: Tensors, mask: torch.Tensor) -> None:
        """Set the elements of the ZIGs where ``mask`` is True to exactly 0, in place.

        Masked writes, not index lists, so no host-device sync; names not in ``tensors`` are
        skipped (optimizer state may hold only some parameters)."""
        for e in self.entries:
            if e.name not in tensors:
                continue
            view = tensors[e.name].view(-1)
            if e.dense:
                view.masked_fill_(mask[e.zig], 0)
            else:
                view[e.flat] = view[e.flat].masked_fill(mask[e.zig], 0)

    def zero_fraction(self, tensors: Tensors | None = None) -> float:
        """Share of ZIGs that are entirely zero (the group sparsity DHSPG targets)."""
        if self.num_groups == 0:
            return 0.0
        return float(self.zero_zigs(tensors).float().mean())

    def masks(self, tensors: Tensors | None = None) -> dict[int, np.ndarray]:
        """onnxoto masks (group id -> bool keep, True = keep): a channel goes when its ZIG is 0.

        A group is never emptied (shrink needs one channel): if all its ZIGs are zero its first
        channel is kept, as ``onnxoto.masking.masks_from_zeros`` does.
        """
        keep = (~self.zero_zigs(tensors)).cpu().numpy()
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
    Raises ValueError if a member's initializer is missing from ``params`` or if an element would
    belong to two ZIGs.
    """
    pieces: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    owners: list[tuple[int, int]] = []
    group_sizes: dict[int, int] = {}
    for group in (g for g in groups if g.prunable):
        first = len(owners)
        owners.extend((group.id, c) for c in range(group.size))
        group_sizes[group.id] = group.size
        for member in (m for m in group.members if m.role in roles):
            if member.initializer not in params:
                raise ValueError(f"group {group.id}: {member.role} '{member.initializer}' is not "
                                 f"among the parameters given; bind every float initializer")
            tensor = params[member.initializer]
            flat, zig = _member_elements(member, group.size, tensor)
            pieces.setdefault(member.initializer, []).append((flat, zig + first))
    entries = [_merge(name, params[name], parts) for name, parts in pieces.items()]
    return ZigIndex(num_groups=len(owners), owners=owners, entries=entries,
                    group_sizes=group_sizes)


def _member_elements(
    member: Member, size: int, tensor: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat element indices of ``member``'s slice of ``tensor`` and the channel of each."""
    device = tensor.device
    along = torch.as_tensor(member.index_map.indices(np.arange(size)), device=device)
    if along.numel() and (int(along.max()) >= tensor.shape[member.axis] or int(along.min()) < 0):
        raise ValueError(f"'{member.initializer}' axis {member.axis} has "
                         f"{tensor.shape[member.axis]} entries; the group map needs index "
                         f"{int(along.max())}")
    channel = torch.arange(size, device=device).repeat_interleave(member.index_map.block)
    flat = torch.arange(tensor.numel(), device=device).reshape(tensor.shape)
    flat = flat.index_select(member.axis, along)
    shape = [1] * tensor.dim()
    shape[member.axis] = along.numel()
    zig = channel.reshape(shape).expand_as(flat)
    return flat.reshape(-1), zig.reshape(-1)


def _merge(
    name: str, param: torch.Tensor, parts: list[tuple[torch.Tensor, torch.Tensor]]
) -> ParamEntries:
    """One sorted entry list per parameter, refusing elements claimed twice."""
    flat = torch.cat([p[0] for p in parts])
    zig = torch.cat([p[1] for p in parts])
    order = torch.argsort(flat, stable=True)
    flat, zig = flat[order], zig[order]
    if flat.numel() > 1 and bool((flat[1:] == flat[:-1]).any()):
        raise ValueError(f"'{name}': some elements belong to two ZIGs; the partition overlaps")
    dense = flat.numel() == param.numel()
    return ParamEntries(name=name, param=param, flat=flat, zig=zig, dense=dense)
