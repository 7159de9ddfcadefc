"""The command line: exit codes, one-line errors, JSON, and that inputs are never touched."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from onnxoto.cli import main
from onnxoto.groups import save_masks
from onnxoto.partition import partition


def run(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_error_line(result, code: int = 2) -> str:
    assert result.exit_code == code, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    return lines[0]


@pytest.fixture
def mlp(zoo_cache):
    return zoo_cache("mlpnet")


def test_missing_path(tmp_path):
    line = one_error_line(run("partition", tmp_path / "nope.onnx"))
    assert "no such file" in line and "nope.onnx" in line


def test_not_onnx_bytes(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00\x01 definitely not a protobuf \xff\xfe" * 10)
    line = one_error_line(run("partition", bad))
    assert "bad.onnx" in line


def test_truncated_model(mlp, tmp_path):
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(mlp.read_bytes()[: mlp.stat().st_size // 2])
    line = one_error_line(run("partition", cut))
    assert "cut.onnx" in line


def test_model_failing_checker(tmp_path):
    node = helper.make_node("Relu", ["x"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", 1, [1, 3])],
                              [helper.make_tensor_value_info("missing", 1, [1, 3])])
    path = tmp_path / "broken.onnx"
    onnx.save(helper.make_model(graph), path)
    line = one_error_line(run("partition", path))
    assert "onnx.checker" in line


def test_missing_external_data(mlp, tmp_path):
    path = tmp_path / "ext.onnx"
    onnx.save(onnx.load(mlp), path, save_as_external_data=True, location="ext.onnx.data",
              size_threshold=0)
    (tmp_path / "ext.onnx.data").unlink()
    line = one_error_line(run("partition", path))
    assert "ext.onnx.data" in line and "missing" in line


def test_graph_without_stems(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])
    path = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])],
                                                  "g", [x], [y])), path)
    line = one_error_line(run("partition", path))
    assert "no Conv" in line


def test_debug_shows_the_traceback(tmp_path):
    """Without --debug: one line; with it, Python's traceback down to where the error was raised."""
    import subprocess
    import sys

    missing = str(tmp_path / "nope.onnx")
    command = [sys.executable, "-m", "onnxoto.cli", "--debug", "partition", missing]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode != 0
    assert "Traceback (most recent call last):" in done.stderr, done.stderr
    assert f"OnnxotoError: '{missing}': no such file" in done.stderr, done.stderr
    assert 'File "' in done.stderr and "onnxoto" in done.stderr


def test_partition_writes_json_and_explains(mlp, tmp_path):
    out = tmp_path / "partition.json"
    result = run("partition", mlp, "-o", out)
    assert result.exit_code == 0, result.output
    assert "prunable groups" in result.output
    doc = json.loads(out.read_text())
    assert doc["format"] == "onnxoto.partition/2"
    assert [g["size"] for g in doc["groups"] if g["prunable"]] == [40, 20]
    summary = json.loads(run("partition", mlp, "--json").output)
    assert summary["prunable"] == 2
    explained = run("partition", mlp, "--explain", "3.weight")
    assert "group 0 (40 channels): prunable" in explained.output


def test_partition_refuses_to_overwrite_its_input(mlp):
    before = mlp.read_bytes()
    line = one_error_line(run("partition", mlp, "-o", mlp))
    assert "refusing to overwrite" in line
    assert mlp.read_bytes() == before


def test_mask_shrink_validate_report(zoo_cache, tmp_path):
    model = zoo_cache("resnet_basic")
    before = model.read_bytes()
    masks, slim = tmp_path / "masks.npz", tmp_path / "slim.onnx"
    assert run("mask", model, "--ratio", "0.5", "-o", masks).exit_code == 0
    shrunk = run("shrink", model, "--mask", masks, "-o", slim, "--json")
    assert shrunk.exit_code == 0, shrunk.output
    report = json.loads(shrunk.output)
    assert report["validation"]["passed"]
    params = {r["name"]: r for r in report["metrics"]}["params"]
    assert params["after"] < params["before"]
    assert run("validate", model, slim, "--mask", masks).exit_code == 0
    compared = json.loads(run("report", model, slim, "--json").output)
    assert compared["slim_metrics"]["macs"] < compared["metrics"]["macs"]
    assert model.read_bytes() == before


def test_validate_without_mask_fails_with_exit_1(zoo_cache, tmp_path):
    model = zoo_cache("resnet_basic")
    masks, slim = tmp_path / "masks.npz", tmp_path / "slim.onnx"
    run("mask", model, "--ratio", "0.5", "-o", masks)
    run("shrink", model, "--mask", masks, "-o", slim)
    result = run("validate", model, slim)
    assert result.exit_code == 1
    assert "FAILED" in result.output


def test_shrink_zeros_finds_zeroed_channels(zoo_cache, tmp_path):
    from onnxoto.masking import zero_channels

    model_path = zoo_cache("vgg_bn")
    result = partition(model_path)
    group = result.prunable[0]
    keep = np.arange(group.size) % 4 != 0
    zeroed = tmp_path / "zeroed.onnx"
    onnx.save(zero_channels(onnx.load(model_path), result.groups, {group.id: keep}), zeroed)
    out = run("shrink", zeroed, "--zeros", "-o", tmp_path / "slim.onnx", "--json")
    assert out.exit_code == 0, out.output
    changes = json.loads(out.output)["changes"]
    assert changes == [{"group": group.id, "layer": "/features/features.0/Conv",
                        "before": group.size, "after": int(keep.sum())}]


@pytest.mark.parametrize(("case", "message"), [
    ("wrong_length", "'g0' has shape (7,), group 0 has 40 channels"),
    ("non_prunable", "'g2' removes channels of non-prunable group 2"),
    ("all_removed", "'g1' removes every channel of group 1; keep at least one"),
    ("not_bool", "'g0' has dtype float32, expected bool"),
])
def test_bad_masks_exit_2_and_write_nothing(mlp, tmp_path, case, message):
    arrays = {
        "wrong_length": {0: np.ones(7, bool)},
        "non_prunable": {2: np.eye(10, dtype=bool)[0]},
        "all_removed": {1: np.zeros(20, bool)},
        "not_bool": {0: np.ones(40, np.float32)},
    }[case]
    masks = tmp_path / "m.npz"
    np.savez(masks, **{f"g{k}": v for k, v in arrays.items()})
    slim = tmp_path / "slim.onnx"
    line = one_error_line(run("shrink", mlp, "--mask", masks, "-o", slim))
    assert line.startswith("onnxoto shrink: error: ") and "m.npz" in line, line
    assert message in line, line
    assert not slim.exists()


def test_mask_from_another_model_warns(zoo_cache, tmp_path):
    model = zoo_cache("mlpnet")
    masks = tmp_path / "m.npz"
    save_masks(masks, {0: np.arange(40) < 20}, model_sha256="0" * 64)
    result = CliRunner().invoke(main, ["shrink", str(model), "--mask", str(masks), "-o",
                                       str(tmp_path / "s.onnx")])
    assert result.exit_code == 0
    assert "made for another model" in result.output


def test_shrink_needs_exactly_one_mask_source(mlp, tmp_path):
    line = one_error_line(run("shrink", mlp, "-o", tmp_path / "s.onnx"))
    assert "exactly one of --mask" in line


def test_core_imports_without_torch():
    """Deployment machines have no torch: onnxoto/ must not need it."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['torch'] = None\n"
            "import onnxoto, onnxoto.cli, onnxoto.shrink, onnxoto.report\n"
            "print('ok')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_report_latency_gives_speedup(zoo_cache, tmp_path):
    model = zoo_cache("vgg_bn")
    masks, slim = tmp_path / "masks.npz", tmp_path / "slim.onnx"
    run("mask", model, "--ratio", "0.75", "-o", masks)
    run("shrink", model, "--mask", masks, "-o", slim, "--round-to", "8")
    data = json.loads(run("report", model, slim, "--latency", "--runs", "3", "--warmup", "1",
                          "--json").output)
    assert data["latency"]["runs"] == 3 and data["slim_latency"]["runs"] == 3
    full_ms, slim_ms = data["latency"]["median_ms"], data["slim_latency"]["median_ms"]
    assert 0 < slim_ms and 0 < full_ms
    assert data["speedup"] == pytest.approx(full_ms / slim_ms)  # > 1 means the slim is faster
    table = run("report", model, slim, "--latency", "--runs", "2").output
    assert "median ms" in table and "speed-up (median)" in table
