"""Zero-invariant groups of an ONNX graph: one pass of rules, then groups from the union-find."""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from onnxoto.canonical import canonicalize
from onnxoto.coverage import coverage_summary
from onnxoto.errors import OnnxotoError
from onnxoto.graph import (
    GraphView,
    ModelLike,
    build_view,
    file_sha256,
    has_subgraph,
    load_model,
    reads,
)
from onnxoto.groups import (
    Group,
    IndexMap,
    Member,
    partition_to_json,
    summarize,
    write_atomic,
)
from onnxoto.rules import rule_for
from onnxoto.spaces import MemberRecord, Tracer, components, node_label


@dataclass
class Partition:
    """The groups of one model, and the per-tensor channel maps shrink needs."""

    groups: list[Group]
    summary: dict
    model_info: dict
    view: GraphView
    spaces: dict = field(repr=False)
    slot_group: np.ndarray = field(repr=False)
    slot_channel: np.ndarray = field(repr=False)

    @property
    def prunable(self) -> list[Group]:
        return [g for g in self.groups if g.prunable]

    @property
    def model(self) -> onnx.ModelProto:
        """The canonical graph the groups were found on (see onnxoto.canonical): member names
        refer to it, and shrink slices it."""
        return self.view.model

    def slot_keep(self, masks: dict[int, np.ndarray]) -> np.ndarray:
        """Keep flag of every slot under ``masks`` (groups not in masks are kept)."""
        keep = np.ones(self.slot_group.shape[0], dtype=bool)
        for gid, mask in masks.items():
            selected = self.slot_group == gid
            keep[selected] = np.asarray(mask, dtype=bool)[self.slot_channel[selected]]
        return keep

    def to_json(self) -> str:
        return partition_to_json(self.groups, self.model_info, self.summary)

    def save(self, path: str | os.PathLike) -> None:
        write_atomic(path, self.to_json().encode())


def opset_of(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return 1


def partition(model: ModelLike, *, in_place: bool = False) -> Partition:
    """Find the zero-invariant groups of a model (path or proto).

    The groups are those of the canonical graph (``result.model``; see onnxoto.canonical).
    Every op passes through its rule; ops with no rule, graph outputs, reads from inside
    subgraphs and shared initializers make the groups they touch non-prunable, each with a
    reason naming the node. Raises OnnxotoError for a quantized model.

    A proto that needs canonicalizing is copied so the caller's stays as it was, which holds
    its weights twice for a moment; ``in_place=True`` canonicalizes the caller's proto itself
    (the same function, computed constants folded, shared weights split), for callers that
    keep only the result. A path is always loaded and canonicalized in place.
    """
    proto = load_model(model)
    info: dict = {"path": None, "sha256": None}
    loaded = not isinstance(model, onnx.ModelProto)
    if loaded:
        info = {"path": str(Path(model)), "sha256": file_sha256(model)}
    where = f"'{info['path']}'" if loaded else "model"
    canonical = canonicalize(proto, where=where, in_place=in_place or loaded)
    view = build_view(canonical)
    tracer = trace(view, opset_of(canonical))
    result = form_groups(tracer, info)
    if not any(True for _ in _stems(result)):
        where = info["path"] or "model"
        raise OnnxotoError(f"{where}: no Conv, ConvTranspose, Gemm or MatMul-with-weights node "
                           f"found, so there are no channels to prune")
    return result


def _stems(result: Partition):
    return (g for g in result.groups if g.by_role("producer"))


def trace(view: GraphView, opset: int) -> Tracer:
    """Run every node's rule in graph order; inputs a rule did not read become barriers."""
    tracer = Tracer(view)
    for node in view.model.graph.node:
        rule = rule_for(node, opset)
        tracer.read.clear()
        if has_subgraph(node):
            _taint_subgraph_reads(node, tracer)
        if rule is None:
            tracer.taint_inputs(node, f"{node_label(node)} has no onnxoto rule "
                                      f"(domain '{node.domain or 'ai.onnx'}', opset {opset}); "
                                      f"its channels are kept", kind=f"unknown op {node.op_type}")
            continue
        try:
            rule.trace(node, tracer)
        except Exception as exc:  # a rule bug must cost prunability, never a wrong model
            tracer.taint_inputs(node, f"{node_label(node)}: onnxoto's rule failed here "
                                      f"({type(exc).__name__}: {exc}); please report it",
                                kind="rule failed")
            for out in node.output:
                tracer.spaces.pop(out, None)
            continue
        for name in node.input:
            if name and name not in tracer.read and tracer.spaces.get(name) is not None:
                tracer.taint(tracer.spaces[name], f"{node_label(node)} reads '{name}' in a way "
                                                  f"onnxoto does not follow")
    for name in view.graph_outputs:
        tracer.taint(tracer.spaces.get(name), f"channels reach graph output '{name}'",
                     kind="graph output")
    return tracer


def _taint_subgraph_reads(node: onnx.NodeProto, tracer: Tracer) -> None:
    """An If/Loop/Scan body reading an outer tensor consumes its channels: no rule follows
    channels into bodies, so those channels are kept."""
    for name in dict.fromkeys(reads(node)):
        if name not in node.input:
            tracer.taint(tracer.spaces.get(name), f"{node_label(node)} reads '{name}' inside "
                                                  f"its subgraph; its channels are kept",
                         kind="subgraph")


def form_groups(tracer: Tracer, info: dict) -> Partition:
    """Channels = union-find classes. A group = classes born in the same stems *and* read by
    the same members, so a Split or Slice of one stem's channels cuts it into groups that every
    member covers whole (each then gets a plain offset map)."""
    roots = tracer.forest.roots()
    family = _families(tracer, roots)
    signature = _coverage_signatures(tracer, roots)
    class_group, class_channel, sizes = _number_channels(tracer.births, roots, family, signature)
    slot_group = class_group[roots]
    slot_channel = class_channel[roots]

    reasons: list[list[str]] = [[] for _ in sizes]
    for rid, gid in _taint_pairs(tracer.taints, slot_group):
        _add_reason(reasons[gid], tracer.reasons[rid])
    members: list[list[Member]] = [[] for _ in sizes]
    plain = _plain_records(tracer.members, slot_group, slot_channel, sizes)
    for record, is_plain in zip(tracer.members, plain.tolist(), strict=True):
        _split_record(record, slot_group, slot_channel, sizes, members, reasons, tracer,
                      plain=is_plain)
    _check_shared(members, reasons, tracer)

    groups = []
    for gid, size in enumerate(sizes):
        if not any(m.role == "producer" for m in members[gid]):
            _add_reason(reasons[gid], tracer.note("no producer weights (nothing can zero "
                                                  "these channels)", "no producer weights"))
        groups.append(Group(id=gid, size=size, prunable=not reasons[gid],
                            reasons=_one_line_per_kind(reasons[gid], tracer.kinds),
                            members=members[gid]))
    view = tracer.view
    shapes = {name: tuple(view.shapes[name]) for name in view.constants  # values not decoded
              if name in view.initializers or name in view.constant_nodes}
    result = Partition(groups=groups, summary=summarize(groups, shapes), model_info=info,
                       view=tracer.view, spaces=tracer.spaces, slot_group=slot_group,
                       slot_channel=slot_channel)
    result.summary.update(coverage_summary(result, reasons, tracer.kinds))
    return result


def _families(tracer: Tracer, roots: np.ndarray) -> np.ndarray:
    """Per slot, the smallest slot of its family: classes joined with every class born in
    the same stem."""
    births = [born for born in tracer.births if born.size]
    if not births:
        return roots
    firsts = np.concatenate([np.full(born.shape, born[0]) for born in births])
    return components(roots, firsts, np.concatenate(births))


def _number_channels(births: list[np.ndarray], roots: np.ndarray, family: np.ndarray,
                     signature: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Group and channel of every class, visiting the stems' slots in birth order.

    A class's first slot joins the current run of channels when it has the run's (family,
    signature) key, else starts a new group: a group stays contiguous in its stem. A slot of
    a class seen before ends the run unless that class is in the run (a head's later columns).
    Slots come in blocks (same key, or all seen) that are handled whole, so the Python loop
    runs per block, not per slot. Returns class -> group, class -> channel, group sizes.
    """
    group_of = np.full(roots.shape, -1, dtype=np.int64)
    channel_of = np.full(roots.shape, -1, dtype=np.int64)
    sizes: list[int] = []
    births = [born for born in births if born.size]
    if not births:
        return group_of, channel_of, sizes
    order = np.concatenate(births)
    classes = roots[order]
    count = order.shape[0]
    first_seen = np.full(roots.shape, count, dtype=np.int64)
    np.minimum.at(first_seen, classes, np.arange(count))
    opens = first_seen[classes]  # position of each class's first slot
    fresh = opens == np.arange(count)
    families, signatures = family[order], signature[classes]
    starts = np.zeros(count, dtype=bool)
    starts[np.cumsum([0] + [born.shape[0] for born in births[:-1]])] = True
    stem_start = starts.copy()
    starts[1:] |= (fresh[1:] != fresh[:-1]) | (families[1:] != families[:-1]) | \
        (signatures[1:] != signatures[:-1])
    bounds = np.nonzero(starts)[0]
    ends = np.append(bounds[1:], count)
    earliest = np.minimum.reduceat(opens, bounds)  # for seen blocks: oldest class they read
    run_key, run_start, run_gid = None, 0, -1
    block_gid = np.full(bounds.shape, -1, dtype=np.int64)
    block_channel = np.zeros(bounds.shape, dtype=np.int64)
    for index, (start, end) in enumerate(zip(bounds.tolist(), ends.tolist(), strict=True)):
        if stem_start[start]:
            run_key = None
        if not fresh[start]:
            if run_key is not None and earliest[index] < run_start:
                run_key = None  # a class of an earlier group: the run ends
            continue
        key = (int(families[start]), int(signatures[start]))
        if key != run_key:
            run_key, run_start, run_gid = key, start, len(sizes)
            sizes.append(0)
        block_gid[index], block_channel[index] = run_gid, sizes[run_gid]
        sizes[run_gid] += end - start
    block = np.cumsum(starts) - 1
    firsts = np.nonzero(fresh)[0]
    group_of[classes[firsts]] = block_gid[block[firsts]]
    channel_of[classes[firsts]] = block_channel[block[firsts]] + firsts - bounds[block[firsts]]
    return group_of, channel_of, sizes


def _taint_pairs(taints: list[tuple[np.ndarray, int]], slot_group: np.ndarray) -> list[
        tuple[int, int]]:
    """(reason id, group) for every group each taint touches, in taint order, then group
    order, without repeats within one taint."""
    if not taints:
        return []
    lengths = np.array([slots.shape[0] for slots, _ in taints], dtype=np.int64)
    which = np.repeat(np.arange(len(taints), dtype=np.int64), lengths)
    groups = slot_group[np.concatenate([np.asarray(slots, dtype=np.int64).reshape(-1)
                                        for slots, _ in taints])]
    width = int(slot_group.max(initial=0)) + 1
    pairs = np.unique(which * width + groups)
    rids = [rid for _, rid in taints]
    return [(rids[p // width], p % width) for p in pairs.tolist()]


def _one_line_per_kind(reasons: list[str], kinds: dict[str, str]) -> list[str]:
    """A group's reasons, one per kind: five LayerNorms reading one residual stream are one
    line naming the first, not five (nor one per Add the stream passes)."""
    by_kind: dict[str, list[str]] = {}
    for text in reasons:
        by_kind.setdefault(kinds.get(text, "other"), []).append(text)
    return [texts[0] + (f" (and {len(texts) - 1} more {kind})" if len(texts) > 1 else "")
            for kind, texts in by_kind.items()]


def _coverage_signatures(tracer: Tracer, roots: np.ndarray) -> np.ndarray:
    """Per class, the sum (wrapping around) of a random 64-bit key of every member record
    that covers it, once per index it covers: two classes share a signature iff the same
    records cover both equally often (up to ~2^-63 collisions), so each group maps onto every
    member the same way (a ghost module sliced to C keeps some channels' cheap copies and not
    others'). One scatter-add over all member indices, no sort."""
    records = tracer.members
    signature = np.zeros(roots.shape, dtype=np.int64)
    if not records:
        return signature
    keys = np.random.default_rng(0).integers(1, 2**63, size=len(records), dtype=np.int64)
    slots = [np.asarray(r.slots, dtype=np.int64).reshape(-1) for r in records]
    covers = np.repeat(keys, [s.shape[0] for s in slots])
    np.add.at(signature, roots[np.concatenate(slots)], covers)
    return signature


def _add_reason(reasons: list[str], text: str) -> None:
    if text not in reasons:
        reasons.append(text)


def _plain_records(records: list[MemberRecord], slot_group: np.ndarray,
                   slot_channel: np.ndarray, sizes: list[int]) -> np.ndarray:
    """Per record, whether index i is channel i of one group, all of its channels (the common
    case), checked for all records in one pass of array operations."""
    lengths = np.array([len(r.slots) for r in records], dtype=np.int64)
    plain = np.zeros(len(records), dtype=bool)
    full = np.nonzero(lengths)[0]
    if not full.size:
        return plain
    slots = np.concatenate([np.asarray(records[i].slots, dtype=np.int64).reshape(-1)
                            for i in full.tolist()])
    groups, channels = slot_group[slots], slot_channel[slots]
    starts = np.cumsum(lengths[full]) - lengths[full]
    which = np.repeat(np.arange(full.size), lengths[full])
    first = groups[starts]
    fits = (groups == first[which]) & (channels == np.arange(slots.size) - starts[which])
    plain[full] = np.logical_and.reduceat(fits, starts) & \
        (lengths[full] == np.asarray(sizes, dtype=np.int64)[first])
    return plain


_PLAIN_MAP = IndexMap()


def _split_record(record: MemberRecord, slot_group, slot_channel, sizes, members, reasons,
                  tracer: Tracer, *, plain: bool) -> None:
    """Turn one traced member (index -> slot) into one Member per group it touches
    (``plain``: see ``_plain_records``)."""
    view = tracer.view
    users = view.consumers.get(record.initializer, [])
    if len(record.slots) != _axis_length(view, record.initializer, record.axis):
        for gid in np.unique(slot_group[record.slots]).tolist():
            _add_reason(reasons[gid], tracer.note(
                f"'{record.initializer}' axis {record.axis} does not have the "
                f"{len(record.slots)} entries its channels need", "member does not fit"))
        return
    if plain:
        first = int(slot_group[record.slots[0]])
        if len(users) > 1:
            _add_reason(reasons[first], _shared(record.initializer, users, tracer))
        members[first].append(Member(record.initializer, record.axis, record.role, _PLAIN_MAP,
                                     record.node))
        return
    groups_here = slot_group[record.slots]
    channels_here = slot_channel[record.slots]
    for gid in np.unique(groups_here).tolist():
        selected = np.nonzero(groups_here == gid)[0]
        channels = channels_here[selected]
        order = np.lexsort((selected, channels))
        counts = np.bincount(channels, minlength=sizes[gid])
        maps = None
        if counts.min() > 0 and (counts == counts[0]).all():
            maps = _fit_pieces(selected[order].reshape(sizes[gid], int(counts[0])))
        if maps is None:
            _add_reason(reasons[gid], tracer.note(
                f"'{record.initializer}' axis {record.axis} does not map channel by channel "
                f"onto this group", "member does not fit"))
            continue
        if len(users) > 1:
            _add_reason(reasons[gid], _shared(record.initializer, users, tracer))
        members[gid].extend(Member(record.initializer, record.axis, record.role, index_map,
                                   record.node) for index_map in maps)


def _fit_pieces(rows: np.ndarray, *, most: int = 8) -> list[IndexMap] | None:
    """Index maps that together give channel c the indices ``rows[c]``: one when it fits, else
    the longest runs of columns that fit (a fused qkv's q, k and v blocks; a ghost module's
    primary channel and its cheap copies), at most ``most`` of them."""
    whole = IndexMap.fit(rows)
    if whole is not None:
        return [whole]
    pieces: list[IndexMap] = []
    start, width = 0, rows.shape[1]
    while start < width and len(pieces) < most:
        best = IndexMap.fit(rows[:, start:start + 1])
        end = start + 1
        while best is not None and end < width:
            longer = IndexMap.fit(rows[:, start:end + 1])
            if longer is None:
                break
            best, end = longer, end + 1
        if best is None:
            return None
        pieces.append(best)
        start = end
    return pieces if start == width else None


def _shared(initializer: str, users: list, tracer: Tracer) -> str:
    """Left shared after canonicalization: a read from inside a subgraph, or one node reading
    it twice; slicing it for one use would change the other."""
    names = ", ".join(f"'{u.name}'" for u in users[:3])
    return tracer.note(f"initializer '{initializer}' is also read by another node ({names})",
                       "shared initializer")


def _axis_length(view: GraphView, initializer: str, axis: int) -> int | None:
    shape = view.shapes.get(initializer)
    return shape[axis] if shape is not None and axis < len(shape) else None


def _check_shared(members: list[list[Member]], reasons: list[list[str]], tracer: Tracer) -> None:
    """One initializer axis claimed twice with different maps cannot be sliced consistently."""
    claimed: dict[tuple[str, int], list[tuple[int, Member]]] = {}
    for gid, group_members in enumerate(members):
        for member in group_members:
            claimed.setdefault((member.initializer, member.axis), []).append((gid, member))
    for (name, axis), claims in claimed.items():
        nodes = {m.node for _, m in claims}
        if len(nodes) > 1:
            for gid, _ in claims:
                _add_reason(reasons[gid], tracer.note(
                    f"initializer '{name}' axis {axis} is claimed by nodes "
                    f"{', '.join(sorted(nodes))}", "shared initializer"))


def explain(result: Partition, name: str) -> str:
    """Which groups a node, initializer or tensor (a graph input, an activation, any node
    output) belongs to, and why each is or is not prunable. Names are those of the canonical
    graph. A name the graph does not have raises OnnxotoError naming the closest ones (legacy
    exports call weights ``onnx::Conv_193``)."""
    graph = result.view.model.graph
    hits = [g for g in result.groups
            if any(m.initializer == name or m.node == name for m in g.members)]
    node = next((n for n in graph.node if n.name == name), None)
    for tensor in (node.output if node is not None else [name]):
        space = result.spaces.get(tensor)
        if space is not None:
            for gid in np.unique(result.slot_group[space.slots]).tolist():
                if result.groups[gid] not in hits:
                    hits.append(result.groups[gid])
    if not hits:
        names = _explainable_names(result)
        if name in names:
            return f"'{name}' is in no group: no channel space passes through it."
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        hint = f"; closest: {', '.join(close)}" if close else ""
        raise OnnxotoError(f"'{name}' is no node, initializer or tensor of the model{hint} "
                           f"(names as in `onnxoto partition -o partition.json`)")
    lines = []
    for group in sorted(hits, key=lambda g: g.id):
        state = "prunable" if group.prunable else f"NOT prunable: {group.reason}"
        lines.append(f"group {group.id} ({group.size} channels): {state}")
        for m in group.members:
            mark = "*" if name in (m.initializer, m.node) else " "
            lines.append(f" {mark} {m.role:<9} {m.initializer} axis {m.axis} "
                         f"{_describe_map(m.index_map)} (node {m.node})")
    return "\n".join(lines)


def _explainable_names(result: Partition) -> list[str]:
    """Every node name and tensor name of the canonical graph, in graph order."""
    graph = result.view.model.graph
    names = dict.fromkeys(t.name for t in graph.initializer)
    names.update(dict.fromkeys(v.name for v in graph.input))
    for node in graph.node:
        names.update(dict.fromkeys([node.name, *node.input, *node.output]))
    names.update(dict.fromkeys(result.view.constants))
    names.pop("", None)
    return list(names)


def _describe_map(index_map: IndexMap) -> str:
    if index_map == IndexMap():
        return ""
    parts = [f"offset {index_map.offset}"] if index_map.offset else []
    if index_map.block > 1:
        parts.append(f"block {index_map.block}")
    if index_map.stride != 1:
        parts.append(f"stride {index_map.stride}")
    if index_map.step is not None:
        parts.append(f"step {index_map.step}")
    return "[" + ", ".join(parts) + "]"
