"""Norm rules: per-channel norms attach, norms and reductions over the channel axis stop."""

from __future__ import annotations

import pytest

from onnxoto.partition import partition
from tests.graphs import GraphBuilder, assert_invariant, gap_of, member, roles


def _stem(g: GraphBuilder, channels: int = 8) -> str:
    return g.conv(g.input("x", [1, 3, 6, 6]), channels, k=3, pad=1, name="c1")


def _sizes(result) -> list[tuple[int, bool]]:
    return [(grp.size, grp.prunable) for grp in result.groups]


def test_batchnorm_scale_and_bias_produce_mean_and_var_attach():
    g = GraphBuilder(seed=30)
    y = g.op("Relu", [g.bn(_stem(g), name="bn")])
    model = g.build([g.conv(y, 4, name="c2")])
    result = partition(model)
    assert _sizes(result) == [(8, True), (4, False)]
    stem = result.groups[0]
    assert roles(stem) == {
        "c1.weight": "producer", "bn.weight": "producer", "bn.bias": "producer",
        "bn.running_mean": "attached", "bn.running_var": "attached", "c2.weight": "consumer",
    }
    assert all(member(stem, f"bn.{p}").axis == 0
               for p in ("weight", "bias", "running_mean", "running_var"))
    assert_invariant(model, result)


def test_batchnorm_cleans_dirt():
    """Sigmoid's 0.5 is wiped by a zeroed BN scale and bias: still prunable."""
    g = GraphBuilder(seed=31)
    y = g.bn(g.op("Sigmoid", [_stem(g)]), name="bn")
    model = g.build([g.conv(y, 4, name="c2")])
    result = partition(model)
    assert _sizes(result) == [(8, True), (4, False)]
    assert_invariant(model, result)


def test_instance_norm_scale_and_bias_produce():
    g = GraphBuilder(seed=32)
    scale = g.weight("in.scale", [8], low=0.5, high=1.5)
    bias = g.weight("in.bias", [8])
    y = g.op("Relu", [g.op("InstanceNormalization", [_stem(g), scale, bias], name="in")])
    model = g.build([g.conv(y, 4, name="c2")])
    result = partition(model)
    assert _sizes(result) == [(8, True), (4, False)]
    assert roles(result.groups[0]) == {"c1.weight": "producer", "in.scale": "producer",
                                       "in.bias": "producer", "c2.weight": "consumer"}
    assert_invariant(model, result)


def test_layernorm_over_channels_last_is_not_prunable():
    g = GraphBuilder(seed=33)
    y = g.op("Transpose", [_stem(g)], perm=[0, 2, 3, 1])
    scale = g.weight("ln.weight", [8], low=0.5, high=1.5)
    y = g.op("LayerNormalization", [y, scale, g.weight("ln.bias", [8])], name="ln", axis=-1)
    y = g.op("Transpose", [y], perm=[0, 3, 1, 2])
    model = g.build([g.conv(y, 4, name="c2")])
    result = partition(model)
    assert _sizes(result) == [(8, False), (4, False)]
    reason = result.groups[0].reason
    assert "LayerNormalization node 'ln' normalizes over the channel axis" in reason
    assert {"ln.weight", "ln.bias"} <= set(roles(result.groups[0]))
    assert gap_of(model, result.groups[0]) > 1e-3, "deleting a zero channel changes the stats"


def test_post_ln_stream_is_one_kept_group_named_by_its_layernorms():
    """Post-LN (BERT): the first LayerNorm reads no channels (embeddings), yet every residual
    Add after it joins its stream: one kept group whose reason names the LayerNorm, not one
    group per Add saying only that it cannot follow the other operand."""
    g = GraphBuilder(seed=36)
    x = g.input("x", [1, 6, 16])
    stream = g.op("LayerNormalization", [x, g.weight("ln0.w", [16], low=0.5, high=1.5),
                                         g.weight("ln0.b", [16])], name="ln0", axis=-1)
    for i in (1, 2):
        hidden = g.op("Relu", [g.matmul(stream, 32, name=f"up{i}")])
        added = g.op("Add", [stream, g.matmul(hidden, 16, name=f"down{i}")], name=f"res{i}")
        scale, shift = g.weight(f"ln{i}.w", [16], low=0.5, high=1.5), g.weight(f"ln{i}.b", [16])
        stream = g.op("LayerNormalization", [added, scale, shift], name=f"ln{i}", axis=-1)
    model = g.build([g.matmul(stream, 10, name="head")])
    result = partition(model)
    assert _sizes(result) == [(16, False), (32, True), (32, True), (10, False)]
    kept = result.groups[0]
    assert {"down1.weight", "down2.weight", "ln0.w", "ln2.b"} <= set(roles(kept))
    assert kept.reason.startswith("LayerNormalization node 'ln0' normalizes over the channel "
                                  "axis (its statistics count the channels), so the residual "
                                  "stream it normalizes keeps its channels (and 2 more")
    assert "Add" not in kept.reason
    assert_invariant(model, result)


def test_layernorm_over_spatial_axes_leaves_bias_dirt():
    """LayerNorm over H, W (axis=2) turns a zero channel into its bias, read by c2."""
    g = GraphBuilder(seed=34)
    scale = g.weight("ln.weight", [6, 6], low=0.5, high=1.5)
    y = g.op("LayerNormalization", [_stem(g), scale, g.weight("ln.bias", [6, 6])], name="ln",
             axis=2)
    model = g.build([g.conv(y, 4, name="c2")])
    result = partition(model)
    assert _sizes(result) == [(8, False), (4, False)]
    assert "LayerNormalization node 'ln' normalizes a zero channel to its bias" in \
        result.groups[0].reason


@pytest.mark.parametrize("op_type", ["LpNormalization", "MeanVarianceNormalization"])
def test_other_channel_mixing_norms_are_barriers(op_type):
    g = GraphBuilder(seed=35)
    attrs = {"LpNormalization": {"axis": 1},
             "MeanVarianceNormalization": {"axes": [1, 2, 3]}}[op_type]
    y = g.op(op_type, [_stem(g)], name="norm", **attrs)
    g.declare(y, [1, 8, 6, 6])
    model = g.build([g.conv(y, 4, name="c2")])
    result = partition(model)
    assert _sizes(result) == [(8, False), (4, False)]
    assert f"{op_type} node 'norm' normalizes across channels" in result.groups[0].reason


def test_group_norm_removes_whole_norm_groups():
    """Opset 21: one scale and bias per channel (opset 18's per-group ones are deprecated)."""
    param_size = 8
    g = GraphBuilder(seed=35, opset=21)
    params = [g.weight("gn.scale", [param_size], low=0.5, high=1.5),
              g.weight("gn.bias", [param_size])]
    y = g.op("GroupNormalization", [_stem(g), *params], name="norm", num_groups=4)
    g.declare(y, [1, 8, 6, 6])
    model = g.build([g.conv(g.op("Relu", [y]), 4, name="c2")])
    result = partition(model)
    assert _sizes(result) == [(4, True), (4, False)]
    tied = result.groups[0]
    assert roles(tied) == {"c1.weight": "producer", "gn.scale": "producer",
                           "gn.bias": "producer", "c2.weight": "consumer"}
    assert member(tied, "c1.weight").index_map.block == 2
    assert member(tied, "gn.bias").index_map.block == param_size // 4
    assert_invariant(model, result)


@pytest.mark.parametrize("op_type", ["Softmax", "LogSoftmax"])
def test_softmax_over_channels_is_not_prunable(op_type):
    g = GraphBuilder(seed=36)
    y = g.op(op_type, [_stem(g)], name="sm", axis=1)
    model = g.build([g.conv(y, 4, name="c2")])
    result = partition(model)
    assert _sizes(result) == [(8, False), (4, False)]
    assert f"{op_type} node 'sm' normalizes over the channel axis" in result.groups[0].reason


def test_softmax_over_spatial_axis_dirties():
    g = GraphBuilder(seed=36)
    y = g.op("Softmax", [_stem(g)], name="sm", axis=-1)
    model = g.build([g.conv(y, 4, name="c2")])
    result = partition(model)
    assert _sizes(result) == [(8, False), (4, False)]
    assert "Softmax node 'sm' maps a zero channel to a non-zero distribution" in \
        result.groups[0].reason


@pytest.mark.parametrize("opset", [17, 18])
def test_reduce_mean_over_space_keepdims_1_keeps_axis(opset):
    g = GraphBuilder(seed=37, opset=opset)
    stem = g.op("Relu", [_stem(g)])
    if opset >= 18:
        y = g.op("ReduceMean", [stem, g.init("axes", [2, 3])], keepdims=1)
    else:
        y = g.op("ReduceMean", [stem], axes=[2, 3], keepdims=1)
    model = g.build([g.conv(y, 4, name="c2")])
    result = partition(model)
    assert _sizes(result) == [(8, True), (4, False)]
    assert member(result.groups[0], "c2.weight").axis == 1
    assert_invariant(model, result)


@pytest.mark.parametrize("op_type", ["ReduceMean", "ReduceMax", "ReduceSum", "ReduceL2"])
def test_reduce_over_space_keepdims_0_moves_axis(op_type):
    g = GraphBuilder(seed=38)
    stem = g.op("Relu", [_stem(g)])
    if op_type == "ReduceSum":  # axes became an input in opset 13
        y = g.op(op_type, [stem, g.init("axes", [2, 3])], keepdims=0)
    else:
        y = g.op(op_type, [stem], axes=[2, 3], keepdims=0)
    model = g.build([g.gemm(y, 5, name="fc")])
    result = partition(model)
    assert _sizes(result) == [(8, True), (5, False)]
    assert roles(result.groups[0]) == {"c1.weight": "producer", "fc.weight": "consumer"}
    assert member(result.groups[0], "fc.weight").axis == 0
    assert_invariant(model, result)


def test_reduce_over_leading_axis_keepdims_0_shifts_channel_axis():
    """(1, 8, 6, 6) -> ReduceMean(axes=[0], keepdims=0) -> (8, 6, 6): channels on axis 0."""
    g = GraphBuilder(seed=39)
    y = g.op("ReduceMean", [g.op("Relu", [_stem(g)])], axes=[0], keepdims=0)
    y = g.op("Unsqueeze", [y, g.init("zero", [0])])
    model = g.build([g.conv(y, 4, name="c2")])
    result = partition(model)
    assert _sizes(result) == [(8, True), (4, False)]
    assert_invariant(model, result)


@pytest.mark.parametrize("axes", [[1], [1, 2, 3], None])
def test_reduce_over_channels_is_not_prunable(axes):
    g = GraphBuilder(seed=40)
    attrs = {"axes": axes} if axes else {}
    y = g.op("ReduceMean", [_stem(g)], name="rm", keepdims=1, **attrs)
    model = g.build([g.op("Relu", [g.op("Mul", [g.conv(g.inputs[0].name, 8, name="c2"), y])])])
    result = partition(model)
    stem = result.groups[0]
    assert roles(stem) == {"c1.weight": "producer"}
    assert not stem.prunable
    assert "ReduceMean node 'rm' reduces over the channel axis" in stem.reason
