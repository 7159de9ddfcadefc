"""One front door: ``onnxoto train dhspg`` runs the trainers, ``onnxoto --help`` never loads torch
(or onnx), one error wrapper and one set of exit codes serve both CLIs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import click
import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from onnxoto.cli import friendly_errors, main
from onnxoto.errors import MismatchError, OnnxotoError
from onnxoto.groups import read_masks_file

ROOT = Path(__file__).resolve().parents[1]
PIP_HINT = "pip install 'onnxoto[train]'"
# Runs the CLI with torch unimportable, as in an install without the train extra, and reports
# on stderr's last line which heavy modules the process imported.
NO_TORCH = """
import sys
sys.modules["torch"] = None
from onnxoto.cli import main
try:
    main(sys.argv[1:], prog_name="onnxoto")
finally:
    heavy = [m for m in ("torch", "onnx", "onnxruntime", "numpy") if sys.modules.get(m)]
    print("imported:", ",".join(heavy), file=sys.stderr)
"""


def _without_torch(*args: str) -> tuple[int, str, list[str], list[str]]:
    """(exit code, stdout, stderr lines without the report, heavy modules imported)."""
    done = subprocess.run([sys.executable, "-c", NO_TORCH, *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)
    lines = done.stderr.splitlines()
    assert lines and lines[-1].startswith("imported:"), done.stderr
    heavy = [m for m in lines[-1].removeprefix("imported:").strip().split(",") if m]
    return done.returncode, done.stdout, lines[:-1], heavy


def test_help_needs_neither_torch_nor_onnx():
    code, out, err, heavy = _without_torch("--help")
    assert code == 0, err
    for command in ("partition", "mask", "shrink", "validate", "report", "train"):
        assert f"  {command} " in out, command
    assert err == []
    assert heavy == []


@pytest.mark.parametrize("args", [["train", "dhspg", "model.onnx", "-o", "out"],
                                  ["train", "--help"], ["train"]],
                         ids=["run", "help", "bare"])
def test_train_without_torch_says_what_to_install(args, tmp_path):
    code, out, err, heavy = _without_torch(*args)
    assert code == 2
    assert out == ""
    assert err == [f"onnxoto train: error: training needs torch, which is not installed; "
                   f"{PIP_HINT}"]
    assert "torch" not in heavy


def _learnable_npz(folder: Path, shape=(1, 28, 28), train=128, test=32) -> Path:
    """A 10-class npz folder: one fixed pattern per class plus noise."""
    rng = np.random.default_rng(0)
    patterns = rng.normal(size=(10, *shape)).astype(np.float32)
    folder.mkdir(parents=True)
    for split, count in (("train", train), ("test", test)):
        y = rng.integers(0, 10, count)
        x = patterns[y] + rng.normal(size=(count, *shape)).astype(np.float32)
        np.savez(folder / f"{split}.npz", x=x.astype(np.float32), y=y)
    return folder


def _params(path: Path) -> int:
    return sum(int(np.prod(t.dims)) for t in onnx.load(str(path)).graph.initializer)


def test_onnxoto_train_dhspg_end_to_end(zoo_cache, tmp_path):
    """A strong push (--lam 1) reaches the target within 6 steps, so the slim model is smaller."""
    from trainers.train import FILES

    model = zoo_cache("mlpnet")
    data = _learnable_npz(tmp_path / "data")
    out = tmp_path / "run"
    result = CliRunner().invoke(main, [
        "train", "dhspg", str(model), "--data", str(data), "--epochs", "2", "--limit-train", "96",
        "--batch-size", "32", "--warmup-epochs", "0", "--period-steps", "2", "--target", "0.5",
        "--epsilon", "0.95", "--lam", "1", "--quiet", "--json", "-o", str(out)])
    assert result.exit_code == 0, result.output
    for name in ("trained", "masks", "slim", "metrics"):
        assert (out / FILES[name]).is_file(), name
    metrics = json.loads((out / FILES["metrics"]).read_text())
    assert json.loads(result.stdout) == metrics
    assert metrics["method"] == "dhspg"
    assert metrics["data"]["train"] == {"samples": 96, "available": 128, "limited": True}
    assert metrics["validation"]["passed"]
    assert metrics["accuracy"]["prediction_mismatches"] == 0
    assert metrics["target_reached"] and metrics["channels"]["removed"] > 0
    masks, _ = read_masks_file(out / FILES["masks"])
    assert sum(int((~keep).sum()) for keep in masks.values()) == metrics["channels"]["removed"]
    assert metrics["params"]["slim"] == _params(out / FILES["slim"])
    assert _params(out / FILES["slim"]) < _params(model)


def test_train_errors_name_the_onnxoto_command(zoo_cache, tmp_path):
    """Same wrapper as the other commands: one line that starts with the command path, exit 2."""
    data = _learnable_npz(tmp_path / "data")
    result = CliRunner().invoke(main, ["train", "dhspg", str(tmp_path / "missing.onnx"),
                                       "--data", str(data), "-o", str(tmp_path / "out")])
    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("onnxoto train dhspg: error: "), lines
    assert "missing.onnx" in lines[0]


@click.group("tool")
@click.option("--debug", is_flag=True)
def _tool(debug: bool) -> None:
    pass


@_tool.command("check")
@click.option("--mismatch", is_flag=True)
@friendly_errors
def _check(mismatch: bool) -> None:
    raise (MismatchError if mismatch else OnnxotoError)("outputs differ\nby 0.5")


@pytest.mark.parametrize("args, code", [(["check"], 2), (["check", "--mismatch"], 1)])
def test_one_wrapper_one_line_and_exit_code(args, code):
    result = CliRunner().invoke(_tool, args)
    assert result.exit_code == code
    assert result.stderr == "tool check: error: outputs differ by 0.5\n"
    debug = CliRunner().invoke(_tool, ["--debug", *args])
    assert isinstance(debug.exception, OnnxotoError)


def test_repeated_options_are_declared_once_with_help():
    shrink, validate = main.commands["shrink"], main.commands["validate"]
    for name in ("samples", "seed", "rtol", "atol"):
        ours, theirs = ([p for p in command.params if p.name == name][0]
                        for command in (shrink, validate))
        assert ours.help and ours.help == theirs.help, name
        assert ours.default == theirs.default, name


def test_bare_command_shows_help_not_an_error():
    result = CliRunner().invoke(main, [])
    assert result.exit_code == 2
    assert result.stderr.startswith("Usage: onnxoto [OPTIONS] COMMAND")
    assert "error:" not in result.stderr


def test_api_names_resolve_and_submodules_do_not_shadow_them():
    """The lazy API gives every name in __all__; importing onnxoto.partition / .report (as the
    CLI does) leaves ``onnxoto.partition`` the function and ``onnxoto.report`` = measure."""
    import importlib

    import onnxoto

    for name in ("partition", "report", "shrink", "validate"):
        importlib.import_module(f"onnxoto.{name}")
    assert all(getattr(onnxoto, name) is not None for name in onnxoto.__all__)
    assert callable(onnxoto.partition) and callable(onnxoto.shrink)
    assert onnxoto.report is onnxoto.measure and onnxoto.validate is onnxoto.compare
    assert sorted(dir(onnxoto)) == dir(onnxoto) and set(onnxoto.__all__) <= set(dir(onnxoto))


def test_both_doors_open_on_one_group():
    """``python -m trainers`` and ``onnxoto train`` run the same commands, and the trainer's
    slim-vs-trained mismatch is the wrapper's exit-1 kind."""
    from trainers.__main__ import main as module_main
    from trainers.cli import main as trainers
    from trainers.train import ValidationMismatch

    assert module_main is trainers
    ctx = click.Context(main.commands["train"])
    assert main.commands["train"].get_command(ctx, "dhspg") is trainers.commands["dhspg"]
    assert main.commands["train"].list_commands(ctx) == trainers.list_commands(ctx)
    assert issubclass(ValidationMismatch, MismatchError)
