"""Channel spaces: which slot (a future group channel) sits at each index of a channel axis.

A *slot* is one channel created by a stem. Rules move slot arrays through the graph (copy,
concatenate, repeat, slice) and *union* slots that must be deleted together (the two sides of an
Add). Unions are recorded while tracing and resolved once, with array operations, when groups
are formed at the end.

Two kinds of bad news are tracked separately:
- a *taint* makes a slot's group non-prunable (a LayerNorm counts its channels, an unknown op);
- *dirt* marks indices that are not exactly zero when their group's producers are zero (after a
  Sigmoid, 0 becomes 0.5). Dirt is harmless until the channel is read by a consumer, which taints.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from onnxoto.graph import GraphView

CLEAN = 0


@dataclass(frozen=True)
class Space:
    """Slots along ``axis`` of one tensor; ``dirt[i]`` is 0 or the id of why index i is not 0."""

    axis: int
    slots: np.ndarray
    dirt: np.ndarray

    @property
    def size(self) -> int:
        return int(self.slots.shape[0])

    def on_axis(self, axis: int) -> Space:
        return Space(axis, self.slots, self.dirt)

    def with_dirt(self, reason_id: int) -> Space:
        return Space(self.axis, self.slots, np.full_like(self.dirt, reason_id))

    def cleaned(self) -> Space:
        return Space(self.axis, self.slots, np.zeros_like(self.dirt))

    def sliced(self, index: np.ndarray | slice, axis: int | None = None) -> Space:
        return Space(self.axis if axis is None else axis, self.slots[index], self.dirt[index])

    def repeated(self, times: int, axis: int) -> Space:
        """Each channel spread over ``times`` consecutive indices (Flatten of C x H x W)."""
        return Space(axis, np.repeat(self.slots, times), np.repeat(self.dirt, times))


@dataclass
class MemberRecord:
    """An initializer axis whose index i belongs to ``slots[i]`` (set while tracing)."""

    initializer: str
    axis: int
    role: str
    slots: np.ndarray
    node: str


class SlotForest:
    """Union-find over slot ids, resolved in bulk.

    ``union`` only records index pairs; ``roots`` resolves all recorded pairs at once with
    array operations (``components``). A Python ``find`` per slot pair cost most of a
    ResNet-50 partition. A class's root is its smallest slot.
    """

    def __init__(self) -> None:
        self.size = 0
        self._roots = np.zeros(0, dtype=np.int64)
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []

    def new(self, count: int) -> np.ndarray:
        start = self.size
        self.size += count
        return np.arange(start, start + count, dtype=np.int64)

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        """Slots ``a[i]`` and ``b[i]`` are deleted together, for every i."""
        a = np.asarray(a, dtype=np.int64).reshape(-1)
        b = np.asarray(b, dtype=np.int64).reshape(-1)
        if a.shape != b.shape:
            raise ValueError(f"union of {a.shape[0]} slots with {b.shape[0]}")
        differ = a != b
        if differ.any():
            self._pending.append((a[differ], b[differ]))

    def find(self, slot: int) -> int:
        return int(self.roots()[slot])

    def roots(self) -> np.ndarray:
        """The root of every slot (read-only)."""
        if self._roots.shape[0] < self.size or self._pending:
            labels = np.concatenate([self._roots, np.arange(self._roots.shape[0], self.size,
                                                            dtype=np.int64)])
            pairs = self._pending
            self._pending = []
            if pairs:
                labels = components(labels, np.concatenate([a for a, _ in pairs]),
                                    np.concatenate([b for _, b in pairs]))
            labels.flags.writeable = False
            self._roots = labels
        return self._roots


def components(labels: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``labels`` (each slot's root, a root being the smallest slot of its class) after also
    joining ``a[i]`` with ``b[i]``: roots hook onto the smaller root across every pair at once,
    then pointer jumping flattens the trees; a few rounds connect everything."""
    parent = labels.copy()
    while True:
        ra, rb = parent[a], parent[b]
        differ = ra != rb
        if not differ.any():
            return parent
        a, b, ra, rb = a[differ], b[differ], ra[differ], rb[differ]
        np.minimum.at(parent, np.maximum(ra, rb), np.minimum(ra, rb))
        while True:
            jumped = parent[parent]
            if np.array_equal(jumped, parent):
                break
            parent = jumped


@dataclass
class Tracer:
    """What rules see while tracing: graph facts in, spaces/unions/members/taints out."""

    view: GraphView
    forest: SlotForest = field(default_factory=SlotForest)
    spaces: dict[str, Space] = field(default_factory=dict)
    members: list[MemberRecord] = field(default_factory=list)
    births: list[np.ndarray] = field(default_factory=list)
    taints: list[tuple[np.ndarray, int]] = field(default_factory=list)
    reasons: list[str] = field(default_factory=lambda: [""])
    read: set[str] = field(default_factory=set)
    kinds: dict[str, str] = field(default_factory=dict)
    _reason_ids: dict[str, int] = field(default_factory=dict)

    # --- reasons -------------------------------------------------------------------------
    def reason(self, text: str, kind: str | None = None) -> int:
        """Intern a human-readable reason; returns its id (never 0, which means clean).

        ``kind`` groups reasons in the summary ("graph output", "subgraph"...); defaults
        to the op type of the node the text starts with (see ``node_label``).
        """
        rid = self._reason_ids.get(text)
        if rid is None:
            rid = len(self.reasons)
            self.reasons.append(text)
            self._reason_ids[text] = rid
            self.kinds[text] = kind or kind_of(text)
        return rid

    def note(self, text: str, kind: str) -> str:
        """Register a reason made outside tracing (when groups are formed); returns the text."""
        self.reason(text, kind)
        return text

    # --- spaces --------------------------------------------------------------------------
    def space(self, tensor: str) -> Space | None:
        """The channels of ``tensor`` (None if it carries none); marks the input as handled."""
        if not tensor:
            return None
        self.read.add(tensor)
        return self.spaces.get(tensor)

    def set_space(self, tensor: str, space: Space | None) -> None:
        if space is not None and tensor:
            self.spaces[tensor] = space

    def new_space(self, size: int, axis: int, *, taint: str | None = None) -> Space:
        """Fresh channels (a stem's outputs); tainted at birth when ``taint`` says why."""
        slots = self.forest.new(size)
        self.births.append(slots)
        if taint:
            self.taints.append((slots, self.reason(taint)))
        return Space(axis, slots, np.zeros(size, dtype=np.int32))

    def join(self, a: Space, b: Space, *, zero_if: str = "both") -> Space:
        """Union two equally long spaces index by index (both sides are deleted together).

        ``zero_if="both"`` (Add, Max...): the result is zero only where both sides are;
        ``"either"`` (Mul): zero where either side is.
        """
        self.forest.union(a.slots, b.slots)
        if zero_if == "either":
            dirt = np.where((a.dirt == CLEAN) | (b.dirt == CLEAN), CLEAN, a.dirt)
        else:
            dirt = np.where(a.dirt != CLEAN, a.dirt, b.dirt)
        return Space(a.axis, a.slots, dirt.astype(np.int32))

    # --- taints --------------------------------------------------------------------------
    def taint(self, space: Space | None, text: str, kind: str | None = None) -> None:
        if space is not None and space.size:
            self.taints.append((space.slots, self.reason(text, kind)))

    def taint_inputs(self, node, text: str, kind: str | None = None) -> None:
        for name in node.input:
            self.taint(self.space(name), text, kind)

    def consume(self, space: Space, node) -> None:
        """A consumer reads these channels: any that are not exactly zero taint their group."""
        dirty = space.dirt != CLEAN
        if not dirty.any():
            return
        for rid in np.unique(space.dirt[dirty]).tolist():
            where = space.dirt == rid
            text = f"{self.reasons[rid]}, and {node_label(node)} reads that value"
            kind = self.kinds[self.reasons[rid]]
            self.taints.append((space.slots[where], self.reason(text, kind)))

    # --- members -------------------------------------------------------------------------
    def member(self, initializer: str, axis: int, role: str, slots: np.ndarray, node) -> None:
        self.members.append(MemberRecord(initializer, axis, role, np.asarray(slots), node.name))

    def const_member(
        self, tensor: str, tensor_axis: int, role: str, slots: np.ndarray, node
    ) -> bool:
        """Record a member for a constant input, looking through Transpose/Identity of weights.

        Returns False (and records nothing) when the tensor is not a traceable constant.
        """
        source = self.view.const_source(tensor)
        if source is None:
            return False
        initializer, perm = source
        self.member(initializer, perm[tensor_axis], role, slots, node)
        return True

    # --- graph facts ---------------------------------------------------------------------
    def const(self, name: str) -> np.ndarray | None:
        return self.view.const(name)

    def const_shape(self, name: str) -> tuple[int, ...] | None:
        """The shape of a tensor known before run time (None for any other): a rule that needs
        only a weight's shape should not decode the weight."""
        return tuple(self.view.shapes[name]) if name and name in self.view.constants else None

    def shape(self, name: str) -> tuple[int | None, ...] | None:
        return self.view.shape(name)

    def rank(self, name: str) -> int | None:
        return self.view.rank(name)


def node_label(node) -> str:
    """How reasons name a node: op type and name, so a person can find it in Netron."""
    return f"{node.op_type} node '{node.name}'"


_LABEL = re.compile(r"(\w+) node '")


def kind_of(text: str) -> str:
    """A reason's kind when none was given: the op type of the node it opens with."""
    match = _LABEL.match(text)
    return match.group(1) if match else "other"
