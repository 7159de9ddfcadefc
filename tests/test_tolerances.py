"""Default tolerances: pinned per dtype, and actually used by compare(), ShrinkOptions and the CLI.

Each check brackets the default: a difference of half the limit passes and one of twice the
limit fails, so loosening or tightening a default (by 2x or more) fails here.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from onnxoto.cli import main
from onnxoto.shrink import ShrinkOptions, shrink
from onnxoto.validate import DEFAULT_TOLERANCES, Comparison, OutputDiff, Tolerance, compare

PINNED = {
    TensorProto.FLOAT: (1e-4, 1e-5),
    TensorProto.FLOAT16: (1e-2, 1e-3),
    TensorProto.BFLOAT16: (5e-2, 1e-2),
    TensorProto.DOUBLE: (1e-7, 1e-9),
}
RUNNABLE = {TensorProto.FLOAT: np.float32, TensorProto.FLOAT16: np.float16,
            TensorProto.DOUBLE: np.float64}


def test_default_values_are_pinned():
    assert {k: (v.rtol, v.atol) for k, v in DEFAULT_TOLERANCES.items()} == PINNED
    assert (OutputDiff("y", 0, 0, 0, True).rtol, OutputDiff("y", 0, 0, 0, True).atol) == \
        PINNED[TensorProto.FLOAT]
    assert Comparison().rtol is None and Comparison().atol is None
    assert ShrinkOptions().rtol is None and ShrinkOptions().atol is None


def shifted(elem_type: int, shift: float) -> onnx.ModelProto:
    """y = x + shift: against shift 0 the difference is ``shift`` in every element."""
    dtype = RUNNABLE[elem_type]
    bias = numpy_helper.from_array(np.array([shift], dtype=dtype), "b")
    graph = helper.make_graph([helper.make_node("Add", ["x", "b"], ["y"])], "shift",
                              [helper.make_tensor_value_info("x", elem_type, [1, 64])],
                              [helper.make_tensor_value_info("y", elem_type, [1, 64])], [bias])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def limit_for(elem_type: int) -> float:
    """The default limit of the seeded inputs' worst sample (the scale is measured exactly)."""
    same = compare(shifted(elem_type, 0.0), shifted(elem_type, 0.0))
    rtol, atol = PINNED[elem_type]
    return atol + rtol * min(out.ref_scale for out in same.outputs)


@pytest.mark.parametrize("elem_type", list(RUNNABLE), ids=lambda t: TensorProto.DataType.Name(t))
def test_compare_uses_the_dtype_default(elem_type):
    limit = limit_for(elem_type)
    inside = compare(shifted(elem_type, 0.0), shifted(elem_type, 0.5 * limit))
    outside = compare(shifted(elem_type, 0.0), shifted(elem_type, 2.0 * limit))
    assert inside.passed, inside.summary()
    assert not outside.passed, outside.summary()
    rtol, atol = PINNED[elem_type]
    assert (inside.outputs[0].rtol, inside.outputs[0].atol) == (rtol, atol)
    assert f"rtol {rtol:g} atol {atol:g}" in inside.tolerances()


def test_given_tolerance_overrides_the_default():
    limit = limit_for(TensorProto.FLOAT)
    loose = compare(shifted(TensorProto.FLOAT, 0.0), shifted(TensorProto.FLOAT, 2.0 * limit),
                    rtol=1e-3)
    assert loose.passed and loose.outputs[0].rtol == 1e-3 and loose.outputs[0].atol == 1e-5


def test_cli_validate_defaults_and_prints_them(tmp_path):
    limit = limit_for(TensorProto.FLOAT)
    full = tmp_path / "full.onnx"
    onnx.save(shifted(TensorProto.FLOAT, 0.0), full)
    for factor, code in ((0.5, 0), (2.0, 1)):
        slim = tmp_path / f"slim{factor}.onnx"
        onnx.save(shifted(TensorProto.FLOAT, factor * limit), slim)
        result = CliRunner().invoke(main, ["validate", str(full), str(slim)])
        assert result.exit_code == code, result.output
        assert "float32 rtol 0.0001 atol 1e-05" in result.output


def fp16_conv(seed: int = 0) -> onnx.ModelProto:
    """x -> Conv(8 -> 16) -> Relu -> Conv(16 -> 4), all float16."""
    rng = np.random.default_rng(seed)
    w1 = numpy_helper.from_array(rng.standard_normal((16, 8, 3, 3)).astype(np.float16), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((4, 16, 3, 3)).astype(np.float16), "w2")
    nodes = [helper.make_node("Conv", ["x", "w1"], ["h"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Conv", ["r", "w2"], ["y"], pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "fp16",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT16,
                                                             [1, 8, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT16,
                                                             [1, 4, 16, 16])], [w1, w2])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def test_fp16_model_shrinks_at_its_default():
    """Removing channels reorders half-precision sums: float32's tolerance would fail a correct
    slim model, the float16 default passes it and still fails a wrong one."""
    model = fp16_conv()
    keep = np.arange(16) % 2 == 0
    outcome = shrink(model, {0: keep})
    assert outcome.passed, outcome.comparison.summary()
    assert outcome.comparison.outputs[0].dtype == "float16"
    assert outcome.comparison.outputs[0].rtol == PINNED[TensorProto.FLOAT16][0]
    wrong = onnx.ModelProto()
    wrong.CopyFrom(outcome.model)
    w2 = next(t for t in wrong.graph.initializer if t.name == "w2")
    value = numpy_helper.to_array(w2).copy()
    value[:, 0] = -value[:, 0]
    w2.CopyFrom(numpy_helper.from_array(value, "w2"))
    from onnxoto.masking import zero_channels
    from onnxoto.partition import partition

    reference = zero_channels(model, partition(model).groups, {0: keep})
    assert not compare(reference, wrong).passed


def test_tolerance_is_plain_data():
    assert Tolerance(1e-4, 1e-5) == DEFAULT_TOLERANCES[TensorProto.FLOAT]
