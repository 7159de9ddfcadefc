"""Bad input, as a hostile user gives it, to every command and to the Python API.

For each case: exit code 2, exactly one line on stderr naming the problem, no traceback, every
file in the folder byte-identical afterwards and no file added (the API: OnnxotoError).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import onnxoto
from onnxoto.cli import main
from onnxoto.errors import OnnxotoError
from onnxoto.groups import save_masks


def conv_model(*, weight: np.ndarray | None = None, input_dims=(1, 8, 8, 8),
               ir_version: int = 10, opset: int = 17, inputs_too: bool = False,
               ) -> onnx.ModelProto:
    """x -> Conv(8 -> 16) -> Relu -> Conv(16 -> 4): one prunable group of 16 channels."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((16, 8, 3, 3)).astype(np.float32) if weight is None else weight
    inits = [numpy_helper.from_array(w1, "w1"),
             numpy_helper.from_array(rng.standard_normal((4, 16, 3, 3)).astype(np.float32), "w2")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["h"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Conv", ["r", "w2"], ["y"], pads=[1, 1, 1, 1])]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(input_dims))]
    if inputs_too:
        inputs += [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in inits]
    graph = helper.make_graph(nodes, "conv", inputs,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT,
                                                             [input_dims[0], 4, *input_dims[2:]])],
                              inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                             ir_version=ir_version)


def save(model: onnx.ModelProto, path: Path) -> Path:
    path.write_bytes(model.SerializeToString())
    return path


def good_files(folder: Path) -> tuple[Path, Path]:
    model = save(conv_model(), folder / "model.onnx")
    masks = folder / "masks.npz"
    save_masks(masks, {0: np.arange(16) % 2 == 0})
    return model, masks


# --- bad models --------------------------------------------------------------------------------

def _empty(folder):
    (folder / "bad.onnx").write_bytes(b"")


def _random(folder):
    (folder / "bad.onnx").write_bytes(np.random.default_rng(1).bytes(4096))


def _truncated(folder):
    data = conv_model().SerializeToString()
    (folder / "bad.onnx").write_bytes(data[: len(data) // 2])


def _folder(folder):
    (folder / "bad.onnx").mkdir()


def _cyclic(folder):
    nodes = [helper.make_node("Add", ["x", "c"], ["a"]), helper.make_node("Relu", ["a"], ["c"])]
    graph = helper.make_graph(nodes, "cycle",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, 4])])
    save(helper.make_model(graph, ir_version=10), folder / "bad.onnx")


def _dangling(folder):
    model = conv_model()
    model.graph.node[1].input[0] = "nowhere"
    save(model, folder / "bad.onnx")


def _wrong_dtype(folder):
    model = conv_model()
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(
        np.ones((16, 8, 3, 3), dtype=np.int64), "w1"))
    save(model, folder / "bad.onnx")


def _huge_no_data(folder):
    model = conv_model()
    model.graph.initializer[0].CopyFrom(onnx.TensorProto(name="w1", data_type=TensorProto.FLOAT,
                                                         dims=[1 << 20, 1 << 20, 3, 3]))
    save(model, folder / "bad.onnx")


def _zero_channels(folder):
    save(conv_model(weight=np.zeros((0, 8, 3, 3), np.float32)), folder / "bad.onnx")


def _missing_data(folder):
    onnx.save_model(conv_model(), folder / "bad.onnx", save_as_external_data=True,
                    location="bad.onnx.data", size_threshold=0)
    (folder / "bad.onnx.data").unlink()


def _ir_too_new(folder):
    save(conv_model(ir_version=99), folder / "bad.onnx")


def _huge_input(folder):
    save(conv_model(input_dims=(1 << 33, 8, 8, 8)), folder / "bad.onnx")


@dataclass(frozen=True)
class ModelCase:
    name: str
    build: Callable[[Path], None]
    needle: str
    commands: tuple[str, ...] = ("partition", "mask", "shrink", "validate", "report")


MODEL_CASES = [
    ModelCase("empty", _empty, "no graph found"),
    ModelCase("random bytes", _random, "bad.onnx"),
    ModelCase("truncated", _truncated, "bad.onnx"),
    ModelCase("a folder", _folder, "is a directory"),
    ModelCase("cyclic graph", _cyclic, "topologically sorted"),
    ModelCase("dangling input name", _dangling, "nowhere"),
    ModelCase("wrong dtype", _wrong_dtype, "tensor(int64)"),
    ModelCase("huge dims, no data", _huge_no_data, "'w1'"),
    ModelCase("zero-channel conv", _zero_channels, "'w1'"),
    ModelCase("missing external data", _missing_data, "bad.onnx.data"),
    ModelCase("IR version too new", _ir_too_new, "ir_version 99",
              ("shrink", "validate", "report")),
    ModelCase("input dim 2^33", _huge_input, "--input-shape x:", ("shrink", "validate", "report")),
]


def command_args(command: str, folder: Path, model: Path, good: Path) -> list[str]:
    out = folder / "out"
    return {
        "partition": ["partition", model, "-o", out / "partition.json"],
        "mask": ["mask", model, "--ratio", "0.5", "-o", out / "m.npz"],
        "shrink": ["shrink", model, "--zeros", "-o", out / "slim.onnx"],
        "validate": ["validate", model, good],
        "report": ["report", model, "--latency", "--runs", "1", "--warmup", "0"],
    }[command]


def snapshot(folder: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file (folders as 'dir')."""
    found = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            found[os.path.relpath(os.path.join(root, name), folder)] = "dir"
        for name in files:
            path = os.path.join(root, name)
            found[os.path.relpath(path, folder)] = hashlib.sha256(
                Path(path).read_bytes()).hexdigest()
    return found


def one_error_line(args: list, folder: Path) -> str:
    """Run the CLI; assert exit 2, one stderr line, nothing on stdout, files untouched."""
    before = snapshot(folder)
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        f"{type(result.exception).__name__}: {result.exception}"
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    assert result.stdout.strip() == ""
    assert snapshot(folder) == before, "an input changed or a file was left behind"
    return lines[0]


MODEL_PARAMS = [pytest.param(case, command, id=f"{case.name}-{command}")
                for case in MODEL_CASES for command in case.commands]


@pytest.mark.parametrize(("case", "command"), MODEL_PARAMS)
def test_bad_model(tmp_path, case, command):
    good, _ = good_files(tmp_path)
    case.build(tmp_path)
    line = one_error_line(command_args(command, tmp_path, tmp_path / "bad.onnx", good), tmp_path)
    assert line.startswith(f"onnxoto {command}: error: ")
    assert case.needle in line


API_CALLS = {
    "partition": lambda model, good: onnxoto.partition(model),
    "shrink": lambda model, good: onnxoto.shrink(model, {}),
    "validate": lambda model, good: onnxoto.compare(model, good),
    "report": lambda model, good: onnxoto.measure_latency(model, runs=1, warmup=0),
}


@pytest.mark.parametrize(("case", "call"), [
    pytest.param(case, call, id=f"{case.name}-{call}")
    for case in MODEL_CASES for call in API_CALLS if call in case.commands])
def test_bad_model_api(tmp_path, case, call):
    good, _ = good_files(tmp_path)
    case.build(tmp_path)
    before = snapshot(tmp_path)
    with pytest.raises(OnnxotoError, match=None) as info:
        API_CALLS[call](tmp_path / "bad.onnx", good)
    assert case.needle in str(info.value) and "\n" not in str(info.value)
    assert snapshot(tmp_path) == before


# --- bad masks ---------------------------------------------------------------------------------

def _savez(path: Path, **arrays) -> None:
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)


def _huge_header(path: Path) -> None:
    """A zip of a few bytes whose array header declares 2e9 elements."""
    header = {"descr": "|b1", "fortran_order": False, "shape": (2_000_000_000,)}
    with zipfile.ZipFile(path, "w") as archive, archive.open("g0.npy", "w") as handle:
        np.lib.format.write_array_header_1_0(handle, header)
        handle.write(b"\x01" * 16)


MASK_CASES = {
    "wrong key": (lambda p: _savez(p, layer1=np.ones(16, bool)), "unknown group key 'layer1'"),
    "wrong dtype": (lambda p: _savez(p, g0=np.ones(16, np.float32)), "expected bool"),
    "wrong length": (lambda p: _savez(p, g0=np.ones(7, bool)), "group 0 has 16 channels"),
    "pickled objects": (lambda p: _savez(p, g0=np.array([object()] * 16)), "pickled"),
    "not a zip": (lambda p: p.write_bytes(b"definitely not a zip"), "not a zip archive"),
    "declares 2e9 elements": (_huge_header, "(2000000000,)"),
    "another model": (lambda p: save_masks(p, {0: np.ones(7, bool)}, model_sha256="0" * 64),
                      "made for another model"),
    "missing": (lambda p: None, "no such mask file"),
    "not an array inside": (lambda p: zipfile.ZipFile(p, "w").writestr("g0.txt", "1"),
                            "not a numpy array"),
}


@pytest.mark.parametrize("command", ["shrink", "validate"])
@pytest.mark.parametrize("case", list(MASK_CASES))
def test_bad_mask(tmp_path, case, command):
    model, _ = good_files(tmp_path)
    bad = tmp_path / "bad.npz"
    MASK_CASES[case][0](bad)
    args = (["shrink", model, "--mask", bad, "-o", tmp_path / "out" / "slim.onnx"]
            if command == "shrink" else ["validate", model, model, "--mask", bad])
    line = one_error_line(args, tmp_path)
    assert MASK_CASES[case][1] in line
    if case != "missing":
        assert str(bad) in line, "mask errors name the file"


# --- bad output paths --------------------------------------------------------------------------

def _external_input(folder: Path) -> Path:
    model = folder / "e2" / "model.onnx"
    model.parent.mkdir()
    onnx.save_model(conv_model(), model, save_as_external_data=True,
                    location="model.onnx.data", size_threshold=0)
    return model


def _old_output_shares_input_data(folder: Path) -> list:
    """The input's data file is 'slim.onnx.data'; an old slim.onnx beside it references it too."""
    model = folder / "model2.onnx"
    onnx.save_model(conv_model(), model, save_as_external_data=True,
                    location="slim.onnx.data", size_threshold=0)
    onnx.save_model(conv_model(), folder / "slim.onnx", save_as_external_data=True,
                    location="slim.onnx.data", size_threshold=0)
    return ["shrink", model, "--zeros", "-o", folder / "slim.onnx"]


PATH_CASES = {
    "missing folder then .. is the input": (
        lambda f, m, k: ["shrink", m, "--mask", k, "-o", f / "nope" / ".." / "model.onnx"],
        "same file as the input"),
    "output is the input": (lambda f, m, k: ["shrink", m, "--zeros", "-o", m],
                            "same file as the input"),
    "output is the mask": (lambda f, m, k: ["shrink", m, "--mask", k, "-o", k],
                           "same file as the input"),
    "output is the input's data file": (
        lambda f, m, k: ["shrink", _external_input(f), "--zeros", "--no-external-data", "-o",
                         f / "e2" / "model.onnx.data"], "same file as the input"),
    "old output's data file is the input's": (lambda f, m, k: _old_output_shares_input_data(f),
                                              "same file as the input"),
    "symlink to the input": (
        lambda f, m, k: (os.symlink(m, f / "link.onnx"),
                         ["shrink", m, "--zeros", "-o", f / "link.onnx"])[1],
        "same file as the input"),
    "output is a folder": (lambda f, m, k: ["shrink", m, "--zeros", "-o", f], "is a folder"),
    "output under a file": (lambda f, m, k: ["shrink", m, "--zeros", "-o", k / "slim.onnx"],
                            "is a file, not a folder"),
    "read-only folder": (lambda f, m, k: ["shrink", m, "--zeros", "-o", "/sys/slim.onnx"],
                         "cannot write in"),
    "mask -o is the input": (lambda f, m, k: ["mask", m, "--ratio", "0.5", "-o", m],
                             "same file as the input"),
    "partition -o under a file": (lambda f, m, k: ["partition", m, "-o", k / "p.json"],
                                  "is a file, not a folder"),
    "round-to masks file is the input mask": (
        lambda f, m, k: ["shrink", m, "--mask", shutil.copy(k, f / "slim.onnx.masks.npz"),
                         "--round-to", "8", "-o", f / "slim.onnx"],
        "same file as the input"),
}


@pytest.mark.parametrize("case", list(PATH_CASES))
def test_bad_output_path(tmp_path, case):
    model, masks = good_files(tmp_path)
    args = PATH_CASES[case][0](tmp_path, model, masks)
    line = one_error_line(args, tmp_path)
    assert PATH_CASES[case][1] in line


def test_usage_error_is_one_line(tmp_path):
    model, _ = good_files(tmp_path)
    line = one_error_line(["shrink", model, "--zeros", "-o", tmp_path / "s.onnx",
                           "--input-shape", "x=1x8"], tmp_path)
    assert "NAME:DIMS" in line
    line = one_error_line(["shrink", model, "--zeros"], tmp_path)
    assert "--output" in line


# --- good input the issue found mishandled ------------------------------------------------------

def test_ir3_initializers_as_graph_inputs_are_supported(tmp_path):
    """IR 3 (opset 7) lists every initializer as a graph input; the slim model must too."""
    model = save(conv_model(ir_version=3, opset=7, inputs_too=True), tmp_path / "ir3.onnx")
    masks = tmp_path / "m.npz"
    save_masks(masks, {0: np.arange(16) < 5})
    slim = tmp_path / "slim.onnx"
    result = CliRunner().invoke(main, ["shrink", str(model), "--mask", str(masks), "-o", str(slim)])
    assert result.exit_code == 0, result.output
    written = onnx.load(str(slim))
    assert written.ir_version == 3
    declared = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim]
                for i in written.graph.input}
    assert declared["w1"] == [5, 8, 3, 3] and declared["w2"] == [4, 5, 3, 3]
    check = CliRunner().invoke(main, ["validate", str(model), str(slim), "--mask", str(masks)])
    assert check.exit_code == 0, check.output


def test_round_to_writes_the_masks_it_applied(tmp_path):
    model, _ = good_files(tmp_path)
    masks = tmp_path / "few.npz"
    save_masks(masks, {0: np.arange(16) < 3})
    slim = tmp_path / "slim.onnx"
    result = CliRunner().invoke(main, ["shrink", str(model), "--mask", str(masks), "--round-to",
                                       "8", "-o", str(slim)])
    assert result.exit_code == 0, result.output
    applied = tmp_path / "slim.onnx.masks.npz"
    assert f"wrote {applied}" in result.output
    assert int(np.load(applied)["g0"].sum()) == 8
    original = CliRunner().invoke(main, ["validate", str(model), str(slim), "--mask", str(masks)])
    assert original.exit_code == 1, "the 3-channel mask is not what was applied"
    check = CliRunner().invoke(main, ["validate", str(model), str(slim), "--mask", str(applied)])
    assert check.exit_code == 0, check.output


def test_exact_match_prints_zero_and_nothing_removed_says_so(tmp_path):
    model, _ = good_files(tmp_path)
    result = CliRunner().invoke(main, ["shrink", str(model), "--zeros", "-o",
                                       str(tmp_path / "slim.onnx")])
    assert result.exit_code == 0, result.output
    assert "max abs diff 0;" in result.output and "inf" not in result.output
    assert sum("nothing removed" in line for line in result.output.splitlines()) == 1


def test_report_describes_the_file_this_run_wrote(tmp_path):
    model, masks = good_files(tmp_path)
    slim = tmp_path / "slim.onnx"
    result = CliRunner().invoke(main, ["shrink", str(model), "--mask", str(masks), "-o", str(slim),
                                       "--external-data", "--json"])
    assert result.exit_code == 0, result.output
    import json

    output = json.loads(result.stdout)["output"]
    assert output["sha256"] == hashlib.sha256(slim.read_bytes()).hexdigest()
    data = Path(output["files"][1])
    assert output["bytes"] == slim.stat().st_size and output["data_bytes"] == data.stat().st_size


def test_checker_message_is_not_cut_at_its_first_line(tmp_path):
    from onnxoto.errors import one_line

    assert one_line(ValueError("first\n\n  second line\nthird")) == "first second line third"
    assert one_line(ValueError("")) == "ValueError"


def test_onnxruntime_log_lines_stay_quiet(tmp_path, capfd):
    """An unused initializer makes onnxruntime warn on its own stderr (below our one line)."""
    model = conv_model()
    model.graph.initializer.append(numpy_helper.from_array(np.ones(3, np.float32), "unused"))
    path = save(model, tmp_path / "m.onnx")
    onnxoto.compare(path, path, samples=1)
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""
