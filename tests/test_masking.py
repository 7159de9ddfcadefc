"""Masking reductions: per-channel norms and max |w| read through index maps in slabs must equal
the plain whole-array computation, for every axis, index map and dtype."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from onnxoto import masking
from onnxoto.groups import Group, IndexMap, Member

MAPS = [IndexMap(), IndexMap(offset=3), IndexMap(block=4), IndexMap(block=2, stride=5, step=1),
        IndexMap(offset=1, block=3, stride=1, step=4)]


def _plain(array: np.ndarray, member: Member, size: int, kind: str) -> np.ndarray:
    moved = np.moveaxis(array.astype(np.float64), member.axis, 0)
    picked = np.abs(moved[member.index_map.indices(np.arange(size))]).reshape(size, -1)
    return {"sumsq": (picked ** 2).sum(1), "l1": picked.sum(1), "max": picked.max(1)}[kind]


def _span(index_map: IndexMap, size: int) -> int:
    return int(index_map.indices(np.arange(size)).max()) + 1


@pytest.mark.parametrize("index_map", MAPS)
@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("kind", ["sumsq", "l1", "max"])
def test_channel_reduce_matches_whole_array(index_map, axis, kind, monkeypatch):
    monkeypatch.setattr(masking, "_SLAB_ELEMENTS", 7)  # many slabs, ragged last one
    size = 4
    shape = [3, 5, 6]
    shape[axis] = _span(index_map, size) + 2
    array = np.random.default_rng(axis).standard_normal(shape).astype(np.float32)
    member = Member("w", axis, "producer", index_map)
    got = masking.channel_reduce(array, member, size, kind)
    np.testing.assert_allclose(got, _plain(array, member, size, kind), rtol=1e-5)


def test_channel_reduce_reads_float16_without_overflow():
    array = np.full((2, 4000), 200.0, dtype=np.float16)  # sum of squares 1.6e8 > float16 max
    got = masking.channel_reduce(array, Member("w", 0, "producer"), 2, "sumsq")
    np.testing.assert_allclose(got, [4000 * 200.0 ** 2] * 2, rtol=1e-3)


def _model(weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    graph = helper.make_graph([], "g", [], [], [numpy_helper.from_array(w, n)
                                                for n, w in weights.items()])
    graph.node.append(helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(
        np.arange(6, dtype=np.float32).reshape(2, 3) + 1)))
    return helper.make_model(graph)


def test_norms_masks_and_zeroing_on_a_model():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((6, 4)).astype(np.float32)
    w[2] = 0
    model = _model({"w": w, "b": rng.standard_normal(6).astype(np.float32)})
    group = Group(id=0, size=6, prunable=True, reason=None, members=[
        Member("w", 0, "producer"), Member("b", 0, "attached")])
    expected = np.sqrt((w.astype(np.float64) ** 2).sum(1))
    np.testing.assert_allclose(masking.producer_norms(model, group), expected, rtol=1e-6)
    assert masking.masks_from_zeros(model, [group])[0].tolist() == [True, True, False, True,
                                                                    True, True]
    keep = masking.magnitude_masks(model, [group], ratio=0.5)[0]
    assert keep.sum() == 3 and not keep[2]
    zeroed = masking.zero_channels(model, [group], {0: keep})
    arrays = {t.name: numpy_helper.to_array(t) for t in zeroed.graph.initializer}
    assert [t.name for t in zeroed.graph.initializer] == ["w", "b"]
    np.testing.assert_array_equal(arrays["w"][~keep], 0)
    np.testing.assert_array_equal(arrays["w"][keep], w[keep])
    np.testing.assert_array_equal(arrays["b"], numpy_helper.to_array(model.graph.initializer[1]))
    assert numpy_helper.to_array(model.graph.initializer[0])[~keep].any()  # input untouched


def test_zero_channels_reaches_constant_nodes():
    model = _model({})
    group = Group(id=0, size=2, prunable=True, reason=None, members=[Member("c", 0, "producer")])
    zeroed = masking.zero_channels(model, [group], {0: np.array([True, False])})
    value = numpy_helper.to_array(zeroed.graph.node[0].attribute[0].t)
    np.testing.assert_array_equal(value, [[1, 2, 3], [0, 0, 0]])
    assert numpy_helper.to_array(model.graph.node[0].attribute[0].t)[1].all()
