"""metrics: exact MACs on hand-built graphs, reachable params, latency and table rendering."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxoto.errors import OnnxotoError
from onnxoto.metrics import (
    Latency,
    ModelMetrics,
    compare_latency,
    compare_metrics,
    measure,
    measure_latency,
    render_table,
)


def _model(nodes, inputs, outputs, initializers=()) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "test", inputs, outputs, initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _value(name, shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def _weight(name, shape):
    return numpy_helper.from_array(np.ones(shape, dtype=np.float32), name)


def _single(op, x_shape, w_shape, y_rank, **attrs) -> onnx.ModelProto:
    """One op reading input x and weight w; y is declared with symbolic dims only."""
    return _model(
        [helper.make_node(op, ["x", "w"], ["y"], **attrs)],
        [_value("x", x_shape)],
        [_value("y", [f"y{i}" for i in range(y_rank)])],
        [_weight("w", w_shape)],
    )


@pytest.mark.parametrize(
    "group, w_shape, expected",
    [
        (1, (6, 4, 3, 3), 1 * 6 * 8 * 8 * 4 * 9),
        (2, (6, 2, 3, 3), 1 * 6 * 8 * 8 * 2 * 9),
        (4, (4, 1, 3, 3), 1 * 4 * 8 * 8 * 1 * 9),  # depthwise
    ],
)
def test_conv_macs(group, w_shape, expected):
    model = _single("Conv", (1, 4, 8, 8), w_shape, 4, pads=[1, 1, 1, 1], group=group)
    metrics = measure(model)
    assert metrics.macs == expected
    assert metrics.macs_by_op == {"Conv": expected}
    assert metrics.flops == 2 * expected
    assert metrics.params == int(np.prod(w_shape))
    assert metrics.param_bytes == 4 * metrics.params


def test_conv_with_batch_and_stride():
    model = _single("Conv", (2, 3, 9, 9), (5, 3, 3, 3), 4, strides=[2, 2])  # out 4x4
    assert measure(model).macs == 2 * 5 * 4 * 4 * 3 * 9


@pytest.mark.parametrize(
    "group, w_shape, expected",
    [(1, (4, 3, 2, 2), 1 * 4 * 5 * 5 * 3 * 4), (2, (4, 1, 2, 2), 1 * 4 * 5 * 5 * 1 * 4)],
)
def test_conv_transpose_macs(group, w_shape, expected):
    model = _single("ConvTranspose", (1, 4, 5, 5), w_shape, 4, strides=[2, 2], group=group)
    assert measure(model).macs_by_op == {"ConvTranspose": expected}


def test_gemm_macs_with_trans_b():
    model = _single("Gemm", (2, 8), (5, 8), 2, transB=1)
    assert measure(model).macs == 2 * 5 * 8


def test_gemm_macs_with_trans_a():
    model = _single("Gemm", (8, 2), (8, 5), 2, transA=1)
    assert measure(model).macs == 2 * 5 * 8


@pytest.mark.parametrize(
    "a_shape, b_shape, y_rank, expected",
    [
        ((3, 1, 4, 6), (2, 6, 7), 4, 3 * 2 * 4 * 7 * 6),  # batch dims broadcast to (3, 2)
        ((6,), (6, 7), 1, 7 * 6),
        ((2, 4, 6), (6,), 2, 2 * 4 * 6),
        (("n", 6), (6, 7), 2, 1 * 7 * 6),  # dynamic dims count as 1
    ],
)
def test_matmul_macs(a_shape, b_shape, y_rank, expected):
    metrics = measure(_single("MatMul", a_shape, b_shape, y_rank))
    assert metrics.macs == expected
    assert metrics.unknown_macs_nodes == []


def test_unknown_shape_is_skipped_and_named():
    """A Reshape to a runtime shape of unknown length leaves the MatMul input rank unknown."""
    model = _model(
        [
            helper.make_node("Reshape", ["x", "shape"], ["r"]),
            helper.make_node("MatMul", ["r", "w"], ["y"], name="mm"),
        ],
        [_value("x", (2, 6)), _value("shape", ["k"], TensorProto.INT64)],
        [_value("y", ["a", "b"])],
        [_weight("w", (6, 7))],
    )
    metrics = measure(model)
    assert metrics.macs == 0
    assert metrics.unknown_macs_nodes == ["mm"]


def _network() -> onnx.ModelProto:
    """Conv -> BN -> Relu -> Add(Constant) -> output; plus a dead branch and an unused weight."""
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"]),
        helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["n"]),
        helper.make_node("Relu", ["n"], ["r"]),
        helper.make_node(
            "Constant", [], ["k"], value=numpy_helper.from_array(np.ones(3, np.float32), "k")
        ),
        helper.make_node("Constant", [], ["eps"], value_float=0.5),
        helper.make_node("Add", ["r", "eps"], ["a"]),
        helper.make_node("Mul", ["x", "k"], ["dead"]),  # not read by any output
        helper.make_node("Unsqueeze", ["a", "axes"], ["y"]),
    ]
    inits = [
        _weight("w", (2, 3, 1, 1)),
        *(_weight(n, (2,)) for n in "sbmv"),
        _weight("unused", (100,)),
        numpy_helper.from_array(np.array([0], dtype=np.int64), "axes"),
    ]
    return _model(nodes, [_value("x", (1, 3, 4, 4))], [_value("y", (1, 1, 2, 4, 4))], inits)


def test_params_count_only_what_outputs_read():
    metrics = measure(_network())
    # conv weight 6 + BN 4 x 2 + Constant float 1 ; not "unused", not "k" (dead), not int axes
    assert metrics.params == 6 + 8 + 1
    assert metrics.param_bytes == 4 * metrics.params


def test_op_counts_and_elementwise():
    metrics = measure(_network())
    assert metrics.op_counts == {
        "Add": 1,
        "BatchNormalization": 1,
        "Constant": 1,
        "Conv": 1,
        "Relu": 1,
        "Unsqueeze": 1,
    }
    assert metrics.macs == 2 * 4 * 4 * 3
    assert metrics.elementwise_ops == 3 * 2 * 4 * 4  # BN, Relu, Add: not part of MACs
    assert metrics.file_bytes == _network().ByteSize()
    data = json.loads(json.dumps(metrics.to_dict()))
    assert data["flops"] == 2 * data["macs"]


def test_file_bytes_include_external_data(tmp_path):
    model = _single("MatMul", (2, 64), (64, 64), 2)
    path = tmp_path / "m.onnx"
    onnx.save_model(model, path, save_as_external_data=True, location="m.data", size_threshold=0)
    metrics = measure(path)
    assert metrics.file_bytes == path.stat().st_size + (tmp_path / "m.data").stat().st_size
    assert metrics.file_bytes > 64 * 64 * 4
    assert metrics.macs == 2 * 64 * 64


def test_latency_respects_runs():
    latency = measure_latency(_single("MatMul", (2, 8), (8, 8), 2), runs=3, warmup=1)
    assert latency.runs == 3 and latency.warmup == 1
    assert latency.provider == "CPUExecutionProvider"
    assert 0 < latency.median_ms <= latency.p90_ms
    assert latency.mean_ms > 0
    with pytest.raises(OnnxotoError):
        measure_latency(_single("MatMul", (2, 8), (8, 8), 2), runs=0)


def test_render_table_formats_numbers():
    before = ModelMetrics(params=1_234_567, param_bytes=4_938_268, file_bytes=None, macs=2_000_000)
    after = ModelMetrics(params=617_283, param_bytes=2_469_132, file_bytes=None, macs=500_000)
    rows = compare_metrics(before, after)
    by_name = {row.name: row for row in rows}
    assert by_name["MACs"].ratio == 0.25
    assert by_name["FLOPs (2 x MACs)"].before == 4_000_000
    assert by_name["file bytes"].ratio is None
    text = render_table(rows)
    assert "1,234,567" in text and "617,283" in text and "4,000,000" in text
    assert "25.0%" in text and "FLOPs (2 x MACs)" in text
    lines = text.splitlines()
    assert len({len(line) for line in lines if line.strip().endswith("%")}) == 1  # aligned
    assert lines[0].split() == ["metric", "before", "after", "after/before"]


def test_latency_rows_render_floats():
    old = Latency(2.5, 3.0, 2.6, runs=5, warmup=1, provider="CPUExecutionProvider")
    new = Latency(1.25, 1.5, 1.3, runs=5, warmup=1, provider="CPUExecutionProvider")
    text = render_table(compare_latency(old, new))
    assert "2.50" in text and "1.25" in text and "50.0%" in text
