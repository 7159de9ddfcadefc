"""Normalizations and reductions: per-channel ones attach, ones over the channel axis stop."""

from __future__ import annotations

import numpy as np

from onnxoto.rules.base import Rule, attrs, barrier, ints_from, normalize_axis, pass_through
from onnxoto.spaces import node_label


class PerChannelNormRule(Rule):
    """BatchNormalization / InstanceNormalization scale each channel on its own (axis 1).

    Scale and bias are producers: with both zero the output channel is exactly zero whatever
    came in. BatchNorm's running mean and variance are attached (deleted, need not be zero).
    """

    op_types = ("BatchNormalization", "InstanceNormalization")

    def follow(self, node, ctx, space, rank):
        if space.axis != 1:
            barrier(node, ctx, "normalizes axis 1 but the channels are elsewhere")
            return
        roles = ["producer", "producer", "attached", "attached"]
        for name, role in zip(node.input[1:], roles, strict=False):
            if name and not ctx.const_member(name, 0, role, space.slots, node):
                barrier(node, ctx, f"has run-time parameter '{name}'")
                return
        ctx.set_space(node.output[0], space.cleaned())


class ChannelMixingNormRule(Rule):
    """LayerNormalization over the channel axis counts the channels in its statistics, so
    deleting a zero channel changes every other channel: never zero-invariant. Over other axes
    a zero channel becomes its bias, which is not zero.

    The normalized axis stays a (kept) space even where no channels came in (a post-LN
    encoder's embedding LayerNorm): every projection added to the stream later joins it, so
    the stream is one kept group whose reason names the LayerNorm, rather than one group per
    residual Add that cannot say why.
    """

    op_types = ("LayerNormalization", "LpNormalization", "MeanVarianceNormalization")

    def trace(self, node, ctx):
        rank = ctx.rank(node.input[0])
        if ctx.space(node.input[0]) is not None or node.op_type != "LayerNormalization" or \
                rank is None:
            super().trace(node, ctx)
            return
        first = normalize_axis(int(attrs(node).get("axis", -1)), rank)
        size = (ctx.shape(node.input[0]) or [None])[-1]
        if first != rank - 1 or not isinstance(size, int):
            return
        self.follow(node, ctx, ctx.new_space(size, first), rank)

    def follow(self, node, ctx, space, rank):
        if rank is None or node.op_type != "LayerNormalization":
            barrier(node, ctx, "normalizes across channels (its statistics count them)")
            return
        first = normalize_axis(int(attrs(node).get("axis", -1)), rank)
        if space.axis >= first:
            ctx.taint(space, f"{node_label(node)} normalizes over the channel axis (its "
                             f"statistics count the channels), so the residual stream it "
                             f"normalizes keeps its channels")
            for name in node.input[1:3]:
                if name:
                    ctx.const_member(name, space.axis - first, "attached", space.slots, node)
            ctx.set_space(node.output[0], space)
            return
        pass_through(node, ctx, space, dirt="normalizes a zero channel to its bias")


class GroupNormRule(Rule):
    """GroupNormalization: each norm group's statistics count only its own C/G channels, so a
    whole norm group is one channel: with its inputs zero and its scale and bias zero its
    outputs are zero, and the other groups do not notice it is gone. ``num_groups`` is
    rewritten. Scale and bias are per group (opset 18) or per channel (opset 21)."""

    op_types = ("GroupNormalization",)

    def follow(self, node, ctx, space, rank):
        groups = int(attrs(node)["num_groups"])
        if space.axis != 1 or space.size % groups:
            barrier(node, ctx, f"normalizes groups of axis 1, but the channels are not on axis "
                               f"1 or not a multiple of num_groups={groups}")
            return
        grid = space.slots.reshape(groups, -1)
        ctx.forest.union(np.repeat(grid[:, 0], grid.shape[1]), grid.reshape(-1))
        for name in node.input[1:3]:
            param = ctx.const(name)
            slots = grid[:, 0] if param is not None and param.size == groups else space.slots
            if param is None or param.size != slots.size or \
                    not ctx.const_member(name, param.ndim - 1, "producer", slots, node):
                barrier(node, ctx, f"has parameter '{name}' that is not one constant per "
                                   f"group or channel")
                return
        ctx.set_space(node.output[0], space.cleaned())

    def rewrite(self, node, edit):
        keep = edit.keep(node.input[0])
        if keep is None:
            return
        per_group = keep.size // int(attrs(node)["num_groups"])
        edit.set_attr("num_groups", int(keep.sum()) // per_group)


class SoftmaxRule(Rule):
    """Softmax over the channel axis mixes channels; over another axis 0 becomes 1/n."""

    op_types = ("Softmax", "LogSoftmax", "Hardmax")
    needs_rank = True

    def follow(self, node, ctx, space, rank):
        axis = normalize_axis(int(attrs(node).get("axis", -1)), rank)
        if axis == space.axis:
            barrier(node, ctx, "normalizes over the channel axis")
            return
        pass_through(node, ctx, space, dirt="maps a zero channel to a non-zero distribution")


class ReduceRule(Rule):
    """Reductions over non-channel axes keep channels (and zeros); over the channel axis stop."""

    op_types = ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceL1", "ReduceL2",
                "ReduceSumSquare")

    def follow(self, node, ctx, space, rank):
        axes = ints_from(node, ctx, "axes", 1)
        a = attrs(node)
        if rank is None or (axes is None and len(node.input) > 1 and node.input[1]):
            barrier(node, ctx, "reduces over run-time axes")
            return
        if not axes:
            if int(a.get("noop_with_empty_axes", 0)):
                ctx.set_space(node.output[0], space)
                return
            axes = list(range(rank))
        axes = sorted(normalize_axis(x, rank) for x in axes)
        if space.axis in axes:
            barrier(node, ctx, "reduces over the channel axis")
            return
        keep = int(a.get("keepdims", 1))
        axis = space.axis if keep else space.axis - sum(1 for x in axes if x < space.axis)
        ctx.set_space(node.output[0], space.on_axis(axis))

