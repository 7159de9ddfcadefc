"""What a rule is, and the small helpers rules share.

A rule owns everything onnxoto knows about one op family: which op types and opsets it covers,
how channel spaces flow through the node while tracing (``trace``), and which attributes or
shape constants must change when channels are removed (``rewrite``, used by shrink).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import numpy as np
import onnx

from onnxoto.spaces import Space, Tracer, node_label

if TYPE_CHECKING:
    from collections.abc import Sequence

MAX_OPSET = 25


class Edit(Protocol):
    """What shrink lets a rule do to its node (see shrink.NodeEdit)."""

    def keep(self, tensor: str) -> np.ndarray | None: ...
    def kept_count(self, tensor: str) -> int | None: ...
    def axis(self, tensor: str) -> int | None: ...
    def rank(self, tensor: str) -> int | None: ...
    def const(self, name: str) -> np.ndarray | None: ...
    def set_attr(self, name: str, value) -> None: ...
    def drop_attr(self, name: str) -> None: ...
    def set_input_const(self, index: int, value: np.ndarray) -> None: ...
    def add_input_const(self, index: int, value: np.ndarray) -> None: ...


class Rule:
    """Base rule: subclasses set ``op_types`` and implement ``follow`` (or ``trace``).

    Most ops carry the channels of their first input: ``trace`` opens with that input's space,
    stops when it carries none (nothing to follow), barriers when ``needs_rank`` and the rank
    is unknown, and hands the rest to ``follow``. Rules with another opening (stems, joins,
    Concat) override ``trace`` itself.
    """

    op_types: tuple[str, ...] = ()
    min_opset: int = 1
    max_opset: int = MAX_OPSET
    needs_rank: bool = False

    def trace(self, node: onnx.NodeProto, ctx: Tracer) -> None:
        space = ctx.space(input_at(node, 0))
        if space is None:
            return
        rank = ctx.rank(node.input[0])
        if self.needs_rank and rank is None:
            barrier(node, ctx, "has unknown rank")
            return
        self.follow(node, ctx, space, rank)

    def follow(self, node: onnx.NodeProto, ctx: Tracer, space: Space, rank: int | None) -> None:
        """Map ``space`` (the channels of input 0, of rank ``rank``) through the node."""
        raise NotImplementedError

    def rewrite(self, node: onnx.NodeProto, edit: Edit) -> None:
        """Fix attributes/constants after channels were removed. Default: nothing to fix."""


def attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def barrier(node: onnx.NodeProto, ctx: Tracer, why: str) -> None:
    """Stop every channel space at this node: the groups touching it become non-prunable."""
    ctx.taint_inputs(node, f"{node_label(node)} {why}")


def input_at(node: onnx.NodeProto, index: int) -> str:
    return node.input[index] if len(node.input) > index else ""


def ints_from(node: onnx.NodeProto, ctx: Tracer, attr: str, input_index: int) -> list[int] | None:
    """An int list given as an attribute (old opsets) or a constant input (new ones)."""
    value = attrs(node).get(attr)
    if value is not None:
        return [int(v) for v in value]
    name = input_at(node, input_index)
    if not name:
        return None
    const = ctx.const(name)
    return None if const is None else [int(v) for v in np.asarray(const).reshape(-1)]


def normalize_axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def aligned_axis(space: Space, in_rank: int, out_rank: int) -> int:
    """Channel axis in the output's coordinates after numpy-style broadcasting."""
    return space.axis + (out_rank - in_rank)


def broadcast_extent(shape: Sequence, out_axis: int, out_rank: int) -> tuple[int, object] | None:
    """(own axis, size) of a broadcast operand along the output's ``out_axis``; None if absent.
    The size may be a symbol or None (dynamic), which matches neither 1 nor a channel count."""
    own = out_axis - (out_rank - len(shape))
    if own < 0:
        return None
    return own, shape[own]


def pass_through(node: onnx.NodeProto, ctx: Tracer, space: Space, *,
                 dirt: str | None = None) -> None:
    """Output 0 carries ``space`` unchanged; ``dirt`` says why zero becomes non-zero."""
    if dirt:
        space = space.with_dirt(ctx.reason(f"{node_label(node)} {dirt}"))
    ctx.set_space(node.output[0], space)
