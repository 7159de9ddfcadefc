"""Exports with a dynamic batch: shape computations built from the batch are canonicalized, so
the groups and the MACs are those of the same export with a static batch, and the slim model
keeps its batch dynamic."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto

from onnxoto import runtime
from onnxoto.canonical import canonicalize
from onnxoto.metrics import measure
from onnxoto.partition import partition
from onnxoto.shrink import ShrinkOptions, shrink
from tests.graphs import GraphBuilder, assert_invariant, group_with
from tests.invariance import removal_mask


def _dims(g: GraphBuilder, x: str, *axes: int) -> list[str]:
    """Each of x's dims at ``axes`` as a 1-element int64 tensor computed at run time."""
    shape = g.op("Shape", [x])
    return [g.op("Unsqueeze", [g.op("Gather", [shape, g.const(g._fresh("i"), np.int64(a))],
                                    axis=0), g.const(g._fresh("ax"), np.array([0]))])
            for a in axes]


def _divided(g: GraphBuilder, dim: str, by: int) -> str:
    """dim / by through Div and Cast, where ONNX shape inference stops propagating values."""
    quotient = g.op("Div", [dim, g.const(g._fresh("by"), np.array([by], dtype=np.int64))])
    return g.op("Cast", [quotient], to=TensorProto.INT64)


def computed_view(*, dynamic_spatial: bool = False) -> onnx.ModelProto:
    """c1 (3 -> 8) viewed as (N, 8, H*W) by a target computed from Shape (the channel entry
    through Div, as the legacy exporter writes ``x.view(b, c // 1, -1)``), then a MatMul
    over the channels."""
    g = GraphBuilder(seed=71)
    x = g.input("x", ["N", 3, "H" if dynamic_spatial else 4, 4])
    h = g.op("Relu", [g.conv(x, 8, k=3, pad=1, name="c1")])
    batch, channels = _dims(g, h, 0, 1)
    target = g.op("Concat", [batch, _divided(g, channels, 1),
                             g.const("rest", np.array([-1], dtype=np.int64))], axis=0)
    flat = g.op("Reshape", [h, target], name="view")
    tokens = g.op("Transpose", [flat], perm=[0, 2, 1])
    return g.build([g.op("MatMul", [tokens, g.weight("head.weight", [8, 5])], name="head")])


def test_a_computed_view_of_a_dynamic_batch_gets_a_constant_target():
    canonical = canonicalize(computed_view())
    view = next(n for n in canonical.graph.node if n.name == "view")
    target = {t.name: t for t in canonical.graph.initializer}[view.input[1]]
    assert onnx.numpy_helper.to_array(target).tolist() == [0, 8, 16]  # 0: the input's batch
    assert not any(n.op_type in ("Shape", "Div") for n in canonical.graph.node)
    result = partition(computed_view())
    assert group_with(result, "c1.weight").prunable
    assert_invariant(result.model, result)


def test_the_slim_model_keeps_its_batch_dynamic():
    result = partition(computed_view())
    group = group_with(result, "c1.weight")
    outcome = shrink(result.model, {group.id: removal_mask(group, 0)}, result=result,
                     options=ShrinkOptions(dynamic_dim=3))
    assert outcome.passed, outcome.comparison.summary()
    dims = outcome.model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "N"
    outputs = runtime.run(outcome.model, runtime.random_inputs(outcome.model, batch=5))
    assert next(iter(outputs.values())).shape == (5, 16, 5)


def test_a_view_with_two_dynamic_dims_stays_computed_and_barred():
    model = computed_view(dynamic_spatial=True)
    canonical = canonicalize(model)
    assert any(n.op_type == "Div" for n in canonical.graph.node)
    group = group_with(partition(model), "c1.weight")
    assert not group.prunable
    assert group.reason.startswith("Reshape node 'view'")


def merge_transpose_split() -> onnx.ModelProto:
    """(N, 3, 6, 4) merged to (N*3, 6, 4), transposed to (N*3, 4, 6) and split back to
    (N, 3, 4, 6): the dynamo exporter's K transpose in attention, with computed targets."""
    g = GraphBuilder(seed=72)
    x = g.input("x", ["N", 3, 6, 4])
    (batch,) = _dims(g, x, 0)
    three = g.const("three", np.array([3], dtype=np.int64))
    merged_dim = g.op("Mul", [batch, three])
    merged = g.op("Reshape", [x, g.op("Concat", [merged_dim, g.const(
        "six_four", np.array([6, 4], dtype=np.int64))], axis=0)], name="merge")
    moved = g.op("Transpose", [merged], name="t", perm=[0, 2, 1])
    split = g.op("Reshape", [moved, g.op("Concat", [batch, three, g.const(
        "four_six", np.array([4, 6], dtype=np.int64))], axis=0)], name="split")
    return g.build([g.op("Relu", [split])])


def test_merge_transpose_split_becomes_one_transpose():
    model = merge_transpose_split()
    canonical = canonicalize(model)
    ops = [n.op_type for n in canonical.graph.node]
    assert ops == ["Transpose", "Relu"]
    assert list(canonical.graph.node[0].attribute[0].ints) == [0, 1, 3, 2]
    inputs = runtime.random_inputs(model, batch=2)
    np.testing.assert_array_equal(next(iter(runtime.run(model, inputs).values())),
                                  next(iter(runtime.run(canonical, inputs).values())))


def test_macs_count_a_batch_folded_into_another_axis_per_sample():
    """(N, 4, 4, 4) viewed as (N*4, 4, 4) by a target through Div, then a MatMul 4 -> 8:
    4 * 4 * 4 * 8 MACs per sample, not the 4 * 4 * 8 of counting the folded axis as 1."""
    g = GraphBuilder(seed=73)
    x = g.input("x", ["N", 4, 4, 4])
    (batch,) = _dims(g, x, 0)
    patches = _divided(g, g.op("Mul", [batch, g.const("sixteen", np.array([16]))]), 4)
    target = g.op("Concat", [patches, g.const("four_four", np.array([4, 4]))], axis=0)
    patches = g.op("Reshape", [x, target])
    model = g.build([g.op("MatMul", [patches, g.weight("proj.weight", [4, 8])], name="proj")])
    assert measure(model).macs == 4 * 4 * 4 * 8


@pytest.mark.parametrize(("name", "exporter"), [("resnest", "legacy"), ("mobilevit", "legacy"),
                                                ("mobilevit", "dynamo"), ("bert", "dynamo")])
def test_zoo_dynamic_batch_matches_the_static_export(zoo_cache, tmp_path, name, exporter):
    """Same groups' reach and MACs as the static export; every prunable group zero-invariant;
    the slim model validates at batch 2."""
    from models.export import export_onnx
    from models.zoo import ZOO, build

    path = export_onnx(build(name, seed=0), ZOO[name].input_shape, tmp_path / f"{name}.onnx",
                       dynamo=exporter == "dynamo", dynamic_batch=True)
    assert partition(path).model.graph.input[0].type.tensor_type.shape.dim[0].dim_param
    static, dynamic = partition(zoo_cache(name, exporter)).summary, partition(path)
    assert dynamic.summary["macs"] == static["macs"]
    assert dynamic.summary["removable_macs_share"] == pytest.approx(
        static["removable_macs_share"], abs=1e-9)
    assert_invariant(dynamic.model, dynamic)
    masks = {g.id: removal_mask(g, g.id) for g in dynamic.prunable}
    outcome = shrink(dynamic.model, masks, result=dynamic, options=ShrinkOptions(dynamic_dim=2))
    assert outcome.passed, outcome.comparison.summary()
