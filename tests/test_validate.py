"""validate.compare and runtime helpers on tiny onnx.helper graphs."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxoto import runtime
from onnxoto.errors import OnnxotoError
from onnxoto.validate import compare, output_diff


def _model(nodes, inputs, outputs, initializers=(), *, name="test") -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _linear(weight: np.ndarray, bias: np.ndarray) -> onnx.ModelProto:
    """y = x @ W + b with x of shape (batch, 4), batch dynamic."""
    return _model(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Add", ["h", "b"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "b")],
    )


def _constant_output(values: list[float]) -> onnx.ModelProto:
    """y = x * 0 + C in float64: the output is exactly C whatever the random input is."""
    c = np.array(values, dtype=np.float64)
    return _model(
        [
            helper.make_node("Mul", ["x", "zero"], ["z"]),
            helper.make_node("Add", ["z", "C"], ["y"]),
        ],
        [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [len(values)])],
        [helper.make_tensor_value_info("y", TensorProto.DOUBLE, [len(values)])],
        [
            numpy_helper.from_array(np.zeros(len(values)), "zero"),
            numpy_helper.from_array(c, "C"),
        ],
    )


RNG = np.random.default_rng(7)
W = RNG.standard_normal((4, 3)).astype(np.float32)
B = RNG.standard_normal(3).astype(np.float32)


def test_difference_below_the_default_tolerance_passes():
    """A bias moved by 4e-6, under float32's default atol 1e-5: passes, and reports the 4e-6."""
    result = compare(_linear(W, B), _linear(W, B + np.float32(4e-6)))
    assert result.passed and bool(result)
    assert [o.name for o in result.outputs] == ["y"]
    assert result.outputs[0].max_abs == pytest.approx(4e-6, rel=0.1)
    assert result.outputs[0].ref_scale > 0
    assert json.loads(json.dumps(result.to_dict()))["passed"] is True
    assert result.summary().startswith("PASS y [1x3]")


def test_perturbed_bias_fails_with_its_delta():
    bias = B.copy()
    bias[1] += 0.5
    result = compare(_linear(W, B), _linear(W, bias))
    assert not result
    assert result.outputs[0].max_abs == pytest.approx(0.5, abs=1e-5)
    assert "FAIL y" in result.summary()


def test_perturbed_weight_max_abs_matches_inputs():
    weight = W.copy()
    weight[2, 0] += 0.25
    result = compare(_linear(W, B), _linear(weight, B), samples=1, seed=3, dynamic_dim=5)
    x = runtime.random_inputs(_linear(W, B), seed=3, batch=5, dynamic_dim=5)["x"]
    expected = float(np.max(np.abs(x[:, 2]))) * 0.25
    assert not result.passed
    assert result.outputs[0].shape == (5, 3)
    assert result.outputs[0].max_abs == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("factor, passes", [(0.99, True), (1.01, False)])
def test_tolerance_boundary_scales_with_reference(factor, passes):
    ref = [100.0, -200.0, 0.5]
    rtol, atol = 1e-4, 1e-5
    limit = atol + rtol * 200.0
    cand = [100.0, -200.0 + factor * limit, 0.5]
    result = compare(_constant_output(ref), _constant_output(cand), rtol=rtol, atol=atol)
    out = result.outputs[0]
    assert out.ref_scale == 200.0
    assert out.max_abs == pytest.approx(factor * limit, rel=1e-9)
    assert out.max_rel == pytest.approx(factor * limit / 200.0, rel=1e-9)
    assert result.passed is passes


def test_limit_is_inclusive():
    ref, cand = _constant_output([0.5]), _constant_output([0.75])
    assert compare(ref, cand, rtol=0.0, atol=0.25).passed
    assert not compare(ref, cand, rtol=0.0, atol=0.2499).passed


def test_nan_fails_and_serializes_as_null():
    diff = output_diff("y", np.array([1.0, np.nan]), np.array([1.0, np.nan]), rtol=1e-4, atol=1e-5)
    assert not diff.passed
    assert diff.to_dict()["max_abs"] is None
    assert not output_diff("y", np.array([1.0]), np.array([np.nan]), rtol=1, atol=1).passed


def test_zero_reference_guards_relative_diff():
    same = output_diff("y", np.zeros(3), np.zeros(3), rtol=1e-4, atol=1e-5)
    assert same.passed and same.max_rel == 0.0
    off = output_diff("y", np.zeros(3), np.full(3, 1e-3), rtol=1e-4, atol=1e-5)
    assert not off.passed and off.max_rel == float("inf")


def _typed_inputs_model() -> onnx.ModelProto:
    """Inputs of float16, int64 and bool with symbolic dims; output float32 (batch, seq, 4)."""
    nodes = [
        helper.make_node("Cast", ["ids"], ["ids_f"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["half"], ["half_f"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["ids_f", "half_f"], ["s"]),
        helper.make_node("Where", ["flag", "s", "bias"], ["y"]),
    ]
    return _model(
        nodes,
        [
            helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "seq", 4]),
            helper.make_tensor_value_info("half", TensorProto.FLOAT16, ["batch", "seq", 4]),
            helper.make_tensor_value_info("flag", TensorProto.BOOL, [4]),
            helper.make_tensor_value_info("bias", TensorProto.FLOAT, [4]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", 4])],
        [numpy_helper.from_array(np.ones(4, dtype=np.float32), "bias")],
    )


def test_random_inputs_respect_dtypes_and_dynamic_dims():
    model = _typed_inputs_model()
    arrays = runtime.random_inputs(model, seed=1, batch=2, dynamic_dim=3)
    assert set(arrays) == {"ids", "half", "flag"}  # the initializer listed as input is skipped
    assert arrays["ids"].dtype == np.int64 and arrays["ids"].shape == (2, 3, 4)
    assert arrays["ids"].min() >= 0 and arrays["ids"].max() <= 9
    assert arrays["half"].dtype == np.float16 and arrays["half"].shape == (2, 3, 4)
    assert arrays["flag"].dtype == np.bool_ and arrays["flag"].shape == (4,)
    again = runtime.random_inputs(model, seed=1, batch=2, dynamic_dim=3)
    assert all(np.array_equal(arrays[k], again[k]) for k in arrays)
    other = runtime.random_inputs(model, seed=2, batch=2, dynamic_dim=3)
    assert not np.array_equal(arrays["half"], other["half"])


def test_compare_feeds_typed_inputs_with_dynamic_dim():
    """Both models get the same seeded int64, float16 and bool inputs: ids + half against
    ids - half differs by exactly 2 * half wherever the flag selects it."""
    model = _typed_inputs_model()
    minus = _typed_inputs_model()
    minus.graph.node[2].op_type = "Sub"
    result = compare(model, minus, dynamic_dim=3, samples=2)
    expected = 0.0
    for seed in (0, 1):
        x = runtime.random_inputs(model, seed=seed, batch=3, dynamic_dim=3)
        expected = max(expected, float(np.max(np.abs(2 * x["half"].astype(np.float32))
                                                  * x["flag"])))
    assert expected > 0
    assert not result.passed
    assert result.outputs[0].shape == (3, 3, 4)
    assert result.outputs[0].max_abs == pytest.approx(expected, rel=1e-6)


def test_mismatching_output_names_raise():
    other = _linear(W, B)
    other.graph.output[0].name = "z"
    other.graph.node[1].output[0] = "z"
    with pytest.raises(OnnxotoError, match="output names differ"):
        compare(_linear(W, B), other)


def _add_constant(c: np.ndarray) -> onnx.ModelProto:
    """y = x + C with x of shape (3,); y takes C's rank by broadcasting."""
    return _model(
        [helper.make_node("Add", ["x", "C"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(c.shape))],
        [numpy_helper.from_array(c.astype(np.float32), "C")],
    )


def test_mismatching_output_shapes_raise():
    ref, cand = _add_constant(np.ones(3)), _add_constant(np.ones((1, 3)))
    with pytest.raises(OnnxotoError, match=r"output 'y': shape \[3\] in the reference"):
        compare(ref, cand)


def test_session_defaults_to_cpu_and_handles_large_protos(monkeypatch):
    model = _linear(W, B)
    assert runtime.session(model).get_providers() == ["CPUExecutionProvider"]
    x = {"x": np.ones((2, 4), dtype=np.float32)}
    expected = np.ones((2, 4), dtype=np.float32) @ W + B
    monkeypatch.setattr(runtime, "_MAP_BYTES", 0)  # take the external-data route
    before = model.SerializeToString()
    out = runtime.run(runtime.session(model), x)
    np.testing.assert_allclose(out["y"], expected, rtol=1e-6)
    assert model.SerializeToString() == before


def test_broken_model_is_a_one_line_error():
    model = _linear(W, B)
    model.graph.node[0].op_type = "NoSuchOp"
    with pytest.raises(OnnxotoError, match="onnxruntime cannot load"):
        runtime.session(model)


def _zeroing_case():
    from onnxoto.groups import Group, Member

    model = _linear(W, B)
    group = Group(id=0, size=3, prunable=True, reasons=[], members=[
        Member("W", 1, "producer"), Member("b", 0, "producer")])
    return model, [group], {0: np.array([True, False, True])}


@pytest.mark.parametrize("external", [False, True])
def test_zeroed_reference_is_handed_over_without_a_copy(monkeypatch, external):
    """WithTensors(model, Zeroing) runs what zero_channels builds, through the in-memory route
    and the external-data route (zeroed in the file through a memory map)."""
    from onnxoto.masking import Zeroing, zero_channels

    model, groups, masks = _zeroing_case()
    if external:
        monkeypatch.setattr(runtime, "_MAP_BYTES", 0)
        monkeypatch.setattr(runtime, "_INLINE_BYTES", 0)
    before = model.SerializeToString()
    reference = runtime.WithTensors(model, Zeroing(groups, masks))
    same = compare(reference, zero_channels(model, groups, masks))
    assert same.passed and same.outputs[0].max_abs == 0.0
    assert not compare(reference, model).passed  # the zeroed column differs from the model's
    assert model.SerializeToString() == before


def test_handed_over_reference_keeps_no_hold_on_the_model(monkeypatch):
    """HandedOver writes the zeroed model out and keeps no reference to the proto, so its owner
    can drop the full model before onnxruntime maps the file (onnxoto shrink does); the folder
    goes when the block ends."""
    import sys

    from onnxoto.masking import Zeroing, zero_channels

    monkeypatch.setattr(runtime, "_INLINE_BYTES", 0)
    model, groups, masks = _zeroing_case()
    held = sys.getrefcount(model)
    with runtime.HandedOver(runtime.WithTensors(model, Zeroing(groups, masks))) as reference:
        assert sys.getrefcount(model) == held
        assert not reference.model.graph.initializer[0].HasField("raw_data")
        same = compare(reference, zero_channels(model, groups, masks))
        assert same.passed and same.outputs[0].max_abs == 0.0
        folder = reference.path.parent
        assert folder.is_dir()
    assert not folder.exists()


def test_validation_sessions_skip_weight_layout_copies():
    """A validation session runs a few samples: no prepacked or NCHWc copies of the weights
    (onnxruntime's highest level reorders every Conv weight into a copy)."""
    model = _linear(W, B)
    level = runtime.session(model, weight_copies=False).get_session_options()
    assert level.graph_optimization_level == runtime.ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    full = runtime.session(model).get_session_options().graph_optimization_level
    assert full == runtime.ort.GraphOptimizationLevel.ORT_ENABLE_ALL


def test_reference_session_is_gone_before_the_candidate_runs(monkeypatch):
    import gc
    import weakref

    from onnxoto.validate import check, record

    built: list[weakref.ref] = []
    session = runtime.session

    def tracked(model, **kwargs):
        gc.collect()
        assert all(ref() is None for ref in built), "an earlier session is still alive"
        sess = session(model, **kwargs)
        built.append(weakref.ref(sess))
        return sess

    monkeypatch.setattr(runtime, "session", tracked)
    model = _linear(W, B)
    assert compare(model, _linear(W, B + 1e-7)).passed
    recording = record(model)
    assert check(recording, _linear(W, B + 1.0)).outputs[0].max_abs == pytest.approx(1.0)
    assert len(built) == 4
