"""Layout rules (Flatten, Reshape, Transpose, Squeeze, Concat, Split, Slice, Pad, Resize) and the
barriers: unknown ops, graph outputs, shared initializers."""

from __future__ import annotations

import numpy as np
import pytest

from onnxoto.groups import IndexMap
from onnxoto.partition import partition
from tests.graphs import GraphBuilder, assert_invariant, gap_of, group_with, member, roles


def _stem(g: GraphBuilder, channels: int = 8, size: int = 4) -> str:
    """x (1, 3, size, size) -> Conv c1 -> Relu."""
    x = g.input("x", [1, 3, size, size])
    return g.op("Relu", [g.conv(x, channels, k=3, pad=1, name="c1")])


def _sizes(result) -> list[tuple[int, bool]]:
    return [(grp.size, grp.prunable) for grp in result.groups]


def _ints(g: GraphBuilder, name: str, values) -> str:
    return g.init(name, np.array(values, dtype=np.int64))


# --- Flatten / Reshape ---------------------------------------------------------------------
@pytest.mark.parametrize("trans_b", [False, True])
def test_flatten_then_gemm_expands_each_channel_to_hw_features(trans_b):
    g = GraphBuilder(seed=50)
    y = g.op("Flatten", [_stem(g)], axis=1)
    model = g.build([g.gemm(y, 5, trans_b=trans_b, name="fc")])
    result = partition(model)
    assert _sizes(result) == [(8, True), (5, False)]
    fc = member(result.groups[0], "fc.weight")
    assert (fc.role, fc.axis, fc.index_map) == ("consumer", 1 if trans_b else 0,
                                                IndexMap(block=16))
    assert list(fc.index_map.indices([2])) == list(range(32, 48))
    assert_invariant(model, result)


@pytest.mark.parametrize("target", [[1, -1], [0, -1], [1, 128]])
def test_reshape_merging_c_h_w_gives_block_hw(target):
    g = GraphBuilder(seed=51)
    y = g.op("Reshape", [_stem(g), _ints(g, "shape", target)], name="view")
    model = g.build([g.gemm(y, 5, name="fc")])
    result = partition(model)
    assert _sizes(result) == [(8, True), (5, False)]
    assert member(result.groups[0], "fc.weight").index_map == IndexMap(block=16)
    assert_invariant(model, result)


def test_reshape_keeping_channels_then_tokens_matmul():
    """(1, 8, 4, 4) -> (1, 8, 16) -> Transpose -> (1, 16, 8) -> MatMul: channels last."""
    g = GraphBuilder(seed=52)
    y = g.op("Reshape", [_stem(g), _ints(g, "shape", [1, 8, 16])])
    y = g.op("Transpose", [y], perm=[0, 2, 1])
    model = g.build([g.matmul(y, 5, name="fc")])
    result = partition(model)
    assert _sizes(result) == [(8, True), (5, False)]
    assert member(result.groups[0], "fc.weight").axis == 0
    assert member(result.groups[0], "fc.weight").index_map == IndexMap()
    assert_invariant(model, result)


def test_reshape_splitting_the_channel_axis_ties_each_head():
    """(1, 8, 4, 4) -> (1, 2, 4, 16): 2 heads of 4 channels; a head is one channel, and the
    reshape back gives each head its block of 4 consumer rows."""
    g = GraphBuilder(seed=53)
    y = g.op("Reshape", [_stem(g), _ints(g, "heads_shape", [1, 2, 4, 16])], name="heads")
    y = g.op("Reshape", [g.op("Relu", [y]), _ints(g, "back", [1, 8, 4, 4])])
    model = g.build([g.conv(y, 5, name="c2")])
    result = partition(model)
    assert _sizes(result) == [(2, True), (5, False)]
    assert member(result.groups[0], "c1.weight").index_map == IndexMap(block=4)
    assert member(result.groups[0], "c2.weight").index_map == IndexMap(block=4)
    assert_invariant(model, result)


def test_reshape_mixing_the_channel_axis_with_space_is_a_barrier():
    """(1, 6, 4, 4) -> (1, 4, 24): no axis holds whole channels any more."""
    g = GraphBuilder(seed=53)
    y = g.op("Reshape", [_stem(g, channels=6), _ints(g, "mixed", [1, 4, 24])], name="mix")
    y = g.op("Reshape", [g.op("Relu", [y]), _ints(g, "back", [1, 6, 4, 4])])
    model = g.build([g.conv(y, 5, name="c2")])
    result = partition(model)
    assert _sizes(result) == [(6, False), (5, False)]
    assert "Reshape node 'mix' splits or mixes the channel axis" in result.groups[0].reason


def _runtime_view(g: GraphBuilder, stem: str, tail: list[int]) -> str:
    """torch's view(B, ...): Shape -> Gather -> Unsqueeze -> Concat -> Reshape."""
    batch = g.op("Gather", [g.op("Shape", [stem]), _ints(g, "zero", 0)], axis=0)
    batch = g.op("Unsqueeze", [batch, _ints(g, "axis0", [0])])
    target = g.op("Concat", [batch, _ints(g, "tail", tail)], axis=0)
    return g.op("Reshape", [stem, target], name="view")


def test_reshape_with_runtime_view_b_minus_one_is_followed():
    """OTO crashes on view(B, -1) -> Linear; the target adapts at run time, so it is prunable."""
    g = GraphBuilder(seed=54)
    y = _runtime_view(g, _stem(g), [-1])
    model = g.build([g.op("Gemm", [y, g.weight("fc.weight", [8 * 16, 5])], name="fc")])
    result = partition(model)
    assert _sizes(result) == [(8, True), (5, False)]
    assert member(result.groups[0], "fc.weight").index_map.block == 16
    assert_invariant(model, result)


def test_reshape_with_runtime_target_fixing_channels_asks_for_static_shapes():
    g = GraphBuilder(seed=54)
    y = _runtime_view(g, _stem(g), [8, -1])
    model = g.build([g.conv(g.op("Unsqueeze", [y, _ints(g, "axis3", [3])]), 5, name="c2")])
    result = partition(model)
    reason = result.groups[0].reason
    assert not result.groups[0].prunable
    assert "Reshape node 'view' takes its target shape from a run-time computation" in reason
    assert "fixes the channel count" in reason and "static shapes" in reason


# --- Transpose / Squeeze / Unsqueeze -------------------------------------------------------
def test_channels_last_transpose_then_matmul_stays_prunable():
    g = GraphBuilder(seed=55)
    y = g.op("Transpose", [_stem(g)], perm=[0, 2, 3, 1])
    y = g.op("Relu", [g.matmul(y, 6, name="fc1")])
    model = g.build([g.matmul(y, 5, name="fc2")])
    result = partition(model)
    assert _sizes(result) == [(8, True), (6, True), (5, False)]
    assert roles(result.groups[0]) == {"c1.weight": "producer", "fc1.weight": "consumer"}
    assert member(result.groups[0], "fc1.weight").axis == 0
    assert roles(result.groups[1]) == {"fc1.weight": "producer", "fc2.weight": "consumer"}
    assert_invariant(model, result)


def test_transpose_back_to_nchw_then_conv():
    g = GraphBuilder(seed=56)
    y = g.op("Transpose", [_stem(g)], perm=[0, 2, 3, 1])
    y = g.op("Transpose", [g.op("Relu", [y])], perm=[0, 3, 1, 2])
    model = g.build([g.conv(y, 5, name="c2")])
    result = partition(model)
    assert _sizes(result) == [(8, True), (5, False)]
    assert_invariant(model, result)


def test_squeeze_then_unsqueeze_track_the_axis():
    """(1, 8, 1, 1) -Squeeze[2, 3]-> (1, 8) -Unsqueeze[0]-> (1, 1, 8) -> MatMul."""
    g = GraphBuilder(seed=57)
    y = g.op("GlobalAveragePool", [_stem(g)])
    y = g.op("Squeeze", [y, _ints(g, "sq_axes", [2, 3])])
    y = g.op("Unsqueeze", [y, _ints(g, "unsq_axes", [0])])
    model = g.build([g.matmul(y, 5, name="fc")])
    result = partition(model)
    assert _sizes(result) == [(8, True), (5, False)]
    assert member(result.groups[0], "fc.weight").axis == 0
    assert_invariant(model, result)


def test_unsqueeze_negative_axis_then_squeeze_without_axes():
    """(1, 8, 1, 1) -Squeeze()-> (8,) -Unsqueeze[-1]-> (8, 1) -Unsqueeze[0]-> (1, 8, 1)."""
    g = GraphBuilder(seed=57)
    y = g.op("Squeeze", [g.op("GlobalMaxPool", [_stem(g)])])
    y = g.op("Unsqueeze", [y, _ints(g, "last", [-1])])
    y = g.op("Unsqueeze", [y, _ints(g, "first", [0])])
    y = g.op("Unsqueeze", [y, _ints(g, "spatial", [3])])
    model = g.build([g.conv(y, 5, name="c2")])
    result = partition(model)
    assert _sizes(result) == [(8, True), (5, False)]
    assert_invariant(model, result)


def test_squeezing_the_channel_axis_is_a_barrier():
    g = GraphBuilder(seed=57)
    y = g.op("Squeeze", [_stem(g, channels=1), _ints(g, "axes", [1])], name="sq")
    model = g.build([g.op("Relu", [g.conv(g.op("Unsqueeze", [y, _ints(g, "a", [1])]), 4)])])
    result = partition(model)
    assert "Squeeze node 'sq' squeezes the channel axis" in result.groups[0].reason


# --- Concat --------------------------------------------------------------------------------
def _two_branches(g: GraphBuilder) -> tuple[str, str]:
    x = g.input("x", [1, 3, 4, 4])
    a = g.op("Relu", [g.conv(x, 4, k=3, pad=1, name="c1")])
    b = g.op("Relu", [g.conv(x, 6, k=3, pad=1, name="c2")])
    return a, b


def test_concat_on_channels_lays_groups_end_to_end():
    g = GraphBuilder(seed=58)
    y = g.op("Concat", [*_two_branches(g)], axis=1, name="cat")
    model = g.build([g.conv(y, 5, name="c3")])
    result = partition(model)
    assert _sizes(result) == [(4, True), (6, True), (5, False)]
    first, second = group_with(result, "c1.weight"), group_with(result, "c2.weight")
    for grp, offset in ((first, 0), (second, 4)):
        c3 = member(grp, "c3.weight")
        assert (c3.role, c3.axis, c3.index_map) == ("consumer", 1, IndexMap(offset=offset))
    assert_invariant(model, result)


def test_batchnorm_after_concat_is_split_across_groups():
    g = GraphBuilder(seed=59)
    y = g.bn(g.op("Concat", [*_two_branches(g)], axis=1), name="bn")
    model = g.build([g.conv(g.op("Relu", [y]), 5, name="c3")])
    result = partition(model)
    assert _sizes(result) == [(4, True), (6, True), (5, False)]
    for name, offset in (("c1.weight", 0), ("c2.weight", 4)):
        grp = group_with(result, name)
        for param, role in (("weight", "producer"), ("bias", "producer"),
                            ("running_mean", "attached"), ("running_var", "attached")):
            m = member(grp, f"bn.{param}")
            assert (m.role, m.axis, m.index_map) == (role, 0, IndexMap(offset=offset))
    assert_invariant(model, result)


def test_concat_with_graph_input_keeps_only_the_conv_part():
    g = GraphBuilder(seed=60)
    y = g.op("Concat", [_stem(g), "x"], axis=1, name="cat")
    model = g.build([g.conv(y, 5, name="c2")])
    result = partition(model)
    assert _sizes(result) == [(8, True), (3, False), (5, False)]
    assert member(result.groups[0], "c2.weight").index_map == IndexMap()
    passthrough = result.groups[1]
    assert member(passthrough, "c2.weight").index_map == IndexMap(offset=8)
    assert "Concat node 'cat' concatenates channels of 'x'" in passthrough.reason
    assert_invariant(model, result)


def test_concat_of_a_tensor_with_itself_strides_the_consumer():
    g = GraphBuilder(seed=61)
    stem = _stem(g)
    model = g.build([g.conv(g.op("Concat", [stem, stem], axis=1), 5, name="c2")])
    result = partition(model)
    assert _sizes(result) == [(8, True), (5, False)]
    c2 = member(result.groups[0], "c2.weight")
    assert list(c2.index_map.indices([3])) == [3, 11]
    assert_invariant(model, result)


def test_concat_on_spatial_axis_joins_the_spaces():
    g = GraphBuilder(seed=62)
    x = g.input("x", [1, 3, 4, 4])
    a = g.op("Relu", [g.conv(x, 6, name="c1")])
    b = g.op("Relu", [g.conv(x, 6, name="c2")])
    model = g.build([g.conv(g.op("Concat", [a, b], axis=2), 5, name="c3")])
    result = partition(model)
    assert _sizes(result) == [(6, True), (5, False)]
    assert roles(result.groups[0]) == {"c1.weight": "producer", "c2.weight": "producer",
                                       "c3.weight": "consumer"}
    assert_invariant(model, result)


# --- Split / Slice -------------------------------------------------------------------------
def test_split_that_follows_a_concat_gives_each_branch_back():
    g = GraphBuilder(seed=63)
    y = g.op("Concat", [*_two_branches(g)], axis=1)
    p, q = g.op("Split", [y, _ints(g, "split", [4, 6])], outputs=2, axis=1, name="split")
    model = g.build([g.op("Add", [g.conv(p, 5, name="c3"), g.conv(q, 5, name="c4")])])
    result = partition(model)
    assert _sizes(result) == [(4, True), (6, True), (5, False)]
    assert roles(group_with(result, "c1.weight")) == {"c1.weight": "producer",
                                                      "c3.weight": "consumer"}
    assert roles(group_with(result, "c2.weight")) == {"c2.weight": "producer",
                                                      "c4.weight": "consumer"}
    assert_invariant(model, result)


def test_split_on_spatial_axis_passes_channels():
    g = GraphBuilder(seed=64)
    p, q = g.op("Split", [_stem(g), _ints(g, "split", [2, 2])], outputs=2, axis=2)
    model = g.build([g.op("Add", [g.conv(p, 5, name="c3"), g.conv(q, 5, name="c4")])])
    result = partition(model)
    assert _sizes(result) == [(8, True), (5, False)]
    assert roles(result.groups[0]) == {"c1.weight": "producer", "c3.weight": "consumer",
                                       "c4.weight": "consumer"}
    assert_invariant(model, result)


def _stem_groups(result):
    return [grp for grp in result.groups
            if any(m.initializer == "c1.weight" for m in grp.by_role("producer"))]


def test_split_on_channel_axis_hands_each_output_a_range():
    """Conv c1 (8) -> Split [3, 5] on axis 1 -> c2 / c3: channels 0..2 feed c2, 3..7 feed c3."""
    g = GraphBuilder(seed=65)
    p, q = g.op("Split", [_stem(g), _ints(g, "split", [3, 5])], outputs=2, axis=1, name="split")
    model = g.build([g.op("Add", [g.conv(p, 5, name="c2"), g.conv(q, 5, name="c3")])])
    result = partition(model)
    stem = _stem_groups(result)
    assert sum(grp.size for grp in stem) == 8
    assert all(grp.prunable for grp in stem), [grp.reason for grp in stem]
    consumers = {m.initializer for grp in stem for m in grp.by_role("consumer")}
    assert consumers == {"c2.weight", "c3.weight"}
    assert_invariant(model, result)


def test_slice_on_channel_axis_keeps_a_range():
    g = GraphBuilder(seed=66)
    y = g.op("Slice", [_stem(g), _ints(g, "starts", [2]), _ints(g, "ends", [6]),
                       _ints(g, "axes", [1])], name="slice")
    model = g.build([g.conv(y, 5, name="c2")])
    result = partition(model)
    stem = _stem_groups(result)
    assert sum(grp.size for grp in stem) == 8
    assert all(grp.prunable for grp in stem), [grp.reason for grp in stem]
    assert_invariant(model, result, dead_ok=True)  # channels 0, 1, 6, 7 are read by none


def test_slice_of_whole_channel_range_passes():
    g = GraphBuilder(seed=66)
    y = g.op("Slice", [_stem(g), _ints(g, "starts", [0, 1]), _ints(g, "ends", [99, 3]),
                       _ints(g, "axes", [1, 2])])
    model = g.build([g.conv(y, 5, name="c2")])
    result = partition(model)
    assert _sizes(result) == [(8, True), (5, False)]
    assert_invariant(model, result)


def test_slice_on_spatial_axis_passes():
    g = GraphBuilder(seed=67)
    y = g.op("Slice", [_stem(g), _ints(g, "starts", [1]), _ints(g, "ends", [3]),
                       _ints(g, "axes", [-1])])
    model = g.build([g.conv(y, 5, name="c2")])
    result = partition(model)
    assert _sizes(result) == [(8, True), (5, False)]
    assert_invariant(model, result)


def test_slice_with_step_2_on_channels_is_not_prunable():
    g = GraphBuilder(seed=68)
    y = g.op("Slice", [_stem(g), _ints(g, "starts", [0]), _ints(g, "ends", [8]),
                       _ints(g, "axes", [1]), _ints(g, "steps", [2])], name="slice")
    model = g.build([g.conv(y, 5, name="c2")])
    result = partition(model)
    assert _sizes(result) == [(8, False), (5, False)]
    assert "Slice node 'slice' slices channels with a step other than 1" in \
        result.groups[0].reason


@pytest.mark.parametrize(("c_out", "sizes"), [(12, [(4, True)]), (10, [(3, True), (1, True)])])
def test_ghost_module_slice_follows_the_concat(c_out, sizes):
    """GhostNet: primary 1x1 (4 channels), cheap depthwise (2 copies each), Concat, Slice to
    c_out. Sliced to 10, channel 3 loses its cheap copies: it becomes a group of its own, so
    every group maps onto the next conv the same way (primary offset 0, copies offset 4)."""
    g = GraphBuilder(seed=60)
    primary = g.op("Relu", [g.bn(g.conv(g.input("x", [1, 3, 6, 6]), 4, name="c1"))])
    cheap = g.op("Relu", [g.conv(primary, 8, k=3, pad=1, group=4, bias=True, name="dw")])
    both = g.op("Concat", [primary, cheap], axis=1)
    y = g.op("Slice", [both, _ints(g, "s0", [0]), _ints(g, "s1", [c_out]), _ints(g, "ax", [1])])
    model = g.build([g.conv(y, 5, name="c2")])
    result = partition(model)
    assert _sizes(result)[:-1] == sizes
    first = result.groups[0]
    assert sorted((m.index_map.offset, m.index_map.block) for m in first.members
                  if m.initializer == "c2.weight") == [(0, 1), (4, 2)]
    assert_invariant(model, result)


# --- Pad / Resize / DepthToSpace ------------------------------------------------------------
@pytest.mark.parametrize("mode", ["constant", "reflect", "edge"])
def test_pad_on_spatial_axes_passes(mode):
    g = GraphBuilder(seed=69)
    y = g.op("Pad", [_stem(g), _ints(g, "pads", [0, 0, 1, 1, 0, 0, 1, 1])], mode=mode)
    model = g.build([g.conv(y, 5, name="c2")])
    result = partition(model)
    assert _sizes(result) == [(8, True), (5, False)]
    assert_invariant(model, result)


@pytest.mark.parametrize(("axes", "pads", "prunable"), [([2, 3], [1, 1, 1, 1], True),
                                                       ([1, 2], [1, 0, 1, 0], False)])
def test_pad_with_axes_input(axes, pads, prunable):
    g = GraphBuilder(seed=69, opset=18)
    y = g.op("Pad", [_stem(g), _ints(g, "pads", pads), "", _ints(g, "axes", axes)], name="pad")
    model = g.build([g.conv(y, 5, name="c2")])
    result = partition(model)
    assert _sizes(result) == [(8, prunable), (5, False)]
    if prunable:
        assert_invariant(model, result)
    else:
        assert "Pad node 'pad' pads the channel axis" in result.groups[0].reason


def test_pad_with_nonzero_value_then_consumer_is_not_prunable():
    g = GraphBuilder(seed=70)
    value = g.init("fill", np.array(1.0, dtype=np.float32))
    y = g.op("Pad", [_stem(g), _ints(g, "pads", [0, 0, 1, 1, 0, 0, 1, 1]), value], name="pad")
    model = g.build([g.conv(y, 5, name="c2")])
    result = partition(model)
    assert _sizes(result) == [(8, False), (5, False)]
    reason = result.groups[0].reason
    assert "Pad node 'pad' pads with a non-zero value" in reason
    assert "Conv node 'c2' reads that value" in reason
    assert gap_of(model, result.groups[0]) > 1e-3


def test_pad_on_channel_axis_is_a_barrier():
    g = GraphBuilder(seed=71)
    y = g.op("Pad", [_stem(g), _ints(g, "pads", [0, 1, 0, 0, 0, 1, 0, 0])], name="pad")
    model = g.build([g.conv(y, 5, name="c2")])
    result = partition(model)
    assert _sizes(result) == [(8, False), (5, False)]
    assert "Pad node 'pad' pads the channel axis" in result.groups[0].reason


@pytest.mark.parametrize("mode", ["nearest", "linear", "cubic"])
def test_resize_with_scales_passes(mode):
    g = GraphBuilder(seed=72)
    scales = g.init("scales", np.array([1, 1, 2, 2], dtype=np.float32))
    y = g.op("Resize", [_stem(g), "", scales], mode=mode)
    model = g.build([g.conv(y, 5, name="c2")])
    result = partition(model)
    assert _sizes(result) == [(8, True), (5, False)]
    assert_invariant(model, result)


def test_resize_crop_with_nonzero_extrapolation_dirties():
    g = GraphBuilder(seed=73)
    roi = g.init("roi", np.array([0, 0, -0.5, -0.5, 1, 1, 1.5, 1.5], dtype=np.float32))
    scales = g.init("scales", np.array([1, 1, 2, 2], dtype=np.float32))
    y = g.op("Resize", [_stem(g), roi, scales], name="crop", mode="linear",
             coordinate_transformation_mode="tf_crop_and_resize", extrapolation_value=1.0)
    model = g.build([g.conv(y, 5, name="c2")])
    result = partition(model)
    stem = result.groups[0]
    assert not stem.prunable and "Resize node 'crop'" in stem.reason, stem.reason


def test_resize_of_the_channel_axis_is_a_barrier():
    g = GraphBuilder(seed=74)
    scales = g.init("scales", np.array([1, 2, 1, 1], dtype=np.float32))
    y = g.op("Resize", [_stem(g), "", scales], name="up", mode="nearest")
    model = g.build([g.conv(y, 5, name="c2")])
    result = partition(model)
    assert "Resize node 'up' resizes the channel axis" in result.groups[0].reason


@pytest.mark.parametrize(("mode", "index_map"), [
    ("DCR", IndexMap(block=4, stride=2, step=1)),  # output c reads inputs c + k*C_out
    ("CRD", IndexMap(block=4)),  # output c reads inputs 4c .. 4c+3
])
def test_depth_to_space_ties_blocks_of_r_squared_channels(mode, index_map):
    g = GraphBuilder(seed=75)
    y = g.op("DepthToSpace", [_stem(g)], name="d2s", blocksize=2, mode=mode)
    model = g.build([g.conv(y, 5, name="c2")])
    result = partition(model)
    group = group_with(result, "c1.weight")
    assert group.prunable and group.size == 2
    assert member(group, "c1.weight").index_map == index_map
    assert member(group, "c2.weight").index_map == IndexMap()
    assert_invariant(model, result)


def test_space_to_depth_repeats_each_channel_r_squared_times():
    g = GraphBuilder(seed=75)
    y = g.op("SpaceToDepth", [_stem(g)], name="s2d", blocksize=2)
    model = g.build([g.conv(y, 5, name="c2")])
    result = partition(model)
    group = group_with(result, "c1.weight")
    assert group.prunable and group.size == 8
    assert member(group, "c2.weight").index_map == IndexMap(block=4, stride=8, step=1)
    assert_invariant(model, result)


def test_depth_to_space_of_channels_not_on_axis_1_is_a_barrier():
    g = GraphBuilder(seed=75)
    moved = g.op("Transpose", [_stem(g)], perm=[0, 2, 1, 3])
    y = g.op("DepthToSpace", [moved], name="d2s", blocksize=2)
    model = g.build([g.conv(y, 5, name="c2")])
    result = partition(model)
    assert "DepthToSpace node 'd2s' moves axis 1 but the channels are elsewhere" in \
        group_with(result, "c1.weight").reason


# --- Gather --------------------------------------------------------------------------------
def test_gather_of_another_axis_keeps_the_channels():
    """x[:, :, 0] of (1, 8, 4, 4): the channel axis stays 1; a (1, 8, 4) tensor reaches the
    next layer through Unsqueeze."""
    g = GraphBuilder(seed=77)
    row = g.op("Gather", [_stem(g), _ints(g, "row", 0)], name="pick", axis=2)
    y = g.op("Unsqueeze", [row, _ints(g, "axes", [2])])
    model = g.build([g.conv(y, 5, name="c2")])
    result = partition(model)
    assert _sizes(result) == [(8, True), (5, False)]
    assert_invariant(model, result)


def test_gather_of_the_channel_axis_is_a_barrier():
    g = GraphBuilder(seed=77)
    y = g.op("Gather", [_stem(g), _ints(g, "idx", [0, 2, 4])], name="pick", axis=1)
    model = g.build([g.conv(y, 5, name="c2")])
    result = partition(model)
    assert "Gather node 'pick' picks channels by index" in result.groups[0].reason


# --- barriers ------------------------------------------------------------------------------
@pytest.mark.parametrize("op_type", ["Einsum", "TopK", "CumSum"])
def test_unknown_op_is_a_barrier_naming_node_and_op(op_type):
    g = GraphBuilder(seed=76)
    stem = _stem(g)
    if op_type == "Einsum":
        y = g.op("Einsum", [stem], name="mystery", equation="bchw->bchw")
    elif op_type == "TopK":
        y = g.op("TopK", [stem, _ints(g, "k", [2])], name="mystery", outputs=2, axis=3)[0]
    else:
        y = g.op("CumSum", [stem, _ints(g, "axis", 1)], name="mystery")
    model = g.build([g.conv(y, 5, name="c2")])
    result = partition(model)
    assert not result.groups[0].prunable
    reason = result.groups[0].reason
    assert f"{op_type} node 'mystery' has no onnxoto rule" in reason, reason


def test_custom_domain_op_is_a_barrier():
    g = GraphBuilder(seed=77)
    y = g.declare(g.op("Swish", [_stem(g)], name="custom", domain="com.example"), [1, 8, 4, 4])
    model = g.build([g.conv(y, 5, name="c2")])
    result = partition(model)
    assert _sizes(result) == [(8, False), (5, False)]
    reason = result.groups[0].reason
    assert "Swish node 'custom' has no onnxoto rule" in reason
    assert "com.example" in reason


def test_reaching_a_graph_output_is_not_prunable():
    g = GraphBuilder(seed=78)
    stem = _stem(g)
    model = g.build([stem, g.conv(stem, 5, name="c2")])
    result = partition(model)
    assert _sizes(result) == [(8, False), (5, False)]
    assert f"channels reach graph output '{stem}'" in result.groups[0].reason
