"""Elementwise rules: activations, f(0) != 0 dirt, Clip, PRelu, pools and the joins."""

from __future__ import annotations

import numpy as np
import pytest

from onnxoto.groups import IndexMap
from onnxoto.partition import partition
from tests.graphs import GraphBuilder, assert_invariant, gap_of, group_with, member, roles


def _stem(g: GraphBuilder, channels: int = 8, name: str = "c1") -> str:
    """x (1, 3, 6, 6) -> Conv ``name`` with ``channels`` outputs."""
    x = g.input("x", [1, 3, 6, 6]) if not g.inputs else g.inputs[0].name
    return g.conv(x, channels, k=3, pad=1, name=name)


def _sizes(result) -> list[tuple[int, bool]]:
    return [(grp.size, grp.prunable) for grp in result.groups]


ACTIVATIONS = [
    ("Relu", {}, 17),
    ("LeakyRelu", {"alpha": 0.1}, 17),
    ("Tanh", {}, 17),
    ("Gelu", {}, 20),
    ("HardSwish", {}, 17),
    ("Elu", {"alpha": 0.7}, 17),
    ("Identity", {}, 17),
    ("Dropout", {}, 17),
    ("Neg", {}, 17),
]


@pytest.mark.parametrize(("op_type", "attrs", "opset"), ACTIVATIONS,
                         ids=[a[0] for a in ACTIVATIONS])
def test_zero_preserving_activation_passes_channels(op_type, attrs, opset):
    g = GraphBuilder(seed=10, opset=opset)
    y = g.op(op_type, [_stem(g)], name="act", **attrs)
    model = g.build([g.conv(y, 4, name="c2")])
    result = partition(model)
    assert _sizes(result) == [(8, True), (4, False)]
    assert roles(result.groups[0]) == {"c1.weight": "producer", "c2.weight": "consumer"}
    assert_invariant(model, result)


@pytest.mark.parametrize("op_type", ["Sigmoid", "Exp", "Softplus", "HardSigmoid"])
def test_nonzero_at_zero_read_by_a_consumer_is_not_prunable(op_type):
    g = GraphBuilder(seed=11)
    y = g.op(op_type, [_stem(g)], name="act")
    model = g.build([g.conv(y, 4, name="c2")])
    result = partition(model)
    assert _sizes(result) == [(8, False), (4, False)]
    reason = result.groups[0].reason
    assert f"{op_type} node 'act' maps 0 to" in reason, reason
    assert "Conv node 'c2' reads that value" in reason, reason
    assert gap_of(model, result.groups[0]) > 1e-5, "the barrier guards a real difference"


def test_sigmoid_value_is_named():
    g = GraphBuilder(seed=11)
    model = g.build([g.conv(g.op("Sigmoid", [_stem(g)], name="sig"), 4, name="c2")])
    assert "maps 0 to 0.5" in partition(model).groups[0].reason


def test_squeeze_excitation_gate_is_prunable():
    """h * Sigmoid(fc(pool(h))): a zero on either side of the Mul zeroes the channel."""
    g = GraphBuilder(seed=12)
    h = g.op("Relu", [_stem(g)])
    s = g.op("GlobalAveragePool", [h])
    s = g.op("Relu", [g.conv(s, 2, bias=True, name="se1")])
    s = g.op("Sigmoid", [g.conv(s, 8, bias=True, name="se2")], name="gate")
    y = g.op("Mul", [h, s], name="scale")
    model = g.build([g.conv(y, 4, name="c3")])
    result = partition(model)
    assert _sizes(result) == [(8, True), (2, True), (4, False)]
    assert roles(result.groups[0]) == {
        "c1.weight": "producer", "se2.weight": "producer", "se2.bias": "producer",
        "se1.weight": "consumer", "c3.weight": "consumer",
    }
    assert member(result.groups[0], "se1.weight").axis == 1
    assert roles(result.groups[1]) == {"se1.weight": "producer", "se1.bias": "producer",
                                       "se2.weight": "consumer"}
    assert_invariant(model, result)


@pytest.mark.parametrize(("low", "high", "prunable"), [(0.0, 6.0, True), (-1.0, 1.0, True),
                                                       (1.0, 6.0, False)])
def test_clip_passes_only_when_zero_is_inside(low, high, prunable):
    g = GraphBuilder(seed=13)
    lo = g.init("lo", np.array(low, dtype=np.float32))
    hi = g.init("hi", np.array(high, dtype=np.float32))
    y = g.op("Clip", [_stem(g), lo, hi], name="clip")
    model = g.build([g.conv(y, 4, name="c2")])
    result = partition(model)
    assert _sizes(result) == [(8, prunable), (4, False)]
    if prunable:
        assert_invariant(model, result)
    else:
        assert "Clip node 'clip' clips 0 into [1.0, 6.0]" in result.groups[0].reason
        assert gap_of(model, result.groups[0]) > 1e-3


def test_clip_with_runtime_bound_is_a_barrier():
    g = GraphBuilder(seed=13)
    hi = g.op("ReduceMax", [g.inputs[0].name if g.inputs else g.input("x", [1, 3, 6, 6])],
              keepdims=0)
    y = g.op("Clip", [_stem(g), "", hi], name="clip")
    model = g.build([g.conv(y, 4, name="c2")])
    reason = partition(model).groups[0].reason
    assert "Clip node 'clip' has run-time clip bounds" in reason


def test_castlike_passes_its_input_and_reads_the_other_for_its_type_only():
    """CastLike(h1, h2): h1's channels pass through to c3; h2 lends only its dtype, so c2's
    channels are read by nothing (dead) and still prunable, not barred."""
    g = GraphBuilder(seed=47)
    x = g.input("x", [1, 3, 6, 6])
    h1 = g.op("Relu", [g.conv(x, 8, k=3, pad=1, name="c1")])
    h2 = g.conv(x, 4, name="c2")
    y = g.op("CastLike", [h1, h2], name="cast")
    result = partition(g.build([g.conv(y, 5, name="c3")]))
    through = group_with(result, "c1.weight")
    assert through.prunable and group_with(result, "c3.weight", "consumer") is through
    assert group_with(result, "c2.weight").prunable
    assert_invariant(result.model, result, dead_ok=True)


@pytest.mark.parametrize("slope_shape", [[8, 1, 1], [1]])
def test_prelu_slope_is_attached_per_channel(slope_shape):
    g = GraphBuilder(seed=14)
    slope = g.weight("slope", slope_shape, low=0.1, high=0.5)
    y = g.op("PRelu", [_stem(g), slope], name="prelu")
    model = g.build([g.conv(y, 4, name="c2")])
    result = partition(model)
    assert _sizes(result) == [(8, True), (4, False)]
    expected = {"c1.weight": "producer", "c2.weight": "consumer"}
    if slope_shape[0] == 8:
        expected["slope"] = "attached"
        assert member(result.groups[0], "slope").axis == 0
    assert roles(result.groups[0]) == expected
    assert_invariant(model, result)


@pytest.mark.parametrize("op_type", ["MaxPool", "AveragePool", "GlobalAveragePool",
                                     "GlobalMaxPool"])
def test_pools_pass_channels(op_type):
    g = GraphBuilder(seed=15)
    attrs = {} if op_type.startswith("Global") else {"kernel_shape": [2, 2], "strides": [2, 2]}
    y = g.op(op_type, [g.op("Relu", [_stem(g)])], **attrs)
    model = g.build([g.conv(y, 4, name="c2")])
    result = partition(model)
    assert _sizes(result) == [(8, True), (4, False)]
    assert roles(result.groups[0]) == {"c1.weight": "producer", "c2.weight": "consumer"}
    assert_invariant(model, result)


def _branches(g: GraphBuilder, count: int) -> tuple[str, list[str]]:
    trunk = g.op("Relu", [_stem(g, name="c0")])
    return trunk, [g.bn(g.conv(trunk, 8, k=3, pad=1, name=f"b{i}"), name=f"bn{i}")
                   for i in range(count)]


@pytest.mark.parametrize("op_type", ["Add", "Max", "Min", "Sub"])
def test_join_of_two_conv_branches_is_one_group(op_type):
    g = GraphBuilder(seed=16)
    _, (a, b) = _branches(g, 2)
    y = g.op("Relu", [g.op(op_type, [a, b], name="join")])
    model = g.build([g.conv(y, 4, name="c3")])
    result = partition(model)
    assert _sizes(result) == [(8, True), (8, True), (4, False)]
    joined = group_with(result, "b0.weight", "producer")
    assert group_with(result, "b1.weight", "producer") is joined
    assert {m.initializer for m in joined.by_role("producer")} == {
        "b0.weight", "b1.weight", "bn0.weight", "bn0.bias", "bn1.weight", "bn1.bias"}
    assert {m.initializer for m in joined.by_role("attached")} == {
        "bn0.running_mean", "bn0.running_var", "bn1.running_mean", "bn1.running_var"}
    assert [m.initializer for m in joined.by_role("consumer")] == ["c3.weight"]
    trunk = group_with(result, "c0.weight")
    assert {m.initializer for m in trunk.by_role("consumer")} == {"b0.weight", "b1.weight"}
    assert_invariant(model, result)


@pytest.mark.parametrize("op_type", ["Sum", "Mean"])
def test_join_of_three_branches(op_type):
    g = GraphBuilder(seed=17)
    _, branches = _branches(g, 3)
    y = g.op("Relu", [g.op(op_type, branches, name="join")])
    model = g.build([g.conv(y, 4, name="c3")])
    result = partition(model)
    assert _sizes(result) == [(8, True), (8, True), (4, False)]
    joined = group_with(result, "b2.weight", "producer")
    assert {m.initializer for m in joined.by_role("producer")} >= {"b0.weight", "b1.weight",
                                                                 "b2.weight"}
    assert_invariant(model, result)


def test_residual_add_ties_trunk_and_branch():
    g = GraphBuilder(seed=18)
    trunk = g.op("Relu", [g.bn(_stem(g, name="c0"), name="bn0")])
    branch = g.bn(g.conv(g.op("Relu", [g.conv(trunk, 5, k=3, pad=1, name="b1")]), 8, name="b2"),
                  name="bn2")
    y = g.op("Relu", [g.op("Add", [trunk, branch], name="res")])
    model = g.build([g.conv(y, 4, name="c3")])
    result = partition(model)
    assert _sizes(result) == [(8, True), (5, True), (4, False)]
    joined = result.groups[0]
    assert {m.node for m in joined.by_role("producer")} == {"c0", "bn0", "b2", "bn2"}
    assert {m.initializer for m in joined.by_role("consumer")} == {"b1.weight", "c3.weight"}
    assert_invariant(model, result)


@pytest.mark.parametrize("shape", [[8, 1, 1], [1, 8, 1, 1]])
def test_add_of_per_channel_constant_is_a_producer(shape):
    g = GraphBuilder(seed=19)
    bias = g.weight("shift", shape)
    y = g.op("Relu", [g.op("Add", [_stem(g), bias], name="add")])
    model = g.build([g.conv(y, 4, name="c2")])
    result = partition(model)
    assert _sizes(result) == [(8, True), (4, False)]
    shift = member(result.groups[0], "shift")
    assert (shift.role, shift.axis, shift.index_map) == ("producer", len(shape) - 3, IndexMap())
    assert_invariant(model, result)


@pytest.mark.parametrize("op_type", ["Add", "Sub"])
def test_nonzero_scalar_shift_then_consumer_is_not_prunable(op_type):
    g = GraphBuilder(seed=20)
    y = g.op(op_type, [_stem(g), g.init("k", np.array(0.25, dtype=np.float32))], name="shift")
    model = g.build([g.conv(y, 4, name="c2")])
    result = partition(model)
    assert _sizes(result) == [(8, False), (4, False)]
    reason = result.groups[0].reason
    assert f"{op_type} node 'shift' applies a constant that moves 0" in reason
    assert "Conv node 'c2' reads that value" in reason
    assert gap_of(model, result.groups[0]) > 1e-3


def test_add_of_zero_scalar_passes():
    g = GraphBuilder(seed=20)
    y = g.op("Add", [_stem(g), g.init("k", np.zeros((), dtype=np.float32))])
    model = g.build([g.conv(y, 4, name="c2")])
    result = partition(model)
    assert _sizes(result) == [(8, True), (4, False)]
    assert_invariant(model, result)


def test_mul_by_per_channel_constant_is_a_layer_scale_producer():
    g = GraphBuilder(seed=21)
    gamma = g.weight("gamma", [8, 1, 1], low=0.2, high=0.6)
    y = g.op("Mul", [_stem(g), gamma], name="layer_scale")
    model = g.build([g.conv(y, 4, name="c2")])
    result = partition(model)
    assert _sizes(result) == [(8, True), (4, False)]
    assert roles(result.groups[0]) == {"c1.weight": "producer", "gamma": "producer",
                                       "c2.weight": "consumer"}
    assert_invariant(model, result)


def test_mul_by_per_channel_constant_cleans_dirt():
    """Sigmoid's 0.5 times a zeroed layer scale is 0 again: prunable."""
    g = GraphBuilder(seed=21)
    gamma = g.weight("gamma", [8, 1, 1], low=0.2, high=0.6)
    y = g.op("Mul", [g.op("Sigmoid", [_stem(g)]), gamma], name="layer_scale")
    model = g.build([g.conv(y, 4, name="c2")])
    result = partition(model)
    assert _sizes(result) == [(8, True), (4, False)]
    assert_invariant(model, result)


def test_div_by_per_channel_constant_is_attached():
    g = GraphBuilder(seed=22)
    divisor = g.weight("divisor", [8, 1, 1], low=0.5, high=2.0)
    y = g.op("Div", [_stem(g), divisor], name="div")
    model = g.build([g.conv(y, 4, name="c2")])
    result = partition(model)
    assert _sizes(result) == [(8, True), (4, False)]
    assert roles(result.groups[0]) == {"c1.weight": "producer", "divisor": "attached",
                                       "c2.weight": "consumer"}
    assert_invariant(model, result)


def test_div_of_constant_by_channels_is_a_barrier():
    g = GraphBuilder(seed=22)
    y = g.op("Div", [g.init("one", np.ones((), dtype=np.float32)), _stem(g)], name="inv")
    model = g.build([g.conv(y, 4, name="c2")])
    result = partition(model)
    assert not result.groups[0].prunable
    assert "Div node 'inv' divides a constant by channels" in result.groups[0].reason


def test_div_by_same_space_is_a_barrier():
    g = GraphBuilder(seed=22)
    _, (a, b) = _branches(g, 2)
    model = g.build([g.conv(g.op("Div", [a, b], name="ratio"), 4, name="c3")])
    result = partition(model)
    reason = group_with(result, "b0.weight", "producer").reason
    assert "Div node 'ratio' divides by a tensor of the same channels" in reason


@pytest.mark.parametrize(("op_type", "value", "prunable"), [("Max", 0.0, True),
                                                            ("Max", 0.5, False),
                                                            ("Min", 0.0, True),
                                                            ("Min", -0.5, False)])
def test_max_min_with_a_scalar(op_type, value, prunable):
    g = GraphBuilder(seed=23)
    k = g.init("k", np.array(value, dtype=np.float32))
    y = g.op(op_type, [_stem(g), k], name="bound")
    model = g.build([g.conv(y, 4, name="c2")])
    result = partition(model)
    assert _sizes(result) == [(8, prunable), (4, False)]
    if prunable:
        assert_invariant(model, result)
    else:
        assert f"{op_type} node 'bound'" in result.groups[0].reason


def test_mul_by_runtime_broadcast_tensor_keeps_zero():
    """x * s with s (1, 1, H, W) from the input: zero stays zero."""
    g = GraphBuilder(seed=24)
    x = g.input("x", [1, 3, 6, 6])
    mask = g.op("ReduceMean", [x], axes=[1], keepdims=1)
    y = g.op("Mul", [g.conv(x, 8, k=3, pad=1, name="c1"), mask], name="gate")
    model = g.build([g.conv(y, 4, name="c2")])
    result = partition(model)
    assert _sizes(result) == [(8, True), (4, False)]
    assert_invariant(model, result)


def test_add_of_runtime_broadcast_tensor_is_not_prunable():
    g = GraphBuilder(seed=24)
    x = g.input("x", [1, 3, 6, 6])
    shift = g.op("ReduceMean", [x], axes=[1], keepdims=1)
    y = g.op("Add", [g.conv(x, 8, k=3, pad=1, name="c1"), shift], name="shift")
    model = g.build([g.conv(y, 4, name="c2")])
    result = partition(model)
    assert _sizes(result) == [(8, False), (4, False)]
    assert "Add node 'shift' adds a run-time tensor" in result.groups[0].reason


def test_x_times_hard_sigmoid_x_is_prunable():
    """A hand-written hard swish: x * HardSigmoid(x) is 0 where x is 0 (0 * 0.5)."""
    g = GraphBuilder(seed=25)
    stem = _stem(g)
    y = g.op("Mul", [stem, g.op("HardSigmoid", [stem])], name="hswish")
    model = g.build([g.conv(y, 4, name="c2")])
    result = partition(model)
    assert _sizes(result) == [(8, True), (4, False)]
    assert_invariant(model, result)


def test_dirt_survives_a_depthwise_conv():
    """Sigmoid's 0.5 convolved by an attached depthwise kernel is still not 0."""
    g = GraphBuilder(seed=26)
    y = g.conv(g.op("Sigmoid", [_stem(g)], name="sig"), 8, k=3, pad=1, group=8, name="dw")
    model = g.build([g.conv(y, 4, name="c2")])
    result = partition(model)
    assert _sizes(result) == [(8, False), (4, False)]
    assert "Sigmoid node 'sig' maps 0 to 0.5" in result.groups[0].reason
    assert gap_of(model, result.groups[0]) > 1e-3


def test_constant_node_operand_is_a_member_named_by_its_output():
    """Exporters store small constants as Constant nodes: the member is named by the output."""
    g = GraphBuilder(seed=27)
    rng = np.random.default_rng(0)
    gamma = g.const("gamma_const", rng.uniform(0.2, 0.6, (8, 1, 1)).astype(np.float32))
    y = g.op("Mul", [_stem(g), gamma], name="layer_scale")
    model = g.build([g.conv(y, 4, name="c2")])
    result = partition(model)
    assert _sizes(result) == [(8, True), (4, False)]
    assert roles(result.groups[0])["gamma_const"] == "producer"
    assert_invariant(model, result)
