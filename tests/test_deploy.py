"""validate and report for deployment: --provider (refused in one line when onnxruntime cannot
run it), --input-shape on validate/report/shrink, --data with real inputs, the element-wise
check beside the output-scale one, and latency that says what it timed."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, numpy_helper

from onnxoto import runtime
from onnxoto.cli import main
from onnxoto.errors import OnnxotoError
from onnxoto.validate import CompareOptions, compare
from tests.graphs import GraphBuilder


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_error_line(result, code: int = 2) -> str:
    assert result.exit_code == code, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    return lines[0]


def _convnet(*, zero_channel: bool = False) -> onnx.ModelProto:
    g = GraphBuilder(seed=1)
    x = g.input("x", ["N", 3, 8, 8])
    h = g.op("Relu", [g.conv(x, 6, bias=True, name="c1")], name="act")
    model = g.build([g.conv(h, 4, name="c2")])
    if zero_channel:
        for tensor in model.graph.initializer:
            if tensor.name in ("c1.weight", "c1.bias"):
                array = numpy_helper.to_array(tensor).copy()
                array[0] = 0
                tensor.CopyFrom(numpy_helper.from_array(array, tensor.name))
    return model


def _scaled(scale: list[float]) -> onnx.ModelProto:
    """y = x * scale per channel: one large and one small channel."""
    g = GraphBuilder()
    x = g.input("x", [1, 2, 50])
    c = g.init("scale", np.asarray(scale, dtype=np.float32).reshape(1, 2, 1))
    return g.build([g.op("Mul", [x, c], name="mul")])


@pytest.fixture
def convnet(tmp_path):
    path = tmp_path / "net.onnx"
    onnx.save(_convnet(), path)
    return path


# --- provider --------------------------------------------------------------------------------


def test_cpu_is_the_default_and_is_reported(convnet):
    result = run("validate", convnet, convnet, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["provider"] == "CPUExecutionProvider" and data["check"] == "scale"
    assert data["inputs"] == "random" and data["samples"] == 3
    text = run("validate", convnet, convnet, "--provider", "CPUExecutionProvider")
    assert text.exit_code == 0 and "scale check on CPUExecutionProvider" in text.output


def test_provider_missing_from_onnxruntime_is_one_line(convnet, monkeypatch):
    monkeypatch.setattr(runtime.ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    line = one_error_line(run("validate", convnet, convnet, "--provider", "cuda"))
    assert "CUDAExecutionProvider" in line and "does not have" in line
    line = one_error_line(run("report", convnet, "--latency", "--provider", "tensorrt"))
    assert "TensorrtExecutionProvider" in line
    line = one_error_line(run("validate", convnet, convnet, "--provider", "rocm"))
    assert "unknown provider 'rocm'" in line


def test_listed_provider_that_falls_back_to_cpu_is_refused(monkeypatch):
    """onnxruntime-gpu lists CUDA without a GPU and then runs on CPU: that must not pass as a
    CUDA check."""
    real = runtime.ort.InferenceSession

    def cpu_only(source, options, providers):
        return real(source, options, providers=["CPUExecutionProvider"])

    monkeypatch.setattr(runtime.ort, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(runtime.ort, "InferenceSession", cpu_only)
    assert runtime.providers_for("cuda") == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    with pytest.raises(OnnxotoError, match="could not start it.*fell back to "
                                           "CPUExecutionProvider"):
        compare(_convnet(), _convnet(), CompareOptions(provider="cuda", samples=1))


# --- input shapes ----------------------------------------------------------------------------


def test_input_shape_reaches_validate_report_and_shrink(tmp_path, convnet):
    checked = run("validate", convnet, convnet, "--input-shape", "x:2x3x8x8", "--json")
    assert checked.exit_code == 0, checked.output
    assert json.loads(checked.stdout)["outputs"][0]["shape"] == [2, 4, 8, 8]
    line = one_error_line(run("validate", convnet, convnet, "--input-shape", "x:2x3x5x8"))
    assert "2x3x5x8 does not fit the declared ?x3x8x8" in line

    timed = run("report", convnet, "--latency", "--runs", 2, "--warmup", 0, "--threads", 1,
                "--input-shape", "x:2x3x8x8")
    assert timed.exit_code == 0, timed.output
    assert "latency: CPUExecutionProvider, threads 1, x 2x3x8x8, 2 runs after 0 warmup" in \
        timed.output
    data = json.loads(run("report", convnet, "--latency", "--runs", 1, "--json").stdout)
    assert data["latency"]["inputs"] == {"x": [1, 3, 8, 8]} and data["latency"]["threads"] == 0

    zeroed = tmp_path / "zeroed.onnx"
    onnx.save(_convnet(zero_channel=True), zeroed)
    shrunk = run("shrink", zeroed, "--zeros", "-o", tmp_path / "slim.onnx",
                 "--input-shape", "x:3x3x8x8", "--json")
    assert shrunk.exit_code == 0, shrunk.output
    report = json.loads(shrunk.stdout)
    assert report["changes"][0]["after"] == 5
    assert report["validation"]["outputs"][0]["shape"] == [3, 4, 8, 8]


def test_latency_options_need_latency(convnet):
    line = one_error_line(run("report", convnet, "--provider", "cuda"))
    assert "add --latency" in line


# --- real inputs -----------------------------------------------------------------------------


def _relu_or_identity(op: str) -> onnx.ModelProto:
    g = GraphBuilder()
    x = g.input("x", ["N", 4])
    return g.build([g.op(op, [x], name="f")])


def test_data_is_the_one_sample(tmp_path):
    """Relu and Identity agree on positive inputs only: random N(0,1) inputs tell them apart,
    the given positive ones do not."""
    relu, identity = _relu_or_identity("Relu"), _relu_or_identity("Identity")
    positive = {"x": np.abs(np.random.default_rng(0).standard_normal((5, 4))).astype(np.float32)}
    assert not compare(relu, identity)
    given = compare(relu, identity, CompareOptions(data=positive))
    assert given.passed and given.samples == 1 and given.outputs[0].shape == (5, 4)

    np.savez(tmp_path / "inputs.npz", **positive)
    onnx.save(relu, tmp_path / "relu.onnx")
    onnx.save(identity, tmp_path / "identity.onnx")
    result = run("validate", tmp_path / "relu.onnx", tmp_path / "identity.onnx", "--data",
                 tmp_path / "inputs.npz", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["inputs"] == str(tmp_path / "inputs.npz")
    assert run("validate", tmp_path / "relu.onnx", tmp_path / "identity.onnx").exit_code == 1


@pytest.mark.parametrize(("arrays", "expected"), [
    ({}, "missing ['x']"),
    ({"x": np.zeros((1, 3, 8, 8), np.float32), "y": np.zeros(2)}, "not inputs ['y']"),
    ({"x": np.zeros((1, 3, 8, 8), np.float64)}, "'x' is float64, the model takes float32"),
    ({"x": np.zeros((1, 3, 8), np.float32)}, "shape [1, 3, 8], the model declares ['?', 3, 8, 8]"),
    ({"x": np.zeros((2, 4, 8, 8), np.float32)}, "shape [2, 4, 8, 8]"),
])
def test_bad_data_is_one_line(tmp_path, convnet, arrays, expected):
    np.savez(tmp_path / "inputs.npz", **arrays)
    line = one_error_line(run("validate", convnet, convnet, "--data", tmp_path / "inputs.npz"))
    assert expected in line and "inputs.npz" in line


def test_data_that_is_not_npz_or_fights_input_shape(tmp_path, convnet):
    (tmp_path / "bad.npz").write_text("not numpy")
    assert "cannot read inputs" in one_error_line(
        run("validate", convnet, convnet, "--data", tmp_path / "bad.npz"))
    np.savez(tmp_path / "inputs.npz", x=np.zeros((1, 3, 8, 8), np.float32))
    assert "not both" in one_error_line(run("validate", convnet, convnet, "--data",
                                            tmp_path / "inputs.npz", "--input-shape",
                                            "x:1x3x8x8"))


# --- element-wise check ----------------------------------------------------------------------


def test_elementwise_catches_what_the_output_scale_forgives(tmp_path):
    """A 10 % change of a channel 1e6 times smaller than the other is under the output's scale
    but over every one of its own elements' limits."""
    ref, cand = _scaled([1000.0, 0.001]), _scaled([1000.0, 0.0011])
    scale = compare(ref, cand, samples=1)
    assert scale.passed and scale.check == "scale"
    elementwise = compare(ref, cand, CompareOptions(check="elementwise", samples=2))
    out = elementwise.outputs[0]
    assert not elementwise.passed and out.check == "elementwise"
    assert 0 < out.over <= 50 and out.elements == 100
    assert out.max_rel == pytest.approx(0.1, rel=1e-3)
    record = out.to_dict()
    assert record["over"] == out.over and record["over_share"] == pytest.approx(out.over / 100)
    assert "elements" in elementwise.summary() and "over float32" in elementwise.summary()

    same = compare(ref, ref, CompareOptions(check="elementwise"))
    assert same.passed and same.outputs[0].over == 0 and same.outputs[0].ratio == 0

    onnx.save(ref, tmp_path / "ref.onnx")
    onnx.save(cand, tmp_path / "cand.onnx")
    assert run("validate", tmp_path / "ref.onnx", tmp_path / "cand.onnx").exit_code == 0
    failed = run("validate", tmp_path / "ref.onnx", tmp_path / "cand.onnx", "--check",
                 "elementwise")
    assert failed.exit_code == 1 and "FAIL mul_out" in failed.output


def test_elementwise_counts_nan_and_exact_zeros():
    from onnxoto.validate import output_diff

    ref = np.array([0.0, 1.0, 2.0, np.nan], dtype=np.float32)
    cand = np.array([0.0, 1.0, 2.5, 0.0], dtype=np.float32)
    diff = output_diff("y", ref, cand, rtol=0.0, atol=0.0, check="elementwise")
    assert diff.over == 2 and not diff.passed and diff.ratio == np.inf
    exact = output_diff("y", ref[:2], cand[:2], rtol=0.0, atol=0.0, check="elementwise")
    assert exact.passed and exact.ratio == 0 and exact.over == 0


def test_options_and_shorthands_do_not_mix():
    with pytest.raises(TypeError, match="not both"):
        compare(_convnet(), _convnet(), CompareOptions(), samples=2)
    with pytest.raises(OnnxotoError, match="unknown check"):
        CompareOptions(check="loose")


def test_integer_inputs_are_checked_by_dtype(tmp_path):
    g = GraphBuilder()
    x = g.input("ids", [2], elem_type=TensorProto.INT64)
    model = g.build([g.op("Identity", [x], name="f")])
    with pytest.raises(OnnxotoError, match="'ids' is int32, the model takes int64"):
        runtime.given_inputs(model, {"ids": np.zeros(2, np.int32)})
    assert compare(model, model, CompareOptions(data={"ids": np.arange(2)})).passed
