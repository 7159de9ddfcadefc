"""``onnxoto train woodfisher`` / ``python -m trainers woodfisher``: tiny runs end to end (one-shot
unstructured and structured, gradual), exact resume, one-line refusals."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from onnxoto.cli import main as onnxoto_main
from onnxoto.errors import OnnxotoError
from trainers.__main__ import main
from trainers.train import FILES
from trainers.woodfisher.run import WoodFisherOptions, run_woodfisher

pytestmark = pytest.mark.usefixtures("one_thread")

# 128 training samples in batches of 32: 4 steps per epoch, 8 in two epochs
TINY = ["--epochs", "2", "--batch-size", "32", "--fisher-samples", "16", "--lr", "0.05",
        "--quiet", "--json"]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """A learnable 10-class npz folder: one fixed pattern per class plus noise."""
    rng = np.random.default_rng(0)
    patterns = rng.normal(size=(10, 1, 28, 28)).astype(np.float32)
    folder = tmp_path_factory.mktemp("synthetic")
    for split, count in (("train", 128), ("test", 48)):
        y = rng.integers(0, 10, count)
        x = patterns[y] + rng.normal(size=(count, 1, 28, 28)).astype(np.float32)
        np.savez(folder / f"{split}.npz", x=x.astype(np.float32), y=y)
    return folder


@pytest.fixture(scope="module")
def mlpnet(zoo_cache):
    return zoo_cache("mlpnet")


def _cli(args, command=main):
    return CliRunner().invoke(command, [str(a) for a in args])


def _run(mlpnet, synthetic, out, *extra):
    result = _cli(["woodfisher", mlpnet, "--data", synthetic, *TINY, *extra, "-o", out])
    assert result.exit_code == 0, result.output
    return json.loads((out / FILES["metrics"]).read_text())


def _weights(path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


@pytest.fixture(scope="module")
def gradual(mlpnet, synthetic, tmp_path_factory):
    """Unstructured, 2 pruning steps over 8 training steps: at steps 0 and 4."""
    out = tmp_path_factory.mktemp("gradual")
    return out, _run(mlpnet, synthetic, out, "--sparsity", "0.8", "--gradual", "--steps", "2")


def test_unstructured_one_shot(mlpnet, synthetic, tmp_path):
    """0.9 of the weight matrices exactly zero in trained.onnx from the first epoch on, biases
    untouched; slim.onnx validates and keeps the size (no channel lost all its weights)."""
    metrics = _run(mlpnet, synthetic, tmp_path, "--sparsity", "0.9")
    for name in FILES.values():
        assert (tmp_path / name).is_file(), name
    assert metrics["method"] == "woodfisher" and metrics["options"]["sparsity"] == 0.9
    assert "epsilon" not in metrics["options"]  # DHSPG's options are not this run's
    trained = _weights(tmp_path / FILES["trained"])
    matrices = [w for w in trained.values() if w.ndim >= 2]
    zeros = sum(int((w == 0).sum()) for w in matrices) / sum(w.size for w in matrices)
    assert zeros == pytest.approx(0.9, abs=1e-4)
    assert all((w != 0).all() for w in trained.values() if w.ndim == 1)
    assert [h["weight_sparsity"] for h in metrics["history"]] == [pytest.approx(0.9, abs=1e-4)] * 2
    assert [h["pruning_steps"] for h in metrics["history"]] == [1, 1]
    acc = metrics["accuracy"]
    assert acc["trained"] == acc["slim"] and acc["prediction_mismatches"] == 0
    assert metrics["validation"]["passed"]
    assert metrics["params"]["slim"] == metrics["params"]["input"]
    assert metrics["steps"] == 8


def test_magnitude_baseline_prunes_the_smallest_weights(mlpnet, synthetic, tmp_path):
    """--criterion magnitude: the zeros after fine-tuning are exactly the given model's smallest
    |w| over all weight matrices (one global threshold), and no Fisher is estimated."""
    metrics = _run(mlpnet, synthetic, tmp_path, "--sparsity", "0.7", "--criterion", "magnitude",
                   "--max-fisher-gb", "1e-9")
    given = {n: w for n, w in _weights(mlpnet).items() if w.ndim >= 2}
    trained = _weights(tmp_path / FILES["trained"])
    flat = np.concatenate([np.abs(w).ravel() for w in given.values()])
    threshold = np.sort(flat)[round(0.7 * flat.size) - 1]
    for name, w in given.items():
        np.testing.assert_array_equal(trained[name] == 0, np.abs(w) <= threshold, err_msg=name)
    assert metrics["options"]["criterion"] == "magnitude"


@pytest.mark.parametrize("extra", [[], ["--side", "producer"],
                                   ["--side", "producer", "--low-rank", "--joint",
                                    "--block-size", "100000"]],
                         ids=["consumer", "producer", "producer-low-rank-layers-joint"])
def test_structured_one_shot_shrinks_and_validates(extra, mlpnet, synthetic, tmp_path):
    """Half the ZIGs go to exact zero at step 0 and stay there; slim.onnx has fewer params and
    MACs and matches trained.onnx; the closing table says group sparsity. Scored on the
    consumers (default) the producers are zeroed with them; low-rank blocks let a block be a
    whole layer (31,360 weights: 7.3 GiB as a dense inverse)."""
    result = _cli(["woodfisher", mlpnet, "--data", synthetic, *TINY[:-1], "--sparsity", "0.5",
                   "--structured", *extra, "-o", tmp_path])
    assert result.exit_code == 0, result.output
    assert "group sparsity 50.0% (target 50.0%)" in result.output
    metrics = json.loads((tmp_path / FILES["metrics"]).read_text())
    zigs = metrics["history"][-1]["num_zigs"]
    assert [h["group_sparsity"] for h in metrics["history"]] == [round(0.5 * zigs) / zigs] * 2
    assert metrics["target_reached"] and metrics["channels"]["removed"] == round(0.5 * zigs)
    assert metrics["validation"]["passed"] and metrics["accuracy"]["prediction_mismatches"] == 0
    assert metrics["params"]["slim"] < metrics["params"]["input"]
    assert metrics["macs"]["slim"] < metrics["macs"]["input"]
    assert metrics["options"]["side"] == ("producer" if extra else "consumer")


@pytest.mark.parametrize("extra", [[], ["--gradual", "--steps", "2"]], ids=["one-shot", "gradual"])
def test_target_macs_prunes_to_the_budget(extra, mlpnet, synthetic, tmp_path):
    """--target-macs 0.5: slim.onnx at or below half the input's MACs (as metrics.json counts
    them), validated. Gradual: step 0 to 1 - 0.5 (1 - (1 - 1/2)^3) = 56.25 %, the budget only
    at the last pruning step."""
    result = _cli(["woodfisher", mlpnet, "--data", synthetic, *TINY[:-1], "--structured",
                   "--target-macs", "0.5", *extra, "-o", tmp_path])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / FILES["metrics"]).read_text())
    share = metrics["macs"]["slim_over_input"]
    assert share <= 0.5 and f"MACs {share:.1%} of the input's (target 50.0%)" in result.output
    assert metrics["validation"]["passed"] and metrics["accuracy"]["prediction_mismatches"] == 0
    assert metrics["params"]["slim"] < metrics["params"]["input"]
    assert metrics["options"]["target_macs"] == 0.5 and metrics["target_reached"]
    assert metrics["options"]["max_group_share"] == 0.75
    assert metrics["options"]["sparsity"] is None
    fractions = [h["macs_fraction"] for h in metrics["history"]]
    assert fractions[-1] == pytest.approx(share)
    if extra:
        assert 0.5 < fractions[0] <= 0.5625
    else:
        assert fractions == [fractions[-1]] * 2


def test_epoch_line_shows_the_mac_share_under_target_macs():
    """Under --target-macs the schedule runs on MACs: the epoch line shows their share, not the
    weight sparsity (which says little when whole channels go)."""
    from trainers.train.loop import _epoch_line

    record = {"epoch": 1, "loss": 0.5, "train_accuracy": 0.8, "test_accuracy": None,
              "group_sparsity": 0.2, "weight_sparsity": 0.1, "macs_fraction": 0.478}
    line = _epoch_line(record, 2)
    assert "MACs 47.8% of dense" in line and "weight sparsity" not in line
    del record["macs_fraction"]
    assert _epoch_line(record, 2).endswith("weight sparsity 10.0%")


def test_target_macs_out_of_reach_is_recorded(mlpnet, synthetic, tmp_path):
    """A cap of 20 % of each layer cannot reach 10 % of the MACs: metrics.json says so (the
    group-sparsity target, 0 under a MAC budget, would say reached)."""
    result = _cli(["woodfisher", mlpnet, "--data", synthetic, *TINY[:-1], "--structured",
                   "--target-macs", "0.1", "--max-group-share", "0.2", "-o", tmp_path])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / FILES["metrics"]).read_text())
    assert metrics["macs"]["slim_over_input"] > 0.1 and not metrics["target_reached"]
    assert "above the target 10.0%" in result.output


def test_gradual_prunes_on_the_cubic_schedule(gradual):
    """Step 0 prunes to s (1 - (1 - 1/2)^3) = 0.7, step 4 (epoch 2's first) to 0.8; the first
    step's zeros stay zero."""
    out, metrics = gradual
    history = metrics["history"]
    assert [h["pruning_steps"] for h in history] == [1, 2]
    assert [h["weight_sparsity"] for h in history] == [pytest.approx(0.7, abs=1e-4),
                                                        pytest.approx(0.8, abs=1e-4)]
    assert metrics["options"]["steps"] == 2 and metrics["options"]["gradual"]
    assert metrics["validation"]["passed"]


def test_killed_after_epoch_one_resumes_exactly(gradual, mlpnet, synthetic, tmp_path,
                                                killed_after_checkpoint):
    """The second pruning step happens after the resume: it needs the checkpoint's masks, step
    and SGD state and the same seeded Fisher batches to give the same weights bit for bit."""
    out, straight = gradual
    options = WoodFisherOptions(data=str(synthetic), epochs=2, batch_size=32, fisher_samples=16,
                                lr=0.05, sparsity=0.8, gradual=True, steps=2, quiet=True,
                                out=tmp_path)
    with killed_after_checkpoint():
        run_woodfisher(mlpnet, options)
    options.resume = True
    resumed = run_woodfisher(mlpnet, options)
    a, b = _weights(out / FILES["trained"]), _weights(tmp_path / FILES["trained"])
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert [h["loss"] for h in straight["history"]] == [h["loss"] for h in resumed["history"]]
    assert resumed["resumed_at_epoch"] == 1
    options.sparsity = 0.7
    with pytest.raises(OnnxotoError, match="different run.*sparsity"):
        run_woodfisher(mlpnet, options)


@pytest.mark.parametrize("extra, says", [
    (["--sparsity", "1.5"], "--sparsity"),
    (["--sparsity", "0"], "--sparsity"),
    (["--steps", "3"], "steps 3 without gradual"),
    (["--gradual", "--steps", "1"], "need steps >= 2 with --gradual"),
    (["--gradual", "--steps", "9"], "--steps 9 pruning steps do not fit in the run's 8"),
    (["--max-fisher-gb", "0.01"], "over --max-fisher-gb 0.01; lower --block-size"),
    (["--low-rank"], "low_rank needs structured"),
    (["--structured", "--target-macs", "0.5", "--sparsity", "0.5"], "exclude each other"),
    (["--target-macs", "0.5"], "--target-macs needs --structured"),
    (["--structured", "--target-macs", "1"], "--target-macs"),
    (["--structured", "--target-macs", "0"], "--target-macs"),
    (["--structured", "--target-macs", "nan"], "target_macs nan"),
    (["--structured", "--max-group-share", "0.5"], "add --target-macs"),
    (["--structured", "--target-macs", "0.5", "--max-group-share", "1.5"],
     "--max-group-share"),
], ids=["sparsity-high", "sparsity-zero", "steps-one-shot", "gradual-one-step",
        "steps-too-many", "fisher-too-big", "low-rank-unstructured", "macs-and-sparsity",
        "macs-unstructured", "macs-one", "macs-zero", "macs-nan", "share-without-macs",
        "share-high"])
def test_bad_input_is_one_line_exit_2(extra, says, mlpnet, synthetic, tmp_path):
    result = _cli(["woodfisher", mlpnet, "--data", synthetic, *TINY, *extra,
                   "-o", tmp_path / "out"])
    assert result.exit_code == 2
    assert says in result.output
    assert "Traceback" not in result.output
    if "Usage" not in result.output:  # click's usage errors have their own lines
        assert result.output.count("\n") == 1, result.output
    assert not (tmp_path / "out" / FILES["metrics"]).exists()


def test_onnxoto_train_woodfisher_help():
    result = _cli(["train", "woodfisher", "--help"], command=onnxoto_main)
    assert result.exit_code == 0
    for option in ("--sparsity", "--structured", "--gradual", "--steps", "--fisher-samples",
                   "--fisher-batch", "--block-size", "--damping", "--low-rank", "--joint",
                   "--max-fisher-gb", "--criterion", "--side", "--resume",
                   "--overwrite", "--json", "--momentum", "--target-macs", "--max-group-share"):
        assert option in result.output, option
    assert "one-shot" in result.output and "[default: 0.75]" in result.output
