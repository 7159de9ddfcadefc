"""Stems: ops whose weights create a new channel space (Conv, ConvTranspose, Gemm, MatMul)."""

from __future__ import annotations

import numpy as np
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
        _producer(node, ctx, name, weight_axis, space)
    ctx.set_space(node.output[0], space)
    return space


def _producer(node: onnx.NodeProto, ctx: Tracer, name: str, axis: int, space: Space) -> None:
    """Record a producer member; one that is no initializer (a bias computed at run time)
    cannot be zeroed or sliced, so its channels are kept."""
    if name and not ctx.const_member(name, axis, "producer", space.slots, node):
        ctx.taint(space, f"{node_label(node)} reads '{name}' computed at run time; its "
                         f"channels are kept")


class ConvRule(Rule):
    """Conv: plain (group 1) is a stem; a grouped conv offers one of two exact partitions.

    Whole conv groups: conv group g reads only input channels [g*C_in/G, (g+1)*C_in/G) and
    writes only outputs [g*C_out/G, (g+1)*C_out/G): with those inputs zero and its bias zero,
    its outputs are zero. So a conv group is one channel, input and output side together, and
    removing it lowers ``group`` (depthwise: C_in/G = 1, a channel with its k = C_out/G outputs).

    Channels aligned across conv groups: input j of every conv group meets only weight column
    j (weight axis 1), so those G inputs are one channel consumed by that column; output k of
    every conv group is a new channel (weight row k of each group and its bias are producers);
    ``group`` stays. With no channels coming in, the outputs are tied this way, so the conv
    groups stay equal.

    The two overlap (a weight entry would sit in two groups), so each conv takes one, from the
    graph's structure (sizes would flip the choice once shrinking changes them): aligned when
    its input is already tied across conv groups (read after a radix split) or when its output
    is viewed as (r, C_out/r) slices with r dividing G (ResNeSt's radix conv, whose slices are
    summed and weighed channel by channel); whole conv groups otherwise (ResNeXt, RegNet,
    depthwise).
    """

    op_types = ("Conv",)

    def trace(self, node, ctx):
        weight, bias = node.input[1], input_at(node, 2)
        w = ctx.const_shape(weight)
        if w is None:
            barrier(node, ctx, "has a weight computed at run time")
            return
        group = int(attrs(node).get("group", 1))
        c_out, c_in_per_group = int(w[0]), int(w[1])
        if group == 1:
            _consume(node, ctx, node.input[0], 1, weight, 1)
            _stem_output(node, ctx, c_out, 1, [(weight, 0), (bias, 0)])
            return
        if c_out % group:
            barrier(node, ctx, f"has {c_out} outputs, not a multiple of group={group}")
            return
        space = ctx.space(node.input[0])
        if space is None:
            _aligned_output(node, ctx, c_out, group)
            return
        if space.axis != 1 or space.size != group * c_in_per_group:
            barrier(node, ctx, "reads channels that are not its group x C_in/group inputs on "
                               "axis 1")
            return
        grid = space.slots.reshape(group, c_in_per_group)
        if c_in_per_group > 1 and (_aligns_across_groups(ctx, grid) or
                                   _viewed_in_slices(ctx, node, group)):
            ctx.forest.union(np.tile(grid[0], group), grid.reshape(-1))
            ctx.consume(space, node)
            if not ctx.const_member(weight, 1, "consumer", grid[0], node):
                barrier(node, ctx, "has a weight computed by other nodes")
                return
            _aligned_output(node, ctx, c_out, group)
            return
        ctx.forest.union(np.repeat(grid[:, 0], c_in_per_group), grid.reshape(-1))
        per_group = c_out // group
        dirt = space.dirt.reshape(group, c_in_per_group).max(axis=1)
        out = Space(1, np.repeat(grid[:, 0], per_group), np.repeat(dirt, per_group))
        if not ctx.const_member(weight, 0, "attached", out.slots, node):
            barrier(node, ctx, "has a weight computed by other nodes")
            return
        _producer(node, ctx, bias, 0, out)
        ctx.set_space(node.output[0], out)

    def rewrite(self, node, edit: Edit):
        group = int(attrs(node).get("group", 1))
        keep = edit.keep(node.input[0])
        if group == 1 or keep is None:
            return
        edit.set_attr("group", int(keep.reshape(group, -1).any(axis=1).sum()))


def _aligns_across_groups(ctx: Tracer, grid: np.ndarray) -> bool:
    """Are the channels a grouped conv reads (``grid``: conv group x input) already tied
    across conv groups, input j of every conv group being one channel?"""
    roots = ctx.forest.roots()[grid]
    return bool((roots == roots[:1]).all())


def _viewed_in_slices(ctx: Tracer, node: onnx.NodeProto, group: int, *, depth: int = 4) -> bool:
    """Is the conv's output, through up to ``depth`` nodes that keep its shape (norms,
    activations), read as a (r, C_out/r) view on axis 1 with r > 1 dividing ``group``? Judged
    from shapes alone, which shrinking keeps (r stays, C_out/r shrinks)."""
    shape = ctx.shape(node.output[0])
    if shape is None or len(shape) < 2 or not isinstance(shape[1], int):
        return False
    views = {(*shape[:1], r, shape[1] // r, *shape[2:]) for r in range(2, group + 1)
             if group % r == 0 and shape[1] % r == 0}
    frontier = [node.output[0]]
    for _ in range(depth):
        following = []
        for tensor in frontier:
            for user in ctx.view.consumers.get(tensor, []):
                out = ctx.shape(user.output[0]) if user.output else None
                if out is not None and tuple(out) in views:
                    return True
                if out is not None and tuple(out) == tuple(shape):
                    following.append(user.output[0])
        frontier = following
    return False


def _aligned_output(node: onnx.NodeProto, ctx: Tracer, c_out: int, group: int) -> None:
    """New channels, output k of every conv group tied into one."""
    tied = ctx.new_space(c_out // group, 1)
    out = Space(1, np.tile(tied.slots, group), np.tile(tied.dirt, group))
    for name in (node.input[1], input_at(node, 2)):
        _producer(node, ctx, name, 0, out)
    ctx.set_space(node.output[0], out)


class ConvTransposeRule(Rule):
    """ConvTranspose: weight is (C_in, C_out/group, k...); group 1 is a stem."""

    op_types = ("ConvTranspose",)

    def trace(self, node, ctx):
        weight, bias = node.input[1], input_at(node, 2)
        w = ctx.const_shape(weight)
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
        _stem_output(node, ctx, int(w[1]), 1, [(weight, 1), (bias, 0)])


class GemmRule(Rule):
    """Gemm: Y = alpha*A*B + beta*C; output features are B's columns (rows with transB=1)."""

    op_types = ("Gemm",)

    def trace(self, node, ctx):
        a = attrs(node)
        weight, bias = node.input[1], input_at(node, 2)
        w = ctx.const_shape(weight)
        if w is None or int(a.get("transA", 0)):
            barrier(node, ctx, "has a run-time B operand or transA=1")
            return
        trans_b = int(a.get("transB", 0))
        out_axis, in_axis = (0, 1) if trans_b else (1, 0)
        _consume(node, ctx, node.input[0], 1, weight, in_axis)
        weights = [(weight, out_axis)]
        c = ctx.const(bias) if bias else None
        features = int(w[out_axis])
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

    MatMul of two run-time tensors (attention's q @ k^T and attn @ v) carries channels that sit
    on a batch axis (heads), on the rows of the left operand or the columns of the right: each
    output entry is zero when its head (row, column) is zero in either operand, so operands
    that both carry the axis are joined. Channels on the contracted axis stop here.
    """

    op_types = ("MatMul",)

    def trace(self, node, ctx):
        weight = node.input[1]
        w = ctx.const_shape(weight)
        rank = ctx.rank(node.input[0])
        if w is None:
            self._product(node, ctx)
            return
        if len(w) != 2 or rank is None or rank < 2:
            barrier(node, ctx, "has a constant operand that is not a 2-D weight")
            return
        if ctx.view.const_source(weight) is None:
            barrier(node, ctx, "has a constant operand that is computed by other nodes")
            return
        _consume(node, ctx, node.input[0], rank - 1, weight, 0)
        _stem_output(node, ctx, int(w[1]), rank - 1, [(weight, 1)])

    @staticmethod
    def _product(node, ctx: Tracer) -> None:
        spaces = [ctx.space(name) for name in node.input[:2]]
        if not any(spaces):
            return
        ranks = [ctx.rank(name) for name in node.input[:2]]
        out_rank = ctx.rank(node.output[0])
        if out_rank is None or any(r is None or r < 2 for r in ranks):
            barrier(node, ctx, "multiplies tensors of unknown or vector rank")
            return
        placed = []
        for side, (space, rank) in enumerate(zip(spaces, ranks, strict=True)):
            if space is None:
                continue
            if space.axis == rank - 1 - side:
                barrier(node, ctx, "sums over the channel axis (a product of two run-time "
                                   "tensors)")
                return
            placed.append(space.on_axis(space.axis + out_rank - rank))
        if len(placed) == 2:
            a, b = placed
            if a.axis != b.axis or a.size != b.size or a.axis >= out_rank - 2:
                barrier(node, ctx, "multiplies channels that do not line up (different axes "
                                   "or sizes)")
                return
            placed = [ctx.join(a, b, zero_if="either")]
        ctx.set_space(node.output[0], placed[0])
