"""``python -m trainers`` on bad input (issue 22 items 4, 8, 14): exit 2, exactly one stderr line
naming the problem, no traceback, every input file byte-identical afterwards, no stray files.

The cases run in process (click's CliRunner keeps stderr apart); one runs as a real subprocess,
so that nothing written below Python (onnxruntime's own logger) reaches the terminal.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import numpy_helper

from onnxoto.errors import OnnxotoError
from trainers.__main__ import main
from trainers.train import FILES, TrainOptions

TINY = ["--epochs", "1", "--warmup-epochs", "0", "--period-steps", "2", "--batch-size", "16",
        "--quiet"]
SHAPE = (1, 28, 28)


def write_data(folder: Path, edit: Callable | None = None, *, train: int = 48,
               test: int = 24) -> Path:
    """A learnable 10-class npz folder (one pattern per class plus noise); ``edit(split, x, y)``
    returns the arrays to store instead."""
    rng = np.random.default_rng(0)
    patterns = rng.normal(size=(10, *SHAPE)).astype(np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", train), ("test", test)):
        y = rng.integers(0, 10, count)
        x = (patterns[y] + rng.normal(size=(count, *SHAPE))).astype(np.float32)
        if edit is not None:
            x, y = edit(split, x, y)
        np.savez(folder / f"{split}.npz", x=x, y=y)
    return folder


def snapshot(folder: Path) -> dict[str, str]:
    """Relative path -> sha256 (files) or "dir", for everything under ``folder``."""
    found = {}
    for path in sorted(folder.rglob("*")):
        key = path.relative_to(folder).as_posix()
        found[key] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return found


@pytest.fixture(scope="module")
def model_bytes(zoo_cache) -> bytes:
    return zoo_cache("mlpnet").read_bytes()


@pytest.fixture(scope="module")
def finished(model_bytes, tmp_path_factory) -> Path:
    """A folder holding one finished tiny run (all of FILES)."""
    root = tmp_path_factory.mktemp("finished")
    model = root / "mlpnet.onnx"
    model.write_bytes(model_bytes)
    out = root / "out"
    result = invoke(["dhspg", model, "--data", write_data(root / "data"), *TINY, "-o", out])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES.values())
    return out


def invoke(args: list) -> object:
    return CliRunner().invoke(main, [str(a) for a in args])


# --------------------------------------------------------------------------- case builders


def set_label(which: str, index: int, value: int) -> Callable:
    def edit(split, x, y):
        if split == which:
            y = y.copy()
            y[index] = value
        return x, y
    return edit


def set_pixel(which: str, index: int, value: float) -> Callable:
    def edit(split, x, y):
        if split == which:
            x = x.copy()
            x[index].flat[7] = value
        return x, y
    return edit


def emptied(which: str) -> Callable:
    def edit(split, x, y):
        return (x[:0], y[:0]) if split == which else (x, y)
    return edit


def scaled(factor: float) -> Callable:
    def edit(split, x, y):
        return x * np.float32(factor), y
    return edit


def cropped_test(split, x, y):
    return (x[:, :, :14, :14].copy(), y) if split == "test" else (x, y)


def float64_overflow(split, x, y):
    return (x.astype(np.float64) * 1e300, y) if split == "train" else (x, y)


def copy_finished(keep_outputs: bool = True) -> Callable:
    def prep(finished: Path, tmp: Path, out: Path) -> None:
        shutil.copytree(finished, out)
        if not keep_outputs:  # as a killed run leaves it: the checkpoint only
            for key, name in FILES.items():
                if key != "checkpoint":
                    (out / name).unlink()
    return prep


def damaged_checkpoint(damage: Callable[[dict], None]) -> Callable:
    """A killed run's folder whose checkpoint agrees with this run (same fingerprint) but was
    then damaged by ``damage(state)``."""
    def prep(finished: Path, tmp: Path, out: Path) -> None:
        copy_finished(keep_outputs=False)(finished, tmp, out)
        path = out / FILES["checkpoint"]
        state = torch.load(path, weights_only=True)
        state["run"]["data"] = str(tmp / "data")
        damage(state)
        buffer = io.BytesIO()
        torch.save(state, buffer)
        path.write_bytes(buffer.getvalue())
    return prep


def nan_bias(finished: Path, tmp: Path, out: Path) -> None:
    model = onnx.load(str(tmp / "mlpnet.onnx"))
    bias = next(t for t in model.graph.initializer if t.name == "5.bias")
    values = numpy_helper.to_array(bias).copy()
    values[0] = np.nan
    bias.CopyFrom(numpy_helper.from_array(values, bias.name))
    onnx.save(model, str(tmp / "nan.onnx"))


def _drop(key: str) -> Callable[[dict], None]:
    return lambda state: state.pop(key)


def _reshape_weight(state: dict) -> None:
    first = next(iter(state["module"]))  # the first Gemm's weight, 40 x 784
    state["module"][first] = torch.zeros(3, 3)


def _short_redundant_set(state: dict) -> None:
    state["optimizer"]["dhspg"]["redundant"] = torch.zeros(2, dtype=torch.bool)


def _bad_rng(state: dict) -> None:
    state["rng"] = {"torch": "seed"}


def _epoch_text(state: dict) -> None:
    state["epoch"] = "1"


def _as_given(path: Path, *_: Path) -> Path:
    return path


@dataclass(frozen=True)
class Case:
    """One bad input: the data ``edit``, files put in place by ``prep(finished, tmp, out)``,
    the output folder and model to pass, and what the error line must say."""

    name: str
    expect: str
    args: list = field(default_factory=list)
    edit: Callable | None = None
    prep: Callable | None = None
    out: Callable[[Path], Path] = _as_given
    model: Callable[[Path, Path], Path] = _as_given


CASES = [
    # item 4: the output folder
    Case("finished run in -o", "holds an earlier run (checkpoint.pt, trained.onnx, masks.npz, "
         "slim.onnx, metrics.json); pass --resume to continue it or --overwrite",
         prep=copy_finished()),
    Case("killed run in -o", "holds an earlier run (checkpoint.pt); pass --resume",
         prep=copy_finished(keep_outputs=False)),
    Case("-o is a file", "is a file", prep=lambda f, t, o: o.write_text("x")),
    Case("-o under a file", "is a file, not a folder", prep=lambda f, t, o: o.write_text("x"),
         out=lambda out: out / "run"),
    Case("-o not writable", "cannot write in '/proc'", out=lambda out: Path("/proc/onnxoto/run")),
    Case("--resume with --overwrite", "resume and overwrite exclude each other",
         args=["--resume", "--overwrite"]),
    Case("model is -o/trained.onnx", "is the same file as the input", args=["--overwrite"],
         prep=copy_finished(), model=lambda model, out: out / FILES["trained"]),
    # item 8: data
    Case("train label -1", "train.npz': label -1 at index 5", edit=set_label("train", 5, -1)),
    Case("train label = classes", "train.npz': label 10 at index 5 is out of range for the "
         "model's 10 classes", edit=set_label("train", 5, 10)),
    Case("test label = classes", "test.npz': label 10 at index 3 is out of range",
         edit=set_label("test", 3, 10)),
    Case("test label -3", "test.npz': label -3 at index 3", edit=set_label("test", 3, -3)),
    Case("empty train", "train.npz': holds no samples", edit=emptied("train")),
    Case("empty test", "test.npz': holds no samples", edit=emptied("test")),
    Case("NaN in train x", "train.npz': sample x[9] holds NaN (1 of 48",
         edit=set_pixel("train", 9, np.nan)),
    Case("Inf in test x", "test.npz': sample x[2] holds Inf", edit=set_pixel("test", 2, np.inf)),
    Case("float64 x beyond float32", "train.npz': sample x[0] holds Inf (48 of 48",
         edit=float64_overflow),
    Case("test samples of another shape", "test.npz': samples of shape (1, 14, 14), but",
         edit=cropped_test),
    Case("NaN weight in the model", "model output holds NaN or Inf", prep=nan_bias,
         model=lambda model, out: model.parent / "nan.onnx"),
    Case("loss diverges", "training diverged: the loss is", edit=scaled(1e4),
         args=["--lr", "1e30"]),
    # item 8: checkpoints
    Case("checkpoint without optimizer", "damaged checkpoint (no 'optimizer')",
         args=["--resume"], prep=damaged_checkpoint(_drop("optimizer"))),
    Case("checkpoint without history", "damaged checkpoint (no 'history')",
         args=["--resume"], prep=damaged_checkpoint(_drop("history"))),
    Case("checkpoint weight of wrong shape", "is (3, 3), the model's is (40, 784)",
         args=["--resume"], prep=damaged_checkpoint(_reshape_weight)),
    Case("checkpoint redundant set of wrong size", "dhspg 'redundant' has (2,) entries",
         args=["--resume"], prep=damaged_checkpoint(_short_redundant_set)),
    Case("checkpoint RNG state not a tensor", "optimizer or RNG state", args=["--resume"],
         prep=damaged_checkpoint(_bad_rng)),
    Case("checkpoint epoch as text", "'epoch' is a str", args=["--resume"],
         prep=damaged_checkpoint(_epoch_text)),
    # item 14 and other options
    Case("epochs <= warm-up with a target", "epochs 1 <= warmup_epochs 1: no epoch is left",
         args=["--warmup-epochs", "1"]),
    Case("--lr inf", "options must be finite numbers: lr inf", args=["--lr", "inf"]),
    Case("--weight-decay inf", "weight_decay inf", args=["--weight-decay", "inf"]),
    Case("--lam inf", "lam inf", args=["--lam", "inf"]),
    Case("--epochs 0", "Invalid value for '--epochs': 0 is not in the range x>=1",
         args=["--epochs", "0"]),
]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input_is_one_line(case, model_bytes, finished, tmp_path):
    model = tmp_path / "mlpnet.onnx"
    model.write_bytes(model_bytes)
    out = tmp_path / "out"
    if case.prep is not None:
        case.prep(finished, tmp_path, out)
    data = write_data(tmp_path / "data", case.edit)
    before = snapshot(tmp_path)
    result = invoke(["dhspg", case.model(model, out), "--data", data, *TINY, *case.args,
                     "-o", case.out(out)])
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        f"{type(result.exception).__name__}: {result.exception}"
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("trainers dhspg: error: "), lines[0]
    assert case.expect in lines[0]
    assert result.stdout == ""
    assert snapshot(tmp_path) == before, "an input changed or a file was left behind"


def test_overwrite_replaces_an_earlier_run(model_bytes, finished, tmp_path):
    """--overwrite clears the earlier run's files before the first epoch: a run that then
    fails leaves none of them to be mistaken for its own."""
    model = tmp_path / "mlpnet.onnx"
    model.write_bytes(model_bytes)
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    (out / "notes.txt").write_text("mine")
    data = write_data(tmp_path / "data", scaled(1e4))
    diverged = invoke(["dhspg", model, "--data", data, *TINY, "--lr", "1e30", "--overwrite",
                       "-o", out])
    assert diverged.exit_code == 2 and "training diverged" in diverged.stderr
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    data = write_data(tmp_path / "data")
    done = invoke(["dhspg", model, "--data", data, *TINY, "--overwrite", "--json", "-o", out])
    assert done.exit_code == 0, done.output
    assert sorted(p.name for p in out.iterdir()) == sorted([*FILES.values(), "notes.txt"])
    assert json.loads(done.stdout)["options"]["overwrite"] is True


def test_target_not_reached_is_warned_and_recorded(model_bytes, tmp_path):
    model = tmp_path / "mlpnet.onnx"
    model.write_bytes(model_bytes)
    data = write_data(tmp_path / "data")
    args = ["dhspg", model, "--data", data, *TINY, "--epsilon", "0"]
    short = invoke([*args, "--target", "0.9", "-o", tmp_path / "short"])
    assert short.exit_code == 0, short.output
    metrics = json.loads((tmp_path / "short" / FILES["metrics"]).read_text())
    assert metrics["target_reached"] is False and metrics["group_sparsity"] < 0.9
    warnings = [line for line in short.output.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "short of the target 90.0%" in warnings[0]
    assert "(target 90.0%, not reached)" in short.stdout
    reached = invoke([*args, "--target", "0", "-o", tmp_path / "none"])
    assert reached.exit_code == 0, reached.output
    assert json.loads((tmp_path / "none" / FILES["metrics"]).read_text())["target_reached"]
    assert "warning:" not in reached.output


def test_options_refuse_a_target_without_pruning_epochs():
    with pytest.raises(OnnxotoError, match="epochs 2 <= warmup_epochs 2"):
        TrainOptions(epochs=2, warmup_epochs=2, target=0.5)
    assert TrainOptions(epochs=2, warmup_epochs=2, target=0).target == 0


def test_subprocess_output_has_no_onnxruntime_lines(model_bytes, tmp_path):
    """A real process, since onnxruntime's logger writes below Python where CliRunner cannot
    see: a good run (its sessions validate and score the models) prints only our lines."""
    model = tmp_path / "mlpnet.onnx"
    model.write_bytes(model_bytes)
    done = subprocess.run([sys.executable, "-m", "trainers", "dhspg", str(model), *TINY,
                           "--data", str(write_data(tmp_path / "data")), "--target", "0",
                           "-o", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert "onnxruntime" not in done.stdout
    assert done.stdout.splitlines()[0].startswith("metric ")
