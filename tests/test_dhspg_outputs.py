"""The trainer's test passes: test accuracy after the last epoch only (``test_each_epoch``
off), and the zeroed model's pass skipped when its weights are the trained ones."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from onnx import numpy_helper

from onnxoto.masking import masks_from_zeros
from onnxoto.partition import partition
from trainers.train import TrainOptions, onnx_predictions, run_dhspg
from trainers.train.outputs import _zeroed_predictions

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def mlpnet(zoo_cache):
    return partition(str(zoo_cache("mlpnet")))


def _synthetic(folder, train=128, test=48):
    rng = np.random.default_rng(0)
    patterns = rng.normal(size=(10, 1, 28, 28)).astype(np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", train), ("test", test)):
        y = rng.integers(0, 10, count)
        x = patterns[y] + rng.normal(size=(count, 1, 28, 28)).astype(np.float32)
        np.savez(folder / f"{split}.npz", x=x, y=y)
    return folder


def test_test_last_only_tests_after_the_last_epoch(zoo_cache, tmp_path):
    options = TrainOptions(data=str(_synthetic(tmp_path / "data")), out=tmp_path / "run",
                           epochs=3, batch_size=32, warmup_epochs=1, target=0.5, epsilon=0.9,
                           lam=1.0, quiet=True, test_each_epoch=False)
    metrics = run_dhspg(zoo_cache("mlpnet"), options)
    tested = [record["test_accuracy"] for record in metrics["history"]]
    assert tested[:2] == [None, None] and isinstance(tested[2], float)
    assert metrics["accuracy"]["zeroed"] == metrics["accuracy"]["trained"]


def _zero_first_channel(model, group):
    """A copy of ``model`` with the first channel of ``group`` zero in every producer."""
    out = type(model)()
    out.CopyFrom(model)
    tensors = {t.name: t for t in out.graph.initializer}
    for member in group.members:
        if member.role != "producer":
            continue
        array = numpy_helper.to_array(tensors[member.initializer]).copy()
        index = [slice(None)] * array.ndim
        index[member.axis] = member.index_map.indices(np.array([0]))
        array[tuple(index)] = 0
        tensors[member.initializer].CopyFrom(numpy_helper.from_array(array, member.initializer))
    return out


def test_zeroed_pass_skipped_only_when_the_zeros_are_exact(mlpnet):
    """Masks read from exact zeros: the trained predictions come back as they are (no pass).
    Masks that drop a channel that is not zero: a real pass on the zeroed weights."""
    group = mlpnet.prunable[0]
    x = np.random.default_rng(1).normal(size=(16, 1, 28, 28)).astype(np.float32)
    run = SimpleNamespace(parts=mlpnet, test=SimpleNamespace(x=x))
    zeroed = _zero_first_channel(mlpnet.model, group)
    given = onnx_predictions(zeroed, x)
    assert _zeroed_predictions(zeroed, run, masks_from_zeros(zeroed, mlpnet.groups),
                               given) is given
    live = {group.id: np.arange(group.size) != 1}  # channel 1 is not zero
    sentinel = np.full(16, -1)
    again = _zeroed_predictions(zeroed, run, live, sentinel)
    assert again is not sentinel and again.shape == (16,) and (again >= 0).all()
