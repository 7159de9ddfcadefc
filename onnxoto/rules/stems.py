"""Stems: ops whose weights create a new channel space (Conv, ConvTranspose, Gemm, MatMul)."""

from __future__ import annotations

import onnx

from onnxoto.rules.base import Edit, Rule, attrs, barrier, input_at
from onnxoto.spaces import Space, Tracer, node_label


def _consume(node: onnx.NodeProto, ctx: Tracer, data: str, axis: int, weight: str,
             weight_axis: int) -> None:
    """Record ``weight``'s ``weight_axis`` as the consumer of ``data``'s channels on ``axis``."""
    space = ctx.space(data)
    if space is None:
        return
    if space.axis != axis:
        ctx.taint(space, f"{node_label(node)} reads axis {axis} but the channels are on axis "
                         f"{space.axis}")
        return
    ctx.consume(space, node)
    ctx.const_member(weight, weight_axis, "consumer", space.slots, node)


def _stem_output(node: onnx.NodeProto, ctx: Tracer, size: int, axis: int,
                 weights: list[tuple[str, int]]) -> Space:
    space = ctx.new_space(size, axis)
    for name, weight_axis in weights:
        if name:
            ctx.const_member(name, weight_axis, "producer", space.slots, node)
    ctx.set_space(node.output[0], space)
    return space


class ConvRule(Rule):
    """Conv: plain (group 1) is a stem; depthwise (group == C_in) keeps its input's channels.

    A depthwise conv with multiplier k maps input channel c to outputs [c*k, c*k+k).
    General grouped convs tie channels inside each conv group: not pruned yet.
    """

    op_types = ("Conv",)

    def trace(self, node, ctx):
        weight, bias = node.input[1], input_at(node, 2)
        w = ctx.const(weight)
        if w is None:
            barrier(node, ctx, "has a weight computed at run time")
            return
        group = int(attrs(node).get("group", 1))
        c_out, c_in_per_group = int(w.shape[0]), int(w.shape[1])
        if group == 1:
            _consume(node, ctx, node.input[0], 1, weight, 1)
            _stem_output(node, ctx, c_out, 1, [(weight, 0), (bias, 0)])
            return
        if c_in_per_group == 1 and c_out % group == 0:
            self._depthwise(node, ctx, weight, bias, c_out // group)
            return
        barrier(node, ctx, f"is a grouped conv (group={group}); only group=1 and depthwise "
                           f"convs are pruned so far")
        _stem_output_tainted(node, ctx, c_out, f"{node_label(node)} is a grouped conv")

    @staticmethod
    def _depthwise(node, ctx: Tracer, weight: str, bias: str, multiplier: int) -> None:
        space = ctx.space(node.input[0])
        if space is None:
            return
        if space.axis != 1:
            barrier(node, ctx, "reads channels that are not on axis 1")
            return
        out = space.repeated(multiplier, 1)
        ctx.const_member(weight, 0, "attached", out.slots, node)
        if bias:
            ctx.const_member(bias, 0, "producer", out.slots, node)
        ctx.set_space(node.output[0], out)

    def rewrite(self, node, edit: Edit):
        group = int(attrs(node).get("group", 1))
        if group == 1:
            return
        kept = edit.kept_count(node.input[0])
        if kept is not None:
            edit.set_attr("group", kept)


def _stem_output_tainted(node, ctx: Tracer, size: int, why: str) -> None:
    ctx.set_space(node.output[0], ctx.new_space(size, 1, taint=why))


class ConvTransposeRule(Rule):
    """ConvTranspose: weight is (C_in, C_out/group, k...); group 1 is a stem."""

    op_types = ("ConvTranspose",)

    def trace(self, node, ctx):
        weight, bias = node.input[1], input_at(node, 2)
        w = ctx.const(weight)
        if w is None:
            barrier(node, ctx, "has a weight computed at run time")
            return
        if int(attrs(node).get("group", 1)) != 1:
            barrier(node, ctx, "is a grouped ConvTranspose; not pruned so far")
            return
        if attrs(node).get("output_shape"):
            barrier(node, ctx, "sets output_shape explicitly")
            return
        _consume(node, ctx, node.input[0], 1, weight, 0)
        _stem_output(node, ctx, int(w.shape[1]), 1, [(weight, 1), (bias, 0)])


class GemmRule(Rule):
    """Gemm: Y = alpha*A*B + beta*C; output features are B's columns (rows with transB=1)."""

    op_types = ("Gemm",)

    def trace(self, node, ctx):
        a = attrs(node)
        weight, bias = node.input[1], input_at(node, 2)
        w = ctx.const(weight)
        if w is None or int(a.get("transA", 0)):
            barrier(node, ctx, "has a run-time B operand or transA=1")
            return
        trans_b = int(a.get("transB", 0))
        out_axis, in_axis = (0, 1) if trans_b else (1, 0)
        _consume(node, ctx, node.input[0], 1, weight, in_axis)
        weights = [(weight, out_axis)]
        c = ctx.const(bias) if bias else None
        features = int(w.shape[out_axis])
        if bias and c is None:
            barrier(node, ctx, "has a run-time bias C")
            return
        if c is not None and c.size == features and c.shape[-1] == features and features > 1:
            weights.append((bias, c.ndim - 1))
        elif c is not None and c.size > 1:
            barrier(node, ctx, "has a bias C that is not one value per feature")
            return
        space = _stem_output(node, ctx, features, 1, weights)
        if c is not None and c.size == 1 and float(c.reshape(-1)[0]) * a.get("beta", 1.0) != 0:
            ctx.set_space(node.output[0], space.with_dirt(
                ctx.reason(f"{node_label(node)} adds the same bias to every feature")))


class MatMulRule(Rule):
    """MatMul with a constant 2-D right operand is a Linear layer: its last axis is a stem.

    MatMul of two run-time tensors (attention scores) is not pruned yet.
    """

    op_types = ("MatMul",)

    def trace(self, node, ctx):
        weight = node.input[1]
        w = ctx.const(weight)
        rank = ctx.rank(node.input[0])
        if w is None or w.ndim != 2 or rank is None or rank < 2:
            barrier(node, ctx, "multiplies two run-time tensors (attention?); heads are not "
                               "pruned so far")
            return
        if ctx.view.const_source(weight) is None:
            barrier(node, ctx, "has a constant operand that is computed by other nodes")
            return
        _consume(node, ctx, node.input[0], rank - 1, weight, 0)
        _stem_output(node, ctx, int(w.shape[1]), rank - 1, [(weight, 1)])
