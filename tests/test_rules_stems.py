"""Stem rules (Conv, ConvTranspose, Gemm, MatMul) on tiny graphs: groups, members, invariance."""

from __future__ import annotations

import numpy as np
import pytest

from onnxoto.groups import IndexMap
from onnxoto.partition import partition
from onnxoto.shrink import shrink
from tests.graphs import GraphBuilder, assert_invariant, group_with, member, roles


def _image(g: GraphBuilder, channels: int = 3, size: int = 6) -> str:
    return g.input("x", [1, channels, size, size])


def test_conv_stem_feeds_conv_consumer():
    g = GraphBuilder(seed=0)
    y = g.op("Relu", [g.conv(_image(g), 8, k=3, pad=1, name="c1")])
    model = g.build([g.conv(y, 4, name="c2")])
    result = partition(model)
    assert [(grp.size, grp.prunable) for grp in result.groups] == [(8, True), (4, False)]
    stem = result.groups[0]
    assert roles(stem) == {"c1.weight": "producer", "c2.weight": "consumer"}
    assert member(stem, "c1.weight").axis == 0
    assert member(stem, "c2.weight").axis == 1
    assert member(stem, "c2.weight").index_map == IndexMap()
    last = result.groups[1]
    assert "graph output 'c2_out'" in last.reason
    assert_invariant(model, result)


def test_conv_bias_is_a_producer():
    g = GraphBuilder(seed=1)
    y = g.op("Relu", [g.conv(_image(g), 8, k=3, bias=True, name="c1")])
    model = g.build([g.conv(y, 4, name="c2")])
    result = partition(model)
    stem = group_with(result, "c1.bias")
    assert stem.prunable
    assert roles(stem) == {"c1.weight": "producer", "c1.bias": "producer",
                           "c2.weight": "consumer"}
    assert member(stem, "c1.bias").axis == 0
    assert_invariant(model, result)


@pytest.mark.parametrize("multiplier", [1, 2])
def test_depthwise_conv_keeps_its_input_channels(multiplier):
    g = GraphBuilder(seed=2)
    y = g.op("Relu", [g.conv(_image(g), 8, name="c1")])
    y = g.conv(y, 8 * multiplier, k=3, pad=1, group=8, bias=True, name="dw")
    model = g.build([g.conv(g.op("Relu", [y]), 4, name="c3")])
    result = partition(model)
    assert [(grp.size, grp.prunable) for grp in result.groups] == [(8, True), (4, False)]
    stem = result.groups[0]
    assert roles(stem) == {"c1.weight": "producer", "dw.weight": "attached",
                           "dw.bias": "producer", "c3.weight": "consumer"}
    expected = IndexMap(block=multiplier)
    for name, axis in (("dw.weight", 0), ("dw.bias", 0), ("c3.weight", 1)):
        m = member(stem, name)
        assert m.axis == axis
        assert list(m.index_map.indices([3])) == list(expected.indices([3])), name
        assert m.index_map.block == multiplier
    assert_invariant(model, result)


@pytest.mark.parametrize(("groups", "c_out"), [(2, 8), (4, 12)])
def test_grouped_conv_removes_whole_conv_groups(groups, c_out):
    """ResNeXt/RegNet: a conv group (its C_in/G inputs and C_out/G outputs) is one channel."""
    g = GraphBuilder(seed=3)
    y = g.op("Relu", [g.conv(_image(g), 8, name="c1")])
    y = g.op("Relu", [g.conv(y, c_out, k=3, pad=1, group=groups, bias=True, name="gconv")])
    model = g.build([g.conv(y, 4, name="c3")])
    result = partition(model)
    assert [(grp.size, grp.prunable) for grp in result.groups] == [(groups, True), (4, False)]
    tied = result.groups[0]
    assert roles(tied) == {"c1.weight": "producer", "gconv.weight": "attached",
                           "gconv.bias": "producer", "c3.weight": "consumer"}
    assert member(tied, "c1.weight").index_map == IndexMap(block=8 // groups)
    assert member(tied, "gconv.weight").index_map == IndexMap(block=c_out // groups)
    assert member(tied, "c3.weight").index_map == IndexMap(block=c_out // groups)
    assert_invariant(model, result)
    outcome = shrink(model, {tied.id: np.arange(groups) != 0}, result=result)
    conv = next(n for n in outcome.model.graph.node if n.name == "gconv")
    assert next(a for a in conv.attribute if a.name == "group").i == groups - 1


def test_grouped_conv_viewed_in_radix_slices_aligns_channels_across_conv_groups():
    """ResNeSt's radix conv: 2 conv groups of 4, viewed as (radix 2, 4) and summed over radix.
    Input j of both conv groups is one channel (weight column j), output k of both another
    (the view's channel k); removing them keeps group=2."""
    g = GraphBuilder(seed=3)
    y = g.op("Relu", [g.conv(_image(g), 8, name="c1")])
    y = g.op("Relu", [g.conv(y, 8, k=3, pad=1, group=2, bias=True, name="gconv")])
    view = g.op("Reshape", [y, g.init("radix_view", np.array([1, 2, 4, 6, 6], np.int64))])
    y = g.op("ReduceSum", [view, g.init("axes", np.array([1], np.int64))], keepdims=0)
    model = g.build([g.conv(y, 4, name="c3")])
    result = partition(model)
    assert [(grp.size, grp.prunable) for grp in result.groups] == [(4, True), (4, True),
                                                                    (4, False)]
    upstream, own = result.groups[:2]
    aligned = IndexMap(block=2, stride=4, step=1)
    assert roles(upstream) == {"c1.weight": "producer", "gconv.weight": "consumer"}
    assert member(upstream, "c1.weight").index_map == aligned
    assert (member(upstream, "gconv.weight").axis, member(upstream, "gconv.weight").index_map
            ) == (1, IndexMap())
    assert roles(own) == {"gconv.weight": "producer", "gconv.bias": "producer",
                          "c3.weight": "consumer"}
    assert member(own, "gconv.weight").index_map == aligned
    assert member(own, "c3.weight").index_map == IndexMap()  # after the sum over radix
    assert_invariant(model, result)
    outcome = shrink(model, {upstream.id: np.arange(4) != 0, own.id: np.arange(4) < 1},
                     result=result)
    assert outcome.passed
    conv = next(n for n in outcome.model.graph.node if n.name == "gconv")
    assert next(a for a in conv.attribute if a.name == "group").i == 2
    weights = {t.name: tuple(t.dims) for t in outcome.model.graph.initializer}
    assert weights["gconv.weight"] == (2, 3, 3, 3)


def test_grouped_conv_of_a_graph_input_ties_output_j_of_every_conv_group():
    g = GraphBuilder(seed=3)
    x = g.input("x", [1, 4, 6, 6])
    y = g.op("Relu", [g.conv(x, 6, k=3, pad=1, group=2, bias=True, name="gconv")])
    model = g.build([g.conv(y, 4, name="c3")])
    result = partition(model)
    assert [(grp.size, grp.prunable) for grp in result.groups] == [(3, True), (4, False)]
    tied = result.groups[0]
    assert member(tied, "gconv.weight").index_map == IndexMap(block=2, stride=3, step=1)
    assert member(tied, "c3.weight").index_map == IndexMap(block=2, stride=3, step=1)
    assert_invariant(model, result)


def test_conv_transpose_stem_and_consumer_axes():
    g = GraphBuilder(seed=4)
    y = g.op("Relu", [g.conv(_image(g), 8, name="c1")])
    y = g.op("Relu", [g.conv_transpose(y, 6, bias=True, name="up")])
    model = g.build([g.conv(y, 4, name="c3")])
    result = partition(model)
    assert [(grp.size, grp.prunable) for grp in result.groups] == [(8, True), (6, True),
                                                                    (4, False)]
    first, second = result.groups[:2]
    assert roles(first) == {"c1.weight": "producer", "up.weight": "consumer"}
    assert member(first, "up.weight").axis == 0
    assert roles(second) == {"up.weight": "producer", "up.bias": "producer",
                             "c3.weight": "consumer"}
    assert member(second, "up.weight").axis == 1
    assert member(second, "up.bias").axis == 0
    assert_invariant(model, result)


@pytest.mark.parametrize("trans_b", [False, True])
def test_gemm_stem_axes_follow_trans_b(trans_b):
    g = GraphBuilder(seed=5)
    x = g.input("x", [2, 10])
    y = g.op("Relu", [g.gemm(x, 12, trans_b=trans_b, name="fc1")])
    model = g.build([g.gemm(y, 5, trans_b=trans_b, name="fc2")])
    result = partition(model)
    assert [(grp.size, grp.prunable) for grp in result.groups] == [(12, True), (5, False)]
    hidden = result.groups[0]
    assert roles(hidden) == {"fc1.weight": "producer", "fc1.bias": "producer",
                             "fc2.weight": "consumer"}
    out_axis, in_axis = (0, 1) if trans_b else (1, 0)
    assert member(hidden, "fc1.weight").axis == out_axis
    assert member(hidden, "fc2.weight").axis == in_axis
    assert member(hidden, "fc1.bias").axis == 0
    assert_invariant(model, result)


def test_gemm_with_row_bias_is_a_producer():
    """C of shape (1, N) broadcasts over the batch: its axis 1 holds the features."""
    g = GraphBuilder(seed=5)
    x = g.input("x", [2, 10])
    y = g.op("Gemm", [x, g.weight("fc1.weight", [10, 12]), g.weight("fc1.bias", [1, 12])],
             name="fc1")
    model = g.build([g.gemm(g.op("Relu", [y]), 5, name="fc2")])
    result = partition(model)
    assert [(grp.size, grp.prunable) for grp in result.groups] == [(12, True), (5, False)]
    assert member(result.groups[0], "fc1.bias").axis == 1
    assert_invariant(model, result)


def test_gemm_with_scalar_bias_is_not_prunable():
    g = GraphBuilder(seed=5)
    x = g.input("x", [2, 10])
    bias = g.init("fc1.bias", np.array([0.7], dtype=np.float32))
    y = g.op("Gemm", [x, g.weight("fc1.weight", [10, 12]), bias], name="fc1")
    model = g.build([g.gemm(g.op("Relu", [y]), 5, name="fc2")])
    result = partition(model)
    hidden = result.groups[0]
    assert not hidden.prunable and "Gemm node 'fc1'" in hidden.reason, hidden.reason


def test_gemm_with_per_sample_bias_is_a_barrier():
    """C of shape (batch, 1) is not per feature: fc2 stops the space it reads."""
    g = GraphBuilder(seed=5)
    x = g.input("x", [2, 10])
    h = g.op("Relu", [g.gemm(x, 12, name="fc1")])
    y = g.op("Gemm", [h, g.weight("fc2.weight", [12, 6]), g.weight("fc2.bias", [2, 1])],
             name="fc2")
    model = g.build([g.gemm(g.op("Relu", [y]), 5, name="fc3")])
    result = partition(model)
    fed = group_with(result, "fc1.weight", "producer")
    assert not fed.prunable
    assert "Gemm node 'fc2' has a bias C that is not one value per feature" in fed.reason


def test_gemm_trans_a_is_a_barrier():
    g = GraphBuilder(seed=5)
    x = g.input("x", [10, 2])
    h = g.op("Transpose", [g.op("Relu", [g.gemm(g.op("Transpose", [x]), 6, name="fc1")])])
    y = g.op("Gemm", [h, g.weight("fc2.weight", [6, 4])], name="fc2", transA=1)
    model = g.build([y])
    result = partition(model)
    assert "Gemm node 'fc2' has a run-time B operand or transA=1" in \
        group_with(result, "fc1.weight", "producer").reason


def test_matmul_with_2d_weight_on_rank3_tokens():
    g = GraphBuilder(seed=6)
    x = g.input("x", [1, 5, 6])
    h = g.matmul(x, 10, name="fc1")
    h = g.op("Add", [h, g.weight("fc1.bias", [10])])
    model = g.build([g.matmul(g.op("Relu", [h]), 4, name="fc2")])
    result = partition(model)
    assert [(grp.size, grp.prunable) for grp in result.groups] == [(10, True), (4, False)]
    hidden = result.groups[0]
    assert roles(hidden) == {"fc1.weight": "producer", "fc1.bias": "producer",
                             "fc2.weight": "consumer"}
    assert member(hidden, "fc1.weight").axis == 1
    assert member(hidden, "fc2.weight").axis == 0
    assert_invariant(model, result)


def test_matmul_weight_behind_transpose_uses_original_axes():
    g = GraphBuilder(seed=7)
    x = g.input("x", [1, 5, 6])
    h = g.op("Relu", [g.matmul(x, 10, transposed=True, name="fc1")])
    model = g.build([g.matmul(h, 4, transposed=True, name="fc2")])
    result = partition(model)
    assert [(grp.size, grp.prunable) for grp in result.groups] == [(10, True), (4, False)]
    hidden = result.groups[0]
    assert roles(hidden) == {"fc1.weight": "producer", "fc2.weight": "consumer"}
    assert member(hidden, "fc1.weight").axis == 0
    assert member(hidden, "fc2.weight").axis == 1
    assert_invariant(model, result)


def test_matmul_of_two_runtime_tensors_is_a_barrier():
    g = GraphBuilder(seed=8)
    x = g.input("x", [1, 5, 6])
    q = g.matmul(x, 8, name="q")
    k = g.op("Transpose", [g.matmul(x, 8, name="k")], perm=[0, 2, 1])
    scores = g.op("MatMul", [q, k], name="scores")
    model = g.build([g.op("Softmax", [scores], axis=-1)])
    result = partition(model)
    assert [(grp.size, grp.prunable) for grp in result.groups] == [(8, False), (8, False)]
    for grp in result.groups:
        assert "MatMul node 'scores'" in grp.reason
        assert "two run-time tensors" in grp.reason
