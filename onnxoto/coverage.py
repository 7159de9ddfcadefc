"""How much of a model the groups can reach: the removable-MACs ceiling and the reasons by kind.

The ceiling is the share of MACs gone if every prunable group kept a single channel. It is the
most pruning can ever remove with these groups, so a low ceiling says the partition, not the
training, limits compression. It is computed from shapes alone (every channel space and member
axis shrunk to what would be kept, then metrics' MAC formulas), without building the slim model,
so it costs a few milliseconds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from onnxoto.canonical import static_shapes
from onnxoto.metrics import MAC_RULES, live_nodes

if TYPE_CHECKING:
    from onnxoto.groups import Group
    from onnxoto.partition import Partition

Dims = tuple[int | None, ...]


def coverage_summary(result: Partition, reasons: Sequence[Sequence[str]],
                     kinds: Mapping[str, str]) -> dict:
    """The summary fields: MACs counted, MACs removable at most and their share, and the
    reasons of non-prunable groups grouped by kind (``reasons``: every reason text of each
    group, by group id; ``kinds``: reason text -> kind)."""
    total, removable = macs_ceiling(result)
    return {
        "macs": total,
        "removable_macs": removable,
        "removable_macs_share": removable / total if total else 0.0,
        "reasons_by_kind": reasons_by_kind(result.groups, reasons, kinds),
    }


def macs_ceiling(result: Partition) -> tuple[int, int]:
    """(MACs of the model, MACs removed if every prunable group kept one channel).

    Nodes whose shapes are unknown are left out of both numbers. A dynamic batch counts as 1,
    also where it is folded into another axis (canonical.static_shapes; only then is a second
    shape inference run).
    """
    view = result.view
    keep = result.slot_keep({g.id: _one_channel(g.size) for g in result.prunable})
    if all(_static(shape) == shape for shape in view.shapes.values()):
        before = dict(view.shapes)
    else:
        before = {name: _static(shape) for name, shape in static_shapes(view.model).items()}
    after = dict(before)
    for tensor, space in result.spaces.items():
        shape = after.get(tensor)
        if shape is None or space.axis >= len(shape) or shape[space.axis] != space.size:
            continue
        after[tensor] = _with_dim(shape, space.axis, int(keep[space.slots].sum()))
    for (name, axis), gone in _removed(result.prunable, before).items():
        after[name] = _with_dim(after[name], axis, after[name][axis] - gone)
    for name in view.constants:  # weights read through Transpose/Identity (legacy MatMul W^T)
        source = None if name in view.initializers else view.const_source(name)
        if source is not None and source[0] in after and name in after:
            init_shape = after[source[0]]
            after[name] = tuple(init_shape[axis] for axis in source[1])
    total = removed = 0
    for node in live_nodes(view.model):
        rule = MAC_RULES.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        if rule is None:
            continue
        full = _macs(rule, node, before)
        slim = _macs(rule, node, after)
        if full is None or slim is None:
            continue
        total += full
        removed += max(full - slim, 0)
    return total, removed


def reasons_by_kind(groups: list[Group], reasons: Sequence[Sequence[str]],
                    kinds: Mapping[str, str]) -> list[dict]:
    """One row per kind of reason: how many non-prunable groups (and channels) it bars, and
    one example. A group barred for two kinds counts under both."""
    rows: dict[str, dict] = {}
    for group in groups:
        if group.prunable:
            continue
        for text in reasons[group.id]:
            kind = kinds.get(text, "other")
            row = rows.setdefault(kind, {"kind": kind, "groups": 0, "channels": 0,
                                         "example": text, "_seen": set()})
            if group.id not in row["_seen"]:
                row["_seen"].add(group.id)
                row["groups"] += 1
                row["channels"] += group.size
    ordered = sorted(rows.values(), key=lambda r: (-r["groups"], r["kind"]))
    return [{k: v for k, v in row.items() if k != "_seen"} for row in ordered]


def _one_channel(size: int) -> np.ndarray:
    keep = np.zeros(size, dtype=bool)
    keep[0] = True
    return keep


def _removed(groups: list[Group], shapes: Mapping[str, Dims]) -> dict[tuple[str, int], int]:
    """(initializer, axis) -> how many indices go when every group keeps one channel: each
    member's channel owns ``block`` indices, and groups never share an index."""
    claims = {(g.id, m.initializer, m.axis, m.index_map): g.size - 1
              for g in groups for m in g.members}
    gone: dict[tuple[str, int], int] = {}
    for (_, name, axis, index_map), channels in claims.items():
        shape = shapes.get(name)
        if shape is None or axis >= len(shape) or shape[axis] is None:
            continue
        gone[(name, axis)] = min(gone.get((name, axis), 0) + channels * index_map.block,
                                 shape[axis])
    return gone


def _static(shape) -> Dims:
    return tuple(d if isinstance(d, int) else None for d in shape)


def _with_dim(shape: Dims, axis: int, size: int) -> Dims:
    return (*shape[:axis], size, *shape[axis + 1:])


def _macs(rule, node, shapes: Mapping[str, Dims]) -> int | None:
    inputs = [shapes.get(name) if name else None for name in node.input]
    outputs = [shapes.get(name) if name else None for name in node.output]
    return rule(node, inputs, outputs)
