"""Files onnxoto writes: resolved-path protection, output checks, atomic writes, the atomic
external-data pair, staging cleanup after a kill."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxoto.errors import OnnxotoError
from onnxoto.files import (
    STAGING_PREFIX,
    check_output_path,
    clean_staging,
    external_locations,
    file_mode,
    model_files,
    refuse_clobber,
    resolved,
    save_model,
    write_bytes_atomic,
)
from onnxoto.graph import load_model


def tiny_model(channels: int = 16, seed: int = 0) -> onnx.ModelProto:
    """x -> Conv(3 -> channels) -> Relu; the weight is over 1 KiB so it goes to external data."""
    rng = np.random.default_rng(seed)
    weight = numpy_helper.from_array(rng.standard_normal((channels, 3, 3, 3)).astype(np.float32),
                                     "w")
    bias = numpy_helper.from_array(rng.standard_normal(channels).astype(np.float32), "b")
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["h"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["h"], ["y"])]
    graph = helper.make_graph(nodes, "tiny",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT,
                                                             [1, channels, 8, 8])],
                              [weight, bias])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def weights(path) -> np.ndarray:
    model = load_model(path)
    return numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "w"))


def staging_left(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(STAGING_PREFIX))


# --- which paths are the same file -------------------------------------------------------------

def test_missing_folder_then_dotdot_is_the_input(tmp_path):
    model = tmp_path / "model.onnx"
    model.write_bytes(b"x")
    with pytest.raises(OnnxotoError, match="model.onnx"):
        refuse_clobber([model], [tmp_path / "nope" / ".." / "model.onnx"])
    assert not (tmp_path / "nope").exists()
    assert resolved(tmp_path / "nope" / ".." / "model.onnx") == resolved(model)


def test_symlinked_folder_and_hard_link_are_the_input(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    model = real / "model.onnx"
    model.write_bytes(b"x")
    (tmp_path / "link").symlink_to(real)
    os.link(model, tmp_path / "hard.onnx")
    for alias in (tmp_path / "link" / "model.onnx", tmp_path / "hard.onnx",
                  tmp_path / "link" / "sub" / ".." / "model.onnx"):
        with pytest.raises(OnnxotoError, match="refusing to overwrite an input"):
            refuse_clobber([model], [alias])
    refuse_clobber([model], [tmp_path / "link" / "other.onnx"])


def test_model_files_lists_external_data(tmp_path):
    path = tmp_path / "m.onnx"
    written = save_model(tiny_model(), path, external=True)
    files = model_files(path)
    assert files[0] == path and len(files) == 2 and files[1] == written.files[1]
    with pytest.raises(OnnxotoError, match="same file as the input"):
        refuse_clobber(model_files(path), [files[1]])
    assert model_files(tmp_path / "missing.onnx") == [tmp_path / "missing.onnx"]


def test_external_locations_parses_only_files_that_can_have_any(tmp_path, monkeypatch):
    """No parse for a file whose bytes never spell "location"; one parse per file version (a
    rewrite is seen), and the answer is right across a chunk boundary."""
    import onnxoto.files as files

    parsed: list[str] = []
    load = onnx.load

    def counting(path, *args, **kwargs):
        parsed.append(str(path))
        return load(path, *args, **kwargs)

    monkeypatch.setattr(onnx, "load", counting)
    inline, paired = tmp_path / "inline.onnx", tmp_path / "paired.onnx"
    save_model(tiny_model(), inline)
    written = save_model(tiny_model(), paired, external=True)
    parsed.clear()  # the write itself asked about the pair it replaced
    assert external_locations(inline) == [] and parsed == []
    first = external_locations(paired)
    assert first == [written.files[1].name] == external_locations(paired)
    assert len(parsed) <= 1  # parsed once at most (the write's own question may be cached)
    rewritten = save_model(tiny_model(32), paired, external=True)
    assert external_locations(paired) == [rewritten.files[1].name] != first
    assert files._mentions_location(paired, chunk=3)  # the word split over chunks
    assert not files._mentions_location(inline, chunk=3)


# --- can the output be written -----------------------------------------------------------------

def test_output_that_is_a_folder(tmp_path):
    with pytest.raises(OnnxotoError, match="is a folder"):
        check_output_path(tmp_path)
    check_output_path(tmp_path, kind="folder")


def test_output_under_a_file(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(OnnxotoError, match="is a file, not a folder"):
        check_output_path(blocker / "deeper" / "slim.onnx")
    with pytest.raises(OnnxotoError, match="is a file; give a folder"):
        check_output_path(blocker, kind="folder")


def read_only_folder(tmp_path):
    """A folder where no file can be created: chmod works for users, not for root (then a
    kernel file system that refuses new files even to root)."""
    if os.geteuid() != 0:
        folder = tmp_path / "ro"
        folder.mkdir()
        folder.chmod(0o555)
        return folder
    return resolved("/sys")


def test_output_in_read_only_folder(tmp_path):
    folder = read_only_folder(tmp_path)
    with pytest.raises(OnnxotoError, match="cannot write in"):
        check_output_path(folder / "slim.onnx")
    with pytest.raises(OnnxotoError, match="cannot write in"):
        check_output_path(folder / "not" / "yet" / "slim.onnx")
    check_output_path(tmp_path / "not" / "yet" / "slim.onnx")
    assert not (tmp_path / "not").exists()
    assert staging_left(tmp_path) == []


# --- atomic writes -----------------------------------------------------------------------------

def test_write_bytes_atomic_mode_respects_umask(tmp_path):
    old = os.umask(0o027)
    try:
        written = write_bytes_atomic(tmp_path / "a.bin", b"hello")
        assert stat.S_IMODE((tmp_path / "a.bin").stat().st_mode) == 0o640 == file_mode()
    finally:
        os.umask(old)
    assert (tmp_path / "a.bin").read_bytes() == b"hello" and written.bytes == 5
    assert staging_left(tmp_path) == []


def test_external_pair_data_file_is_new_and_same_mode(tmp_path):
    path = tmp_path / "slim.onnx"
    first = save_model(tiny_model(seed=0), path, external=True)
    data_one = first.files[1]
    assert data_one.name.startswith("slim.onnx.") and data_one.name.endswith(".data")
    assert stat.S_IMODE(data_one.stat().st_mode) == stat.S_IMODE(path.stat().st_mode) == \
        file_mode()
    second = save_model(tiny_model(seed=1), path, external=True)
    data_two = second.files[1]
    assert data_two != data_one and not data_one.exists()
    np.testing.assert_array_equal(weights(path), numpy_helper.to_array(
        tiny_model(seed=1).graph.initializer[0]))
    assert external_locations(path) == [data_two.name]
    assert second.bytes == path.stat().st_size
    save_model(tiny_model(seed=2), path, external=False)
    assert not data_two.exists() and external_locations(path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["slim.onnx"]


def test_foreign_data_file_of_old_output_is_kept(tmp_path):
    """An old output whose data file has another name may share it with another model."""
    path = tmp_path / "slim.onnx"
    onnx.save_model(tiny_model(), path, save_as_external_data=True, location="shared.bin",
                    size_threshold=0)
    save_model(tiny_model(seed=3), path, external=False)
    assert (tmp_path / "shared.bin").exists()


def test_killed_write_is_cleaned_by_the_next(tmp_path):
    """A writer killed between its data rename and its commit leaves a fresh data file and its
    journal; the next save into the folder removes both and keeps the good pair."""
    path = tmp_path / "slim.onnx"
    good = save_model(tiny_model(seed=0), path, external=True)
    pid = os.fork()
    if pid == 0:  # the child dies right after renaming its data file, before its commit
        real = os.replace

        def replace(source, target):
            real(source, target)
            if str(target).endswith(".data"):
                os._exit(9)

        os.replace = replace
        try:
            save_model(tiny_model(seed=5), path, external=True)
        finally:
            os._exit(0)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 9
    assert len(staging_left(tmp_path)) >= 1
    assert len(list(tmp_path.glob("slim.onnx.*.data"))) == 2
    np.testing.assert_array_equal(weights(path), numpy_helper.to_array(
        tiny_model(seed=0).graph.initializer[0]))
    clean_staging(tmp_path)
    assert staging_left(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["slim.onnx", good.files[1].name]


def test_next_save_cleans_what_a_killed_one_left(tmp_path):
    """Killed after its commit, before removing the old data file: the next save removes it."""
    path = tmp_path / "slim.onnx"
    save_model(tiny_model(seed=0), path, external=True)
    pid = os.fork()
    if pid == 0:
        os.unlink = lambda *args, **kwargs: os._exit(9)  # dies at its first removal
        try:
            save_model(tiny_model(seed=1), path, external=True)
        finally:
            os._exit(0)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 9
    assert len(list(tmp_path.glob("slim.onnx.*.data"))) == 2 and staging_left(tmp_path)
    np.testing.assert_array_equal(weights(path), numpy_helper.to_array(
        tiny_model(seed=1).graph.initializer[0]))
    third = save_model(tiny_model(seed=2), tmp_path / "other.onnx", external=True)
    assert staging_left(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["slim.onnx", *external_locations(path), "other.onnx", third.files[1].name])


# --- kills and concurrent writers --------------------------------------------------------------

def _saving_forever(path, models, ready) -> None:
    """Child process: save the models in turn forever, telling the parent once it is going."""
    try:
        os.write(ready, b"x")
        for i in range(10**9):
            save_model(models[i % 2], path, external=True)
    finally:
        os._exit(0)


def test_sigkill_during_saves_never_breaks_the_pair(tmp_path):
    """25 SIGKILLs at seeded random moments of back-to-back external-data saves: the output
    is always one complete pair (old or new), the input is intact, and the next write cleans
    what the killed one left."""
    import random
    import signal
    import time

    rng = random.Random(22)
    models = [tiny_model(channels=512, seed=s) for s in (1, 2)]  # 27,648 weights: ~110 KB
    expected = [weights_of(m) for m in models]
    source = tmp_path / "input.onnx"
    save_model(tiny_model(seed=9), source, external=True)
    source_hashes = {p.name: p.read_bytes() for p in model_files(source)}
    path = tmp_path / "slim.onnx"
    save_model(models[1], path, external=True)
    start = time.perf_counter()
    save_model(models[0], path, external=True)
    one_save = time.perf_counter() - start  # warm, as in the loop
    left_behind = 0
    for run in range(25):
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read)
            _saving_forever(path, models, write)
        os.close(write)
        os.read(read, 1)
        os.close(read)
        time.sleep(rng.uniform(0, 4 * one_save))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        got = weights(path)
        assert any(np.array_equal(got, w) for w in expected), f"run {run}: a broken pair"
        left_behind += bool(staging_left(tmp_path))
        clean_staging(tmp_path)
        assert staging_left(tmp_path) == []
        data = sorted(p.name for p in tmp_path.glob("slim.onnx.*.data"))
        assert data == external_locations(path), f"run {run}: stray data files {data}"
    assert left_behind >= 5, "the kills must land inside saves, not only between them"
    assert {p.name: p.read_bytes() for p in model_files(source)} == source_hashes


def weights_of(model: onnx.ModelProto) -> np.ndarray:
    return numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "w"))


def test_racing_writers_leave_one_pair(tmp_path):
    """Rounds of four processes released at once, each saving one external-data model to the
    same path: after every round one .onnx and the one data file it references are left."""
    path = tmp_path / "slim.onnx"
    models = [tiny_model(channels=64, seed=s) for s in range(4)]
    for round_ in range(10):
        gate, release = os.pipe()
        children = []
        for model in models:
            pid = os.fork()
            if pid == 0:
                try:
                    os.close(release)
                    os.read(gate, 1)  # returns when the parent closes its end: all start at once
                    save_model(model, path, external=True)
                finally:
                    os._exit(0)
            children.append(pid)
        os.close(gate)
        os.close(release)
        for pid in children:
            assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
        assert any(np.array_equal(weights(path), weights_of(m)) for m in models)
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
            ["slim.onnx", *external_locations(path)]), f"round {round_}"


def test_sweep_keeps_data_of_writers_still_in_flight(tmp_path):
    """A live writer's data file is kept until its journal says it committed; after that,
    unreferenced, it is garbage (the writer that raced it has replaced its .onnx)."""
    import json

    path = tmp_path / "slim.onnx"
    save_model(tiny_model(seed=0), path, external=True)
    other = tmp_path / "slim.onnx.0123456789ab.data"
    other.write_bytes(b"weights of a writer still running")
    journal = tmp_path / f"{STAGING_PREFIX}{os.getpid()}-feed.journal"
    record = {"target": "slim.onnx", "new": other.name, "old": [], "committed": False}
    journal.write_text(json.dumps(record))
    save_model(tiny_model(seed=1), path, external=True)
    assert other.exists()
    journal.write_text(json.dumps({**record, "committed": True}))
    save_model(tiny_model(seed=2), path, external=True)
    assert not other.exists()
    journal.unlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["slim.onnx", *external_locations(path)])


def test_concurrent_shrinks_to_one_path(zoo_cache, tmp_path):
    """Four `onnxoto shrink` of ResNet-50 to one path at once: one valid model is left, with
    one data file, and each run's report describes the file that run wrote."""
    import json

    from onnxoto.groups import save_masks
    from onnxoto.partition import partition

    model = zoo_cache("resnet50")
    masks = tmp_path / "m.npz"
    save_masks(masks, {g.id: np.arange(g.size) % 2 == 0 for g in partition(model).prunable})
    slim = tmp_path / "out" / "slim.onnx"
    runs = [subprocess.Popen([sys.executable, "-m", "onnxoto.cli", "shrink", str(model), "--mask",
                              str(masks), "-o", str(slim), "--external-data", "--no-validate",
                              "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True) for _ in range(4)]
    reports = []
    for proc in runs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        reports.append(json.loads(out)["output"])
    shas = [r["sha256"] for r in reports]
    assert len(set(shas)) == 4, "each run wrote its own pair (a fresh data file name each)"
    final = hashlib.sha256(slim.read_bytes()).hexdigest()
    winner = reports[shas.index(final)]
    assert winner["bytes"] == slim.stat().st_size
    left = sorted(p.name for p in slim.parent.iterdir())
    assert left == sorted([slim.name, Path(winner["files"][1]).name]), (left, reports)
    assert Path(winner["files"][1]).stat().st_size == winner["data_bytes"]
    load_model(slim)


def test_api_writes_refuse_bad_paths_in_one_line(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    for target in (tmp_path, blocker / "slim.onnx", resolved("/sys") / "slim.onnx"):
        with pytest.raises(OnnxotoError, match="slim.onnx|is a folder") as info:
            save_model(tiny_model(), target)
        assert "\n" not in str(info.value)
        with pytest.raises(OnnxotoError):
            write_bytes_atomic(target, b"x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]
