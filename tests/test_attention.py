"""Attention heads: q, k, v projections reshaped to (heads, head_dim), the score and value
products, the output projection. A head is one channel of one group."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnxoto.partition import partition
from onnxoto.rules.layout import reshape_split
from onnxoto.shrink import shrink
from tests.graphs import GraphBuilder, assert_invariant, gap_of, group_with, member

TOKENS, DIM, HEADS = 4, 8, 2
HEAD_DIM = DIM // HEADS


def _ints(g: GraphBuilder, name: str, values) -> str:
    return g.init(name, np.array(values, dtype=np.int64))


def _heads(g: GraphBuilder, x: str, name: str) -> str:
    """(1, T, D) -> (1, H, T, hd)."""
    split = g.op("Reshape", [x, _ints(g, f"{name}_shape", [-1, TOKENS, HEADS, HEAD_DIM])])
    return g.op("Transpose", [split], perm=[0, 2, 1, 3])


def _attention(g: GraphBuilder, x: str, *, mask: str | None = None) -> str:
    """Multi-head self-attention with separate q, k, v MatMul + bias; returns the projection."""
    q, k, v = (g.op("Add", [g.matmul(x, DIM, name=n), g.weight(f"{n}.bias", [DIM])])
               for n in ("q", "k", "v"))
    q, k, v = _heads(g, q, "q"), _heads(g, k, "k"), _heads(g, v, "v")
    scores = g.op("MatMul", [q, g.op("Transpose", [k], perm=[0, 1, 3, 2])])
    scores = g.op("Mul", [scores, g.init("scale", np.array(HEAD_DIM ** -0.5, np.float32))])
    if mask is not None:
        scores = g.op("Add", [scores, mask])
    attn = g.op("Softmax", [scores], axis=-1)
    y = g.op("Transpose", [g.op("MatMul", [attn, v])], perm=[0, 2, 1, 3])
    y = g.op("Reshape", [y, _ints(g, "merge_shape", [-1, TOKENS, DIM])])
    return g.matmul(y, DIM, name="out")


def _encoder(*, mask: bool) -> onnx.ModelProto:
    g = GraphBuilder(seed=0)
    x = g.input("x", [1, TOKENS, DIM])
    m = g.input("mask", [1, 1, 1, TOKENS]) if mask else None
    y = g.op("Relu", [_attention(g, x, mask=m)])
    return g.build(outputs=[g.matmul(y, 3, name="head")])


@pytest.mark.parametrize("mask", [False, True])
def test_each_head_is_one_channel_of_one_group(mask):
    model = _encoder(mask=mask)
    result = partition(model)
    heads = group_with(result, "q.weight")
    assert heads.prunable and heads.size == HEADS
    assert heads is group_with(result, "v.bias") is group_with(result, "out.weight", "consumer")
    for name in ("q.weight", "k.weight", "v.weight"):
        assert member(heads, name).role == "producer"
        assert member(heads, name).index_map.block == HEAD_DIM
    assert member(heads, "out.weight").role == "consumer"
    assert member(heads, "out.weight").axis == 0
    assert_invariant(model, result)


def test_removing_a_head_rewrites_both_reshapes_and_keeps_the_function():
    model = _encoder(mask=True)
    result = partition(model)
    heads = group_with(result, "q.weight")
    outcome = shrink(model, {heads.id: np.array([False, True])}, result=result)
    assert outcome.passed, outcome.comparison.summary()
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in outcome.model.graph.initializer}
    assert inits["q.weight"].shape == (DIM, HEAD_DIM)
    assert inits["out.weight"].shape == (HEAD_DIM, DIM)
    targets = sorted(tuple(int(v) for v in inits[n.input[1]]) for n in outcome.model.graph.node
                     if n.op_type == "Reshape")
    assert targets == [(-1, TOKENS, 1, HEAD_DIM)] * 3 + [(-1, TOKENS, HEAD_DIM)]


def _fused_encoder() -> onnx.ModelProto:
    """timm's layout: one qkv MatMul, Reshape to (1, T, 3, H, hd), Transpose to
    (3, 1, H, T, hd), q, k, v = Gather 0, 1, 2."""
    g = GraphBuilder(seed=4)
    x = g.input("x", [1, TOKENS, DIM])
    qkv = g.op("Add", [g.matmul(x, 3 * DIM, name="qkv"), g.weight("qkv.bias", [3 * DIM])])
    qkv = g.op("Reshape", [qkv, _ints(g, "qkv_shape", [1, TOKENS, 3, HEADS, HEAD_DIM])])
    qkv = g.op("Transpose", [qkv], perm=[2, 0, 3, 1, 4])
    q, k, v = (g.op("Gather", [qkv, _ints(g, f"pick{i}", i)], axis=0) for i in range(3))
    scores = g.op("MatMul", [q, g.op("Transpose", [k], perm=[0, 1, 3, 2])])
    attn = g.op("Softmax", [scores], axis=-1)
    y = g.op("Transpose", [g.op("MatMul", [attn, v])], perm=[0, 2, 1, 3])
    y = g.op("Reshape", [y, _ints(g, "merge_shape", [1, TOKENS, DIM])])
    y = g.op("Relu", [g.matmul(y, DIM, name="out")])
    return g.build(outputs=[g.matmul(y, 3, name="head")])


def test_fused_qkv_head_owns_three_column_blocks():
    model = _fused_encoder()
    result = partition(model)
    heads = group_with(result, "qkv.bias")
    assert heads.prunable and heads.size == HEADS
    blocks = sorted(m.index_map.offset for m in heads.members if m.initializer == "qkv.weight")
    assert blocks == [0, DIM, 2 * DIM]
    assert all(m.index_map.block == HEAD_DIM for m in heads.members)
    assert_invariant(model, result)
    outcome = shrink(model, {heads.id: np.array([True, False])}, result=result)
    assert outcome.passed
    inits = {t.name: t.dims for t in outcome.model.graph.initializer}
    assert list(inits["qkv.weight"]) == [DIM, 3 * HEAD_DIM]


def test_q_alone_in_a_head_group_would_not_be_zero_invariant():
    """Why q, k and v share the group: zeroing only q's head makes the softmax uniform, and
    the head still passes v on: the gap is the head's contribution, clearly non-zero."""
    import dataclasses

    model = _encoder(mask=False)
    result = partition(model)
    heads = group_with(result, "q.weight")
    q_only = dataclasses.replace(heads, members=[m for m in heads.members
                                                 if m.initializer.startswith(("q.", "out."))])
    assert gap_of(model, q_only) > 1e-3


def test_product_over_the_channel_axis_stops_the_channels():
    """x @ x^T sums over x's channels: a zero channel drops out of the sum, but the product
    carries no channels to follow, so the group is barred (never followed blindly)."""
    g = GraphBuilder(seed=1)
    x = g.input("x", [1, TOKENS, DIM])
    h = g.matmul(x, DIM, name="p")
    gram = g.op("MatMul", [h, g.op("Transpose", [h], perm=[0, 2, 1])])
    model = g.build(outputs=[g.matmul(gram, 2, name="head")])
    result = partition(model)
    group = group_with(result, "p.weight")
    assert not group.prunable and "sums over the channel axis" in group.reason


@pytest.mark.parametrize(("in_shape", "out_shape", "axis", "expected"), [
    ((1, 4, 8), (1, 4, 2, 4), 2, (2, (2, 4))),
    (("n", 4, 24), ("n", 4, 3, 2, 4), 2, (2, (3, 2, 4))),
    ((1, 8, 3, 3), (1, 2, 4, 3, 3), 1, (1, (2, 4))),
    ((1, 8, 3, 3), (1, 2, 4, 9), 1, (1, (2, 4))),  # spatial axes merge: not channels
    ((1, 8, 3, 3), (1, 2, 12, 3), 1, (1, (2, 4))),  # 2 blocks of 4 channels x H x W
    ((1, 8, 3, 3), (1, 4, 18), 1, (1, (4, 2))),  # GroupNorm's (N, G, C/G*H*W)
    ((1, 6, 3, 3), (1, 4, 9, 3, 2), 1, None),  # 4 does not divide the 6 channels
    ((1, 4, 8), (1, 2, 2, 8), 1, (1, (2, 2))),
    ((1, 4, 8), (4, 8), 2, None),
])
def test_reshape_split(in_shape, out_shape, axis, expected):
    assert reshape_split(in_shape, out_shape, axis) == expected


def _fused_op_encoder(*, kv_heads: int = HEADS) -> onnx.ModelProto:
    """ONNX's own Attention op (opset 23) on 3-D q, k, v with head counts as attributes."""
    g = GraphBuilder(seed=5, opset=23)
    x = g.input("x", [1, TOKENS, DIM])
    kv_dim = kv_heads * HEAD_DIM
    q = g.op("Add", [g.matmul(x, DIM, name="q"), g.weight("q.bias", [DIM])])
    k = g.op("Add", [g.matmul(x, kv_dim, name="k"), g.weight("k.bias", [kv_dim])])
    v = g.op("Add", [g.matmul(x, kv_dim, name="v"), g.weight("v.bias", [kv_dim])])
    y = g.op("Attention", [q, k, v], name="attn", q_num_heads=HEADS, kv_num_heads=kv_heads)
    g.declare(y, [1, TOKENS, DIM])
    y = g.op("Relu", [g.matmul(y, DIM, name="out")])
    return g.build(outputs=[g.matmul(y, 3, name="head")])


def test_attention_op_heads_are_a_group_and_head_counts_are_rewritten():
    model = _fused_op_encoder()
    result = partition(model)
    heads = group_with(result, "v.weight")
    assert heads.prunable and heads.size == HEADS
    assert heads is group_with(result, "q.bias") is group_with(result, "out.weight", "consumer")
    assert member(heads, "out.weight").index_map.block == HEAD_DIM
    assert_invariant(model, result)
    outcome = shrink(model, {heads.id: np.array([False, True])}, result=result)
    assert outcome.passed, outcome.comparison.summary()
    node = next(n for n in outcome.model.graph.node if n.name == "attn")
    counts = {a.name: a.i for a in node.attribute}
    assert counts == {"q_num_heads": 1, "kv_num_heads": 1}


def test_grouped_query_attention_op_is_a_barrier():
    model = _fused_op_encoder(kv_heads=1)
    result = partition(model)
    assert "Attention node 'attn' is grouped-query attention" in \
        group_with(result, "v.weight").reason


def test_attention_op_on_4d_heads_follows_the_head_axis():
    """4-D Q, K, V (batch, heads, tokens, head_size): heads are axis 1, no attribute to fix."""
    g = GraphBuilder(seed=6, opset=23)
    x = g.input("x", [1, TOKENS, DIM])
    q, k, v = (_heads(g, g.matmul(x, DIM, name=n), n) for n in ("q", "k", "v"))
    y = g.op("Attention", [q, k, v], name="attn")
    g.declare(y, [1, HEADS, TOKENS, HEAD_DIM])
    y = g.op("Transpose", [y], perm=[0, 2, 1, 3])
    y = g.op("Reshape", [y, _ints(g, "merge_shape", [-1, TOKENS, DIM])])
    y = g.op("Relu", [g.matmul(y, DIM, name="out")])
    model = g.build(outputs=[g.matmul(y, 3, name="head")])
    result = partition(model)
    heads = group_with(result, "k.weight")
    assert heads.prunable and heads.size == HEADS
    assert_invariant(model, result)
