"""ONNX's fused Attention op (opset 23): heads live inside one node, counted by attributes."""

from __future__ import annotations

import numpy as np

from onnxoto.rules.base import Edit, Rule, attrs, barrier, input_at
from onnxoto.spaces import Space


class AttentionRule(Rule):
    """Attention(Q, K, V): head h of the output is softmax(Q_h K_h^T) V_h, so it is zero when
    V_h is, and Q_h, K_h only change that head's softmax: q, k and v of a head are one channel
    (as for the spelled-out products, see rules.layout's head split). 3-D inputs pack the heads
    in the last axis (``q_num_heads`` / ``kv_num_heads``, rewritten by shrink); 4-D inputs have
    them on axis 1. Grouped-query attention, a KV cache and the extra outputs stop the channels.
    """

    op_types = ("Attention",)
    min_opset = 23

    def trace(self, node, ctx):
        spaces = [ctx.space(input_at(node, i)) for i in range(3)]
        if not any(spaces):
            return
        a = attrs(node)
        why = self._unsupported(node, ctx, a)
        if why:
            barrier(node, ctx, why)
            return
        rank = ctx.rank(node.input[0])
        heads = int(a.get("q_num_heads", 0)) if rank == 3 else None
        if heads is not None and heads < 1:
            barrier(node, ctx, "has 3-D inputs but no q_num_heads")
            return
        tied = []
        for space, name in zip(spaces, node.input[:3], strict=True):
            if space is None:
                continue
            if space.axis != (2 if rank == 3 else 1):
                barrier(node, ctx, f"reads '{name}' whose channels are not on its head axis")
                return
            tied.append(_heads(ctx, space, heads) if rank == 3 else space)
        if spaces[2] is None or len({s.size for s in tied}) > 1:
            barrier(node, ctx, "has heads that do not line up across Q, K and V")
            return
        joined = tied[0]
        for other in tied[1:]:
            joined = ctx.join(joined, other, zero_if="either")
        v_heads = tied[-1]  # V alone decides whether a head's output is zero
        out = Space(joined.axis, joined.slots, v_heads.dirt)
        if rank == 3:
            out = out.repeated(spaces[2].size // out.size, 2)
        ctx.set_space(node.output[0], out)

    @staticmethod
    def _unsupported(node, ctx, a: dict) -> str | None:
        ranks = {ctx.rank(input_at(node, i)) for i in range(3)}
        if len(ranks) != 1 or ranks.pop() not in (3, 4):
            return "has Q, K, V of unknown or differing rank"
        if int(a.get("q_num_heads", 0)) != int(a.get("kv_num_heads", 0)):
            return "is grouped-query attention (q_num_heads != kv_num_heads)"
        if any(input_at(node, i) for i in (4, 5)) or any(node.output[1:]):
            return "uses a KV cache or extra outputs"
        if ctx.space(input_at(node, 3)) is not None:
            return "has a mask that carries channels"
        return None

    def rewrite(self, node, edit: Edit):
        keep = edit.keep(node.input[2])
        a = attrs(node)
        if keep is None or edit.rank(node.input[2]) != 3:
            return
        heads = int(a["kv_num_heads"])
        kept = int(keep.sum()) // (keep.size // heads)
        for name in ("q_num_heads", "kv_num_heads"):
            edit.set_attr(name, kept)


def _heads(ctx, space: Space, heads: int) -> Space:
    """The head_size columns of each head tied into one channel, on the same axis."""
    grid = space.slots.reshape(heads, -1)
    ctx.forest.union(np.repeat(grid[:, 0], grid.shape[1]), grid.reshape(-1))
    dirt = space.dirt.reshape(heads, -1).max(axis=1)
    return Space(space.axis, grid[:, 0].copy(), dirt.astype(np.int32))
