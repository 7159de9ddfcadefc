"""Tensors read from inside If/Loop/Scan bodies are consumers the partition sees: their groups
are kept, with a reason naming the node, and shrink never writes a model onnxruntime rejects."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from onnxoto.partition import partition
from onnxoto.shrink import ShrinkOptions, shrink
from tests.graphs import GraphBuilder, assert_invariant, group_with
from tests.invariance import removal_mask


def _sum_body(name: str, read: str) -> onnx.GraphProto:
    """A branch returning sum(``read``) of the outer scope."""
    out = helper.make_tensor_value_info(f"{name}_sum", TensorProto.FLOAT, [])
    node = helper.make_node("ReduceSum", [read], [f"{name}_sum"], name=f"{name}_reduce",
                            keepdims=0)
    return helper.make_graph([node], name, [], [out])


def _zero_body(name: str) -> onnx.GraphProto:
    out = helper.make_tensor_value_info(f"{name}_zero", TensorProto.FLOAT, [])
    node = helper.make_node("Constant", [], [f"{name}_zero"], name=f"{name}_const",
                            value=numpy_helper.from_array(np.array(0.0, np.float32)))
    return helper.make_graph([node], name, [], [out])


def _net(side) -> onnx.ModelProto:
    """conv c1 -> relu -> conv c2 -> relu -> pool -> gemm, plus ``side(g, relu1)``: a node
    with a body reading an outer tensor, whose output is a second graph output."""
    g = GraphBuilder(seed=21)
    x = g.input("x", [1, 3, 8, 8])
    r1 = g.op("Relu", [g.conv(x, 8, k=3, pad=1, bias=True, name="c1")], name="r1")
    r2 = g.op("Relu", [g.conv(r1, 8, k=3, pad=1, bias=True, name="c2")], name="r2")
    y = g.op("Flatten", [g.op("GlobalAveragePool", [r2])])
    return g.build([g.gemm(y, 4, name="fc"), side(g, r1)])


def _if_reading(read: str):
    def side(g: GraphBuilder, r1: str) -> str:
        cond = g.input("cond", [], TensorProto.BOOL)
        return g.op("If", [cond], name="branch",
                    then_branch=_sum_body("then", read.replace("@r1", r1)),
                    else_branch=_zero_body("else"))
    return side


def _loop_with_if_reading(g: GraphBuilder, r1: str) -> str:
    """A Loop whose body holds an If whose branch reads the outer ``r1``: two levels down."""
    trip = g.init("trip", np.array(2, np.int64))
    start = g.init("start", np.array(0.0, np.float32))
    body_if = helper.make_node("If", ["keep_going"], ["inner"], name="inner_if",
                               then_branch=_sum_body("then", r1), else_branch=_zero_body("else"))
    add = helper.make_node("Add", ["acc_in", "inner"], ["acc_out"], name="acc")
    same = helper.make_node("Identity", ["keep_going"], ["keep_out"], name="keep")
    body = helper.make_graph(
        [body_if, add, same], "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("keep_going", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, [])],
        [helper.make_tensor_value_info("keep_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, [])])
    cond = g.input("cond", [], TensorProto.BOOL)
    total = g.op("Loop", [trip, cond, start], name="loop", body=body)
    return g.op("Reshape", [total, g.init("one", np.array([1], np.int64))])  # a known shape


def _loads_in_onnxruntime(model: onnx.ModelProto) -> None:
    session = ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    feeds = {"x": np.ones((1, 3, 8, 8), np.float32), "cond": np.array(True)}
    assert all(np.isfinite(o).all() for o in session.run(None, feeds))


def test_channels_read_in_an_if_body_are_kept():
    model = _net(_if_reading("@r1"))
    result = partition(model)
    c1 = group_with(result, "c1.weight", "producer")
    assert not c1.prunable
    assert "If node 'branch' reads 'r1_out' inside its subgraph" in c1.reason
    assert group_with(result, "c2.weight", "producer").prunable
    assert any(r["kind"] == "subgraph" for r in result.summary["reasons_by_kind"])
    assert_invariant(model, result)


def test_shrink_never_writes_a_model_onnxruntime_rejects():
    model = _net(_if_reading("@r1"))
    result = partition(model)
    masks = {g.id: removal_mask(g, g.id) for g in result.prunable}
    outcome = shrink(model, masks, options=ShrinkOptions(validate=False), result=result)
    _loads_in_onnxruntime(outcome.model)


def test_reads_two_levels_down_are_seen():
    model = _net(_loop_with_if_reading)
    result = partition(model)
    c1 = group_with(result, "c1.weight", "producer")
    assert not c1.prunable and "Loop node 'loop' reads 'r1_out'" in c1.reason
    assert_invariant(model, result)
    outcome = shrink(model, {g.id: removal_mask(g, 1) for g in result.prunable}, result=result)
    assert outcome.passed, outcome.comparison.summary()
    _loads_in_onnxruntime(outcome.model)


def test_an_initializer_read_in_a_body_stays_shared_and_bars_its_group():
    """A weight read from inside a body is not split (the body would need rewriting): the
    group whose member it is stays non-prunable, naming the other reader."""
    model = _net(_if_reading("c2.bias"))
    result = partition(model)
    c2 = group_with(result, "c2.weight", "producer")
    assert not c2.prunable
    assert "initializer 'c2.bias' is also read by another node" in c2.reason
    assert "'branch'" in c2.reason
    assert group_with(result, "c1.weight", "producer").prunable
