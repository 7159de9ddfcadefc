"""Slim continuation (trainers.train.slim): after DHSPG's release the run trains the slim network.

A narrow DemoNet (conv, two BNs on one conv, a sum, a concat, Gemms) on 3 x 8 x 8 samples: every
kind of member (producer, consumer, attached BN statistics, a concat offset) is cut."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from onnx import numpy_helper

from onnxoto.errors import OnnxotoError
from onnxoto.groups import load_masks
from onnxoto.partition import partition
from trainers.__main__ import main
from trainers.api import attach
from trainers.binding import OnnxModule
from trainers.dhspg import DHSPGOptions
from trainers.train import FILES, TrainOptions, run_dhspg
from trainers.train.slim import cut, embed, kept_indices, slice_tensor, slim_optimizer

from .test_trainers import _synthetic

# the release comes within the first epoch (8 steps): epoch 1 trains the full net, 2 and 3 slim
RUN = dict(epochs=3, batch_size=32, warmup_epochs=0, target=0.3, epsilon=0.9, lam=1.0,
           quiet=True)


@pytest.fixture(scope="module")
def demonet(tmp_path_factory):
    from models.export import export_onnx
    from models.zoo import DemoNet

    torch.manual_seed(0)
    return export_onnx(DemoNet((8, 8, 8, 8)).eval(), (1, 3, 8, 8),
                       tmp_path_factory.mktemp("demonet") / "demonet.onnx")


@pytest.fixture(scope="module")
def mlpnet(tmp_path_factory):
    from models.export import export_onnx
    from models.zoo import ZOO, build

    return export_onnx(build("mlpnet", seed=0), ZOO["mlpnet"].input_shape,
                       tmp_path_factory.mktemp("mlpnet") / "mlpnet.onnx")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return _synthetic(tmp_path_factory.mktemp("rgb"), shape=(3, 8, 8), train=256, test=64)


def _weights(path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


def _batches(shape: tuple[int, ...], seed: int):
    generator = torch.Generator().manual_seed(seed)
    while True:
        yield (torch.randn(16, *shape, generator=generator),
               torch.randint(0, 10, (16,), generator=generator))


def _released(model, options: DHSPGOptions, shape: tuple[int, ...], steps: int = 40):
    """A full network and DHSPG trained on random batches until the release."""
    job = attach(model)
    optimizer = job.dhspg(options.lr, options.target_group_sparsity, options=options)
    for _, (x, y) in zip(range(steps), _batches(shape, 1), strict=False):
        optimizer.zero_grad()
        F.cross_entropy(job.module(x), y).backward()
        optimizer.step()
        if optimizer.released:
            return job, optimizer
    raise AssertionError(f"DHSPG not released in {steps} steps")


@pytest.mark.parametrize(("name", "shape", "variant"), [
    ("demonet", (3, 8, 8), dict(variant="sgd", lr=0.1, momentum=0.9, weight_decay=1e-3, lam=1.0)),
    ("mlpnet", (1, 28, 28), dict(variant="adam", lr=1e-2, lam=10.0))])
def test_slim_steps_equal_full_steps(request, name, shape, variant):
    """From one released state, k steps on the full network (zero ZIGs held at 0) and k steps on
    the slim one give the same kept weights, BN statistics and optimizer buffers (1e-6).

    Adam runs on the MLP: on DemoNet the biases right before a train-mode BatchNorm have a
    gradient that is rounding noise (~1e-8, exactly 0 in exact arithmetic), which Adam scales up
    to full steps, so any change in summation order (the slim convolutions, or another thread
    count) moves them by ~1e-3 while every other weight agrees to 2e-7."""
    options = DHSPGOptions(target_group_sparsity=0.3, epsilon=0.9, **variant)
    job, full = _released(request.getfixturevalue(name), options, shape)
    _, result = cut(job.module, job.parts.model, job.parts, full)
    kept = kept_indices(job.parts, result.masks)
    assert sum(int((~keep).sum()) for keep in result.masks.values()) == int(full.held_zero.sum())
    module = OnnxModule(result.model)
    slim = slim_optimizer(full, module.onnx_parameters(), kept)
    full_state = job.module.onnx_state_dict()
    for name, value in module.onnx_state_dict().items():  # the slim graph holds the cut values
        if name in full_state:
            torch.testing.assert_close(value, slice_tensor(full_state[name], kept.get(name, {})),
                                       rtol=0, atol=0)
    zero_before = full.zig.zero_zigs()
    for _, (x, y) in zip(range(5), _batches(shape, 2), strict=False):
        for net, optimizer in ((job.module, full), (module, slim)):
            optimizer.zero_grad()
            F.cross_entropy(net(x), y).backward()
            optimizer.step()
    assert torch.equal(full.zig.zero_zigs(), zero_before), "held ZIGs must stay exactly zero"
    full_state = job.module.onnx_state_dict()
    compared = 0
    for name, value in module.onnx_state_dict().items():
        if name in full_state and value.is_floating_point():
            torch.testing.assert_close(value, slice_tensor(full_state[name], kept.get(name, {})),
                                       rtol=0, atol=1e-6, msg=name)
            compared += 1
    assert compared >= len(module.onnx_parameters())
    full_buffers = {name: full.state[p] for name, p in full.named.items()}
    for name, p in slim.named.items():
        for key, value in slim.state[p].items():
            if torch.is_tensor(value) and value.dim():
                torch.testing.assert_close(
                    value, slice_tensor(full_buffers[name][key], kept.get(name, {})), rtol=0,
                    atol=1e-6, msg=f"{name} {key}")
    assert slim.diagnostics()["step"] == full.diagnostics()["step"]


def test_embed_inverts_slice_on_two_axes():
    full = torch.arange(60.0).reshape(5, 4, 3)
    axes = {0: np.array([0, 2, 3]), 2: np.array([1])}
    part = slice_tensor(full, axes)
    assert part.shape == (3, 4, 1)
    torch.testing.assert_close(embed(full, part, axes), full, rtol=0, atol=0)
    moved = embed(torch.zeros_like(full), part + 1000, axes)
    assert int((moved != 0).sum()) == part.numel() and float(moved[2, 1, 1]) == 1000 + full[2, 1, 1]


@pytest.fixture(scope="module")
def cli_runs(demonet, data, tmp_path_factory):
    """``RUN`` with momentum 0.9 through the CLI, with slim continuation (its log) and without."""
    folder = tmp_path_factory.mktemp("runs")
    common = ["dhspg", demonet, "--data", data, "--epochs", "3", "--batch-size", "32",
              "--warmup-epochs", "0", "--target", "0.3", "--epsilon", "0.9", "--lam", "1",
              "--momentum", "0.9"]
    slim = CliRunner().invoke(main, [str(a) for a in [*common, "-o", folder / "slim"]])
    full = CliRunner().invoke(main, [str(a) for a in [*common, "--no-slim-continuation",
                                                      "--quiet", "-o", folder / "full"]])
    return folder, slim, full


def test_slim_run_matches_full_run(cli_runs, demonet):
    """The CLI trainer switches after epoch 1 and writes valid outputs; the same run on the full
    network (--no-slim-continuation) ends with the same weights and the same zeros."""
    tmp_path, log, full = cli_runs
    assert log.exit_code == 0, log.output
    assert "slim from epoch 2: params " in log.output and "MACs" in log.output
    assert full.exit_code == 0, full.output
    a, b = (json.loads((tmp_path / run / FILES["metrics"]).read_text()) for run in ("slim", "full"))
    record = a["slim_continuation"]
    assert record["switch_epoch"] == 2 and b["slim_continuation"]["switch_epoch"] is None
    assert record["params"]["slim"] == a["params"]["slim"] < a["params"]["input"]
    assert record["macs"]["slim"] == a["macs"]["slim"]
    assert record["epoch_seconds"]["full"] > 0 and record["epoch_seconds"]["slim"] > 0
    assert [h["slim"] for h in a["history"]] == [False, True, True]
    assert [h["step"] for h in a["history"]] == [h["step"] for h in b["history"]] == [8, 16, 24]
    assert a["validation"]["passed"] and a["accuracy"]["prediction_mismatches"] == 0
    assert a["group_sparsity"] == b["group_sparsity"] > 0 and a["target_reached"]
    groups = partition(str(demonet)).groups
    for run in ("slim", "full"):
        for name in FILES.values():
            assert (tmp_path / run / name).is_file(), (run, name)
    masks = {run: load_masks(tmp_path / run / FILES["masks"], groups) for run in ("slim", "full")}
    assert masks["slim"].keys() == masks["full"].keys()
    for gid in masks["slim"]:
        np.testing.assert_array_equal(masks["slim"][gid], masks["full"][gid])
    slim_w, full_w = _weights(tmp_path / "slim" / FILES["slim"]), _weights(
        tmp_path / "full" / FILES["slim"])
    assert slim_w.keys() == full_w.keys()
    for name in slim_w:
        np.testing.assert_allclose(slim_w[name], full_w[name], rtol=0, atol=1e-5, err_msg=name)
    assert [h["loss"] for h in a["history"]] == pytest.approx([h["loss"] for h in b["history"]],
                                                              rel=1e-6)


@pytest.mark.parametrize("killed_after", [1, 2])
def test_resume_across_the_switch(demonet, data, cli_runs, tmp_path, killed_after_checkpoint,
                                  killed_after):
    """Killed after epoch 1 (full network, released optimizer) or 2 (slim network): the resumed
    run switches where the uninterrupted one (``cli_runs``' slim run) did and ends bit for bit
    the same."""
    options = dict(data=str(data), momentum=0.9, **RUN)
    straight_folder = cli_runs[0] / "slim"
    straight = json.loads((straight_folder / FILES["metrics"]).read_text())
    with killed_after_checkpoint(killed_after):
        run_dhspg(demonet, TrainOptions(out=tmp_path / "b", **options))
    state = torch.load(tmp_path / "b" / FILES["checkpoint"], weights_only=True)
    assert (state["slim"] is None) == (killed_after == 1)
    if state["slim"] is not None:  # a cut slim graph is refused in one line, not a traceback
        state["slim"]["onnx"] = state["slim"]["onnx"][:100]
        (tmp_path / "c").mkdir()
        torch.save(state, tmp_path / "c" / FILES["checkpoint"])
        with pytest.raises(OnnxotoError, match="damaged checkpoint \\(slim network"):
            run_dhspg(demonet, TrainOptions(out=tmp_path / "c", resume=True, **options))
    resumed = run_dhspg(demonet, TrainOptions(out=tmp_path / "b", resume=True, **options))
    for name in (FILES["trained"], FILES["slim"]):
        a, b = _weights(straight_folder / name), _weights(tmp_path / "b" / name)
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"{name} {key}")
    assert [h["loss"] for h in straight["history"]] == [h["loss"] for h in resumed["history"]]
    assert resumed["slim_continuation"]["switch_epoch"] == 2
    assert resumed["resumed_at_epoch"] == killed_after


def test_torchrun_switches_on_every_rank(demonet, data, tmp_path):
    """Under DDP every rank cuts the same channels at the same epoch (DDP refuses ranks whose
    parameter shapes differ) and trains the slim network to valid outputs."""
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", "2", "-m", "trainers", "dhspg", str(demonet),
               "--data", str(data), "--epochs", "2", "--batch-size", "16",
               "--warmup-epochs", "0", "--target", "0.3", "--epsilon", "0.9", "--lam", "1",
               "--device", "cpu", "-o", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=180, env=env)
    assert done.returncode == 0, done.stderr[:1500] + "\n...\n" + done.stderr[-1500:]
    assert done.stdout.count("slim from epoch 2") == 1  # logged by rank 0 only
    metrics = json.loads((out / FILES["metrics"]).read_text())
    assert metrics["world_size"] == 2 and metrics["slim_continuation"]["switch_epoch"] == 2
    assert metrics["accuracy"]["prediction_mismatches"] == 0 and metrics["validation"]["passed"]
