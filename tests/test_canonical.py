"""The canonical graph: exporter spellings of computed constants fold into initializers, so the
groups found are the groups shrink slices; quantized models are refused in one line."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from onnxoto.canonical import canonicalize, scan
from onnxoto.cli import main
from onnxoto.errors import OnnxotoError
from onnxoto.partition import partition
from onnxoto.shrink import shrink
from tests.graphs import GraphBuilder, assert_invariant, computed_bias, group_with, roles
from tests.invariance import removal_mask


def _conv(g: GraphBuilder, x: str, c_out: int, name: str, bias: str | None = None) -> str:
    """A 3x3 Conv whose bias is ``bias`` ("computed": torch 2.14's run-time zeros)."""
    w = g.weight(f"{name}.weight", [c_out, g.shape(x)[1], 3, 3])
    inputs = [x, w]
    if bias == "computed":
        inputs.append(computed_bias(g, "x", w))
    elif bias is not None:
        inputs.append(bias)
    return g.op("Conv", inputs, name=name, kernel_shape=[3, 3], pads=[1] * 4)


def torch214_net() -> onnx.ModelProto:
    """conv(8) -> relu -> conv(16) -> bn -> relu -> pool -> gemm(10), both convs with the
    computed bias of the torch 2.14 dynamo exporter."""
    g = GraphBuilder(seed=1)
    x = g.input("x", [1, 3, 8, 8])
    y = g.op("Relu", [_conv(g, x, 8, "c1", "computed")])
    y = g.op("Relu", [g.bn(_conv(g, y, 16, "c2", "computed"), name="bn2")])
    y = g.op("Flatten", [g.op("GlobalAveragePool", [y])])
    return g.build([g.gemm(y, 10, trans_b=True, name="fc")])


def identity_fed_net() -> onnx.ModelProto:
    """The legacy exporter's merge of equal parameters: one initializer reaches the biases of
    two Convs through one Identity each."""
    g = GraphBuilder(seed=2)
    x = g.input("x", [1, 3, 8, 8])
    shared = g.init("merged", np.full(8, 0.25, dtype=np.float32))
    b1 = g.op("Identity", [shared], name="id1")
    b2 = g.op("Identity", [shared], name="id2")
    y = g.op("Relu", [_conv(g, x, 8, "c1", b1)])
    y = g.op("Relu", [_conv(g, y, 8, "c2", b2)])
    y = g.op("Flatten", [g.op("GlobalAveragePool", [y])])
    return g.build([g.gemm(y, 4, name="fc")])


def cast_like_scale_net() -> onnx.ModelProto:
    """A per-channel scale stored as a constant of another dtype and cast like the input."""
    g = GraphBuilder(seed=3)
    x = g.input("x", [1, 3, 8, 8])
    scale = g.const("scale64", np.linspace(0.5, 1.5, 8).reshape(1, 8, 1, 1))
    y = g.op("Mul", [_conv(g, x, 8, "c1"), g.op("CastLike", [scale, x], name="cast_scale")])
    y = g.op("Flatten", [g.op("GlobalAveragePool", [g.op("Relu", [y])])])
    return g.build([g.gemm(y, 4, name="fc")])


def test_torch214_computed_bias_folds_into_a_member():
    model = torch214_net()
    assert scan(model).foldable
    result = partition(model)
    ops = {n.op_type for n in result.model.graph.node}
    assert not ops & {"CastLike", "Expand", "Shape", "Constant"}
    assert [g.size for g in result.prunable] == [8, 16]
    c1 = group_with(result, "c1.weight", "producer")
    bias = next(m.initializer for m in c1.by_role("producer") if m.initializer != "c1.weight")
    value = numpy_helper.to_array(next(t for t in result.model.graph.initializer
                                       if t.name == bias))
    assert value.shape == (8,) and value.dtype == np.float32 and not value.any()
    assert_invariant(result.model, result)


def test_shrink_of_the_original_slices_the_canonical_graph():
    """partition and shrink canonicalize the same way, so masks made on the groups of the
    original model apply to it; the slim model is the canonical graph shrunk."""
    model = torch214_net()
    before = model.SerializeToString()
    result = partition(model)
    masks = {g.id: removal_mask(g, g.id) for g in result.prunable}
    outcome = shrink(model, masks, result=result)
    assert outcome.passed, outcome.comparison.summary()
    assert model.SerializeToString() == before
    assert "CastLike" not in {n.op_type for n in outcome.model.graph.node}
    convs = {t.name: tuple(t.dims) for t in outcome.model.graph.initializer}
    assert convs["c1.weight"][0] == int(masks[0].sum())


def test_identity_fed_shared_parameters_become_one_initializer_per_use():
    model = identity_fed_net()
    result = partition(model)
    names = {t.name for t in result.model.graph.initializer}
    assert "merged" not in names and {"id1_out", "id2_out"} <= names
    assert roles(group_with(result, "c1.weight", "producer"))["id1_out"] == "producer"
    assert [g.size for g in result.prunable] == [8, 8]
    assert_invariant(result.model, result)


def test_weights_listed_as_graph_inputs_are_not_left_behind():
    """keep_initializers_as_inputs: the merged initializer folded away must not stay a graph
    input, or the canonical model would ask for it at run time."""
    model = identity_fed_net()
    model.graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                             for t in model.graph.initializer)
    result = partition(model)
    assert [i.name for i in result.model.graph.input] == [
        "x", *(n for n in (i.name for i in model.graph.input[1:]) if n != "merged")]
    assert_invariant(result.model, result)


def test_cast_like_of_a_constant_scale_becomes_an_attached_scale():
    model = cast_like_scale_net()
    result = partition(model)
    assert "CastLike" not in {n.op_type for n in result.model.graph.node}
    c1 = group_with(result, "c1.weight", "producer")
    assert c1.prunable and c1.size == 8
    assert "cast_scale_out" in roles(c1)
    assert_invariant(result.model, result)


def test_nothing_to_fold_costs_nothing():
    g = GraphBuilder(seed=4)
    x = g.input("x", [1, 3, 8, 8])
    w = g.weight("w", [4, 3])
    wt = g.op("Transpose", [w], perm=[1, 0])  # a single-use weight view keeps its name
    model = g.build([g.op("MatMul", [g.op("Flatten", [g.op("GlobalAveragePool", [x])]), wt])])
    assert not scan(model)
    assert canonicalize(model) is model


def test_random_and_custom_ops_are_not_folded():
    g = GraphBuilder(seed=6)
    x = g.input("x", [1, 3, 8, 8])
    shape = g.init("like", np.zeros((1, 4, 8, 8), np.float32))
    noise = g.op("RandomUniformLike", [shape], name="noise")
    g.op("Mystery", [shape], name="odd", domain="com.example")
    model = g._model([g.op("Add", [g.conv(x, 4, name="c1"), noise])], check=False)
    assert not scan(model).foldable


def test_a_failed_fold_leaves_the_graph_as_it_was(monkeypatch):
    """Folding is an improvement, never a risk: if onnxruntime fails, the computed bias stays
    computed (its groups barred) and a warning says why."""
    import onnxoto.canonical as canonical

    def broken(small, boundary):
        raise RuntimeError("no luck")

    monkeypatch.setattr(canonical, "_evaluate", broken)
    model = torch214_net()
    with pytest.warns(UserWarning, match="constant folding failed \\(no luck\\)"):
        result = partition(model)
    assert "CastLike" in {n.op_type for n in result.model.graph.node}
    for conv in ("c1", "c2"):
        group = next(g for g in result.groups if any(m.node == conv for m in g.members
                                                     if m.role == "producer"))
        assert not group.prunable
        assert f"Conv node '{conv}' reads '" in group.reason
        assert "computed at run time" in group.reason


def test_copy_unless_in_place():
    model = identity_fed_net()
    before = model.SerializeToString()
    copy = canonicalize(model)
    assert copy is not model and model.SerializeToString() == before
    same = canonicalize(model, in_place=True)
    assert same is model and model.SerializeToString() == copy.SerializeToString()


def test_partition_canonicalizes_a_proto_in_place_only_when_asked():
    """partition(proto) leaves the caller's proto alone (a copy is canonicalized);
    in_place=True makes the caller's proto the canonical model, with the same groups."""
    model = identity_fed_net()
    before = model.SerializeToString()
    copied = partition(model)
    assert copied.model is not model and model.SerializeToString() == before
    kept = partition(model, in_place=True)
    assert kept.model is model and model.SerializeToString() != before
    assert model.SerializeToString() == copied.model.SerializeToString()
    assert [(g.prunable, g.members) for g in kept.groups] == [
        (g.prunable, g.members) for g in copied.groups]


def qdq_model() -> onnx.ModelProto:
    g = GraphBuilder(seed=5)
    x = g.input("x", [1, 3, 8, 8])
    scale, zero = g.init("s", np.float32(0.05)), g.init("z", np.uint8(128))
    q = g.op("QuantizeLinear", [x, scale, zero], name="q_in")
    y = g.conv(g.op("DequantizeLinear", [q, scale, zero], name="dq_in"), 4, name="c1")
    return g.build([y])


def test_quantized_model_is_refused_in_one_line(tmp_path):
    model = qdq_model()
    with pytest.raises(OnnxotoError, match=r"quantized \(QDQ\) model .*prune the float model, "
                                           r"then quantize; see README"):
        partition(model)
    with pytest.raises(OnnxotoError, match="quantized"):
        shrink(model, {})
    path = tmp_path / "qdq.onnx"
    onnx.save(model, str(path))
    for command in (["partition"], ["mask", "--ratio", "0.5", "-o", str(tmp_path / "m.npz")]):
        out = CliRunner().invoke(main, [command[0], str(path), *command[1:]])
        assert out.exit_code == 2, out.output
        lines = [line for line in out.output.splitlines() if line.strip()]
        assert len(lines) == 1 and "prune the float model, then quantize" in lines[0]


def test_qlinear_conv_is_refused():
    x = helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 3, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.UINT8, [1, 2, 4, 4])
    names = ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"]
    node = helper.make_node("QLinearConv", names, ["y"], name="qconv")
    inits = [numpy_helper.from_array(v, n) for n, v in [
        ("xs", np.float32(0.1)), ("xz", np.uint8(0)), ("w", np.ones((2, 3, 1, 1), np.uint8)),
        ("ws", np.float32(0.1)), ("wz", np.uint8(0)), ("ys", np.float32(0.1)),
        ("yz", np.uint8(0))]]
    model = helper.make_model(helper.make_graph([node], "q", [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(OnnxotoError, match="QLinearConv node 'qconv'"):
        partition(model)


def test_a_bias_fed_at_run_time_keeps_its_channels():
    """What no folding can make constant (a bias that is a graph input) bars its group: shrink
    could not slice it, and zeroing the weight would not zero the channel."""
    g = GraphBuilder(seed=7)
    x, b = g.input("x", [1, 3, 8, 8]), g.input("b", [8])
    y = g.op("Relu", [_conv(g, x, 8, "c1", b)])
    model = g.build([g.conv(y, 4, name="c2")])
    c1 = group_with(partition(model), "c1.weight", "producer")
    assert not c1.prunable
    assert "Conv node 'c1' reads 'b' computed at run time" in c1.reason


def test_a_node_folded_only_in_part_stays_whole(monkeypatch):
    """A Split whose small output folds but whose large one does not (over the size limit)
    keeps computing both: an output defined by a node and an initializer is invalid ONNX."""
    import onnxoto.canonical as canonical

    monkeypatch.setattr(canonical, "FOLD_LIMIT_BYTES", 20)
    g = GraphBuilder(seed=8)
    x = g.input("x", [1, 3, 8, 8])
    both = g.init("both", np.linspace(-1, 1, 12).astype(np.float32))
    small, large = g.op("Split", [both, g.init("sizes", np.array([4, 8]))], outputs=2,
                        name="split")
    y = g.op("Relu", [_conv(g, x, 4, "c1", small)])
    model = g.build([g.conv(y, 8, name="c2"), large])
    canonical_model = canonicalize(model)
    onnx.checker.check_model(canonical_model, full_check=True)
    assert "Split" in {n.op_type for n in canonical_model.graph.node}
    assert not group_with(partition(model), "c1.weight", "producer").prunable


def test_a_cast_like_of_unknown_type_folds_nothing_after_it(recwarn):
    """CastLike(0, y) where y's type is known to nobody (a custom op's output): the cast and
    everything it feeds stay computed, and the rest of the constant part still runs."""
    g = GraphBuilder(seed=9)
    x = g.input("x", [1, 3, 8, 8])
    odd = g.op("Mystery", [x], name="odd", domain="com.example")
    w = g.weight("c1.weight", [4, 3, 3, 3])
    zero = g.const("zero", np.array(0.0, dtype=np.float32))
    bias = g.op("Expand", [g.op("CastLike", [zero, odd], name="cast"),
                           g.op("Shape", [w], start=0, end=1)], name="bias")
    scale = g.op("Cast", [g.const("scale64", np.full((1, 4, 1, 1), 2.0))], name="scale", to=1)
    y = g.op("Conv", [x, w, bias], name="c1", kernel_shape=[3, 3], pads=[1] * 4)
    model = g._model([g.op("Mul", [y, scale])], check=False)
    ops = [n.op_type for n in canonicalize(model).graph.node]
    assert ops.count("CastLike") == 1 and ops.count("Expand") == 1
    assert "Cast" not in ops  # the independent constant scale was folded
    assert not [w for w in recwarn if "constant folding failed" in str(w.message)]
