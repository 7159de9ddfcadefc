"""What keeps shrink's memory near the model's size: constants decoded only when read, and
initializers sliced into a fresh copy (the zeroed reference's handover is in test_validate)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxoto import graph
from onnxoto.groups import Group, Member
from onnxoto.shrink import slice_model


def _model() -> onnx.ModelProto:
    """y = x @ W^T + b with W stored (8, 4096): a Transpose view of a big initializer."""
    w = np.arange(8 * 4096, dtype=np.float32).reshape(8, 4096)
    nodes = [helper.make_node("Transpose", ["W"], ["Wt"], perm=[1, 0]),
             helper.make_node("MatMul", ["x", "Wt"], ["h"]),
             helper.make_node("Add", ["h", "b"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                      [1, 4096])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
                          [numpy_helper.from_array(w, "W"),
                           numpy_helper.from_array(np.ones(8, np.float32), "b")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_constants_are_decoded_when_read(monkeypatch):
    decoded: list[str] = []
    to_array = numpy_helper.to_array

    def counting(tensor, *args):
        decoded.append(tensor.name)
        return to_array(tensor, *args)

    monkeypatch.setattr(numpy_helper, "to_array", counting)
    view = graph.build_view(_model())
    assert decoded == []
    assert view.constants.shape("Wt") == (4096, 8) and view.shapes["Wt"] == (4096, 8)
    assert view.const_source("Wt") == ("W", (1, 0))
    held = view.const("Wt")
    np.testing.assert_array_equal(held, np.arange(8 * 4096, dtype=np.float32).reshape(8, -1).T)
    assert view.const("Wt") is held  # decoded once while it is held
    assert decoded == ["W"]
    del held
    view.const("Wt")
    assert decoded == ["W", "W"]  # a large value is not kept once nobody holds it
    view.const("b"), view.const("b")
    assert decoded == ["W", "W", "b"]  # a small one is


class _Partition:
    """The two things slice_model reads of a partition, for a hand-made group."""

    def __init__(self, model: onnx.ModelProto, groups: list[Group]) -> None:
        self.groups = groups
        self.view = graph.build_view(model)
        self.spaces: dict = {}

    def slot_keep(self, masks):
        return np.ones(0, dtype=bool)


def test_slicing_writes_a_fresh_copy_and_leaves_the_model_alone():
    model = _model()
    before = model.SerializeToString()
    group = Group(id=0, size=8, prunable=True, reasons=[], members=[
        Member("W", 0, "producer"), Member("b", 0, "producer")])
    keep = np.array([True, False, True, True, False, False, True, True])
    slim = slice_model(model, _Partition(model, [group]), {0: keep})
    arrays = {t.name: numpy_helper.to_array(t) for t in slim.graph.initializer}
    full = numpy_helper.to_array(model.graph.initializer[0])
    np.testing.assert_array_equal(arrays["W"], full[keep])
    assert arrays["b"].shape == (5,)
    assert model.SerializeToString() == before
