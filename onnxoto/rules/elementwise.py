"""Per-channel ops: activations, pools, and the joins (Add, Mul, ...) that tie spaces together."""

from __future__ import annotations

import numpy as np

from onnxoto.rules.base import (
    Rule,
    aligned_axis,
    attrs,
    barrier,
    broadcast_extent,
    input_at,
    pass_through,
)
from onnxoto.spaces import Space, Tracer, node_label


class ZeroPreservingRule(Rule):
    """Elementwise ops with f(0) = 0: a zero channel stays zero, channels never mix."""

    op_types = (
        "Relu", "LeakyRelu", "Tanh", "Gelu", "HardSwish", "Dropout", "Identity", "Cast",
        "Elu", "Selu", "Celu", "Erf", "Neg", "Abs", "Sin", "Sign", "Floor", "Ceil", "Round",
        "Softsign", "Mish", "ThresholdedRelu", "Sqrt", "Atan", "Asinh", "Tan", "Sinh",
    )

    def follow(self, node, ctx, space, rank):
        pass_through(node, ctx, space)


class CastLikeRule(Rule):
    """CastLike(x, like) is Cast to ``like``'s element type: x's channels pass through, and
    ``like`` lends only its type, so its channels are not consumed (removing them changes
    nothing here). The canonical pass folds CastLike of constants; this covers the rest."""

    op_types = ("CastLike",)

    def trace(self, node, ctx):
        ctx.space(input_at(node, 1))  # read for its type only: handled, not consumed
        super().trace(node, ctx)

    def follow(self, node, ctx, space, rank):
        pass_through(node, ctx, space)


_VALUE_AT_ZERO = {
    "Sigmoid": "0.5",
    "HardSigmoid": "beta (0.5 by default)",
    "Exp": "1",
    "Softplus": "log(2)",
    "Cos": "1",
    "Cosh": "1",
    "Log": "-inf",
    "Reciprocal": "inf",
}


class NonZeroAtZeroRule(Rule):
    """Elementwise ops with f(0) != 0: channels pass, but a zeroed one carries a constant.

    The constant is harmless if the channel is multiplied by zero later (an SE gate); if a
    consumer reads it, the group becomes non-prunable (bias folding comes later).
    """

    op_types = tuple(_VALUE_AT_ZERO)

    def follow(self, node, ctx, space, rank):
        pass_through(node, ctx, space, dirt=f"maps 0 to {_VALUE_AT_ZERO[node.op_type]}")


class ClipRule(Rule):
    """Clip keeps zero at zero iff min <= 0 <= max (ReLU6 does)."""

    op_types = ("Clip",)

    def follow(self, node, ctx, space, rank):
        a = attrs(node)
        low = _scalar(ctx, input_at(node, 1), a.get("min", -np.inf))
        high = _scalar(ctx, input_at(node, 2), a.get("max", np.inf))
        if low is None or high is None:
            barrier(node, ctx, "has run-time clip bounds")
            return
        dirt = None if low <= 0 <= high else f"clips 0 into [{low}, {high}]"
        pass_through(node, ctx, space, dirt=dirt)


def _scalar(ctx: Tracer, name: str, default: float) -> float | None:
    if not name:
        return float(default)
    value = ctx.const(name)
    return None if value is None else float(np.asarray(value).reshape(-1)[0])


class PReluRule(Rule):
    """PRelu(0) = 0; a per-channel slope is deleted with its channel (attached)."""

    op_types = ("PRelu",)

    def follow(self, node, ctx, space, rank):
        out_rank, slope = ctx.rank(node.output[0]), node.input[1]
        shape = ctx.shape(slope)
        if out_rank is None or shape is None:
            barrier(node, ctx, "has unknown shapes")
            return
        extent = broadcast_extent(shape, space.axis, out_rank)
        if extent is not None and extent[1] == space.size and space.size > 1:
            if not ctx.const_member(slope, extent[0], "attached", space.slots, node):
                barrier(node, ctx, "has a run-time per-channel slope")
                return
        elif extent is not None and extent[1] not in (1, space.size):
            barrier(node, ctx, "has a slope that does not broadcast over channels")
            return
        ctx.set_space(node.output[0], space)


class PoolRule(Rule):
    """Pools work channel by channel (axis 1) and pool zeros to zero."""

    op_types = (
        "MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool",
    )

    def follow(self, node, ctx, space, rank):
        if space.axis != 1:
            barrier(node, ctx, "pools a tensor whose channels are not on axis 1")
            return
        ctx.set_space(node.output[0], space)


# How each join combines zero channels, and what a broadcast constant operand must satisfy.
_ZERO_IF_EITHER = {"Mul"}
_CONSTANT_OK = {
    "Add": lambda c: bool(np.all(c == 0)),
    "Sub": lambda c: bool(np.all(c == 0)),
    "Sum": lambda c: bool(np.all(c == 0)),
    "Mean": lambda c: bool(np.all(c == 0)),
    "Max": lambda c: bool(np.all(c <= 0)),
    "Min": lambda c: bool(np.all(c >= 0)),
    "Mul": lambda c: bool(np.all(np.isfinite(c))),
    "Div": lambda c: bool(np.all(c != 0)),
}


class JoinRule(Rule):
    """Elementwise ops over several tensors: channels at the same index are one channel.

    Run-time operands in channel spaces are unioned. A constant operand that varies along the
    channel axis is a member (a producer, like a bias or layer scale; attached for a divisor);
    one that broadcasts over channels must keep zero at zero, else the output is not zero.
    """

    op_types = tuple(_CONSTANT_OK)

    def trace(self, node, ctx):
        names = [n for n in node.input if n]
        if not any(ctx.space(n) for n in names):
            return
        out_rank = ctx.rank(node.output[0])
        if out_rank is None or any(ctx.rank(n) is None for n in names):
            barrier(node, ctx, "has operands of unknown rank")
            return
        axes = {aligned_axis(ctx.space(n), ctx.rank(n), out_rank) for n in names if ctx.space(n)}
        if len(axes) > 1:
            barrier(node, ctx, "joins channels that sit on different axes")
            return
        axis = axes.pop()
        result = self._join_spaces(node, ctx, names, axis)
        if result is None:
            return
        for position, name in enumerate(names):
            if ctx.space(name) is None:
                result = self._join_other(node, ctx, name, position, result, out_rank)
                if result is None:
                    return
        ctx.set_space(node.output[0], result)

    def _join_spaces(self, node, ctx: Tracer, names, axis: int) -> Space | None:
        tracked = [ctx.space(n).on_axis(axis) for n in names if ctx.space(n)]
        if len({s.size for s in tracked}) > 1:
            barrier(node, ctx, "joins channel spaces of different sizes (broadcast over "
                               "channels)")
            return None
        if node.op_type == "Div" and len(tracked) > 1:
            barrier(node, ctx, "divides by a tensor of the same channels (0/0)")
            return None
        zero_if = "either" if node.op_type in _ZERO_IF_EITHER else "both"
        result = tracked[0]
        for other in tracked[1:]:
            result = ctx.join(result, other, zero_if=zero_if)
        return result

    def _join_other(self, node, ctx: Tracer, name: str, position: int, result: Space,
                    out_rank: int) -> Space | None:
        shape = ctx.shape(name)
        value = ctx.const(name)
        extent = None if shape is None else broadcast_extent(shape, result.axis, out_rank)
        broadcast = shape is not None and (extent is None or extent[1] == 1)
        label = node_label(node)
        if value is not None and node.op_type == "Div" and position == 0:
            barrier(node, ctx, "divides a constant by channels")
            return None
        if value is not None and broadcast:
            if _CONSTANT_OK[node.op_type](np.asarray(value)):
                return result
            return result.with_dirt(ctx.reason(f"{label} applies a constant that moves 0"))
        if value is not None and extent is not None and extent[1] == result.size:
            role = "attached" if node.op_type == "Div" else "producer"
            if not ctx.const_member(name, extent[0], role, result.slots, node):
                barrier(node, ctx, f"uses constant '{name}' computed by other nodes")
                return None
            if node.op_type == "Mul":
                return result.cleaned()
            return result
        if value is None and broadcast:
            if node.op_type == "Mul":
                return result
            return result.with_dirt(ctx.reason(f"{label} adds a run-time tensor that is not "
                                               f"zero"))
        barrier(node, ctx, f"combines the channels with '{name}', whose channels onnxoto does "
                           f"not follow")
        return None
