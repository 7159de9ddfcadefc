"""Shared fixtures: the zoo is exported once per test session, per exporter."""

from __future__ import annotations

from pathlib import Path

import pytest

EXPORTERS = ("legacy", "dynamo")


@pytest.fixture(scope="session")
def zoo_cache(tmp_path_factory):
    """exported(name, exporter) -> path of the ONNX file, exported on first use."""
    from models.export import export_onnx
    from models.zoo import ZOO, build

    folder = tmp_path_factory.mktemp("zoo")
    done: dict[tuple[str, str], Path] = {}

    def exported(name: str, exporter: str = "legacy") -> Path:
        key = (name, exporter)
        if key not in done:
            suffix = ".dynamo.onnx" if exporter == "dynamo" else ".onnx"
            done[key] = export_onnx(build(name, seed=0), ZOO[name].input_shape,
                                    folder / f"{name}{suffix}", dynamo=exporter == "dynamo")
        return done[key]

    return exported


@pytest.fixture(scope="module")
def one_thread():
    """Tiny torch problems on one intra-op thread: extra threads only spin against other jobs
    (use with ``pytestmark = pytest.mark.usefixtures("one_thread")``). Module-scoped so that the
    module's own module-scoped runs take one thread too: a run compared bit for bit with another
    must use the same thread count (on AVX-512 CPUs torch's kernels round differently with one
    thread than with two)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Killed(Exception):
    """Stands for a process killed right after a checkpoint was written."""


@pytest.fixture
def killed_after_checkpoint(monkeypatch):
    """``with killed_after_checkpoint(epoch): run(...)``: the run dies right after writing the
    checkpoint of ``epoch`` (any epoch when None), as a kill would leave it; resume tests then
    continue from that file."""
    from contextlib import contextmanager

    import trainers.train

    save = trainers.train._save_checkpoint

    @contextmanager
    def killed(after_epoch: int | None = None):
        def save_then_die(run, epoch):
            save(run, epoch)
            if after_epoch is None or epoch == after_epoch:
                raise Killed

        monkeypatch.setattr(trainers.train, "_save_checkpoint", save_then_die)
        try:
            with pytest.raises(Killed):
                yield
        finally:
            monkeypatch.setattr(trainers.train, "_save_checkpoint", save)

    return killed
