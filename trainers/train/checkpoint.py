"""The output folder before and during a run: checked writable and clobber-free up front, an
earlier run kept unless ``resume``/``overwrite`` says otherwise, and a checkpoint per epoch that
``resume`` continues from bit for bit (refusing one written by a different run). After the
switch to the slim network a checkpoint also holds the slim graph (bytes) and the full network as
of the switch, so a resume continues on the slim network."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from onnxoto.errors import OnnxotoError, one_line
from onnxoto.files import (
    check_output_path,
    model_files,
    refuse_clobber,
    save_targets,
    write_bytes_atomic,
)
from trainers.binding import OnnxModule
from trainers.train.options import FILES, FORMAT, TrainOptions
from trainers.train.prepare import Run
from trainers.train.slim import restore


def _output_files(out: Path) -> list[Path]:
    """Every file a run may write or replace in ``out``: ``FILES`` and the external-data files
    of models already there that a save replaces."""
    paths = [out / name for name in FILES.values()]
    return paths + [extra for name in ("trained", "slim")
                    for extra in save_targets(out / FILES[name])[1:]]


def check_output(model_path: Path, options: TrainOptions) -> None:
    """Before anything is loaded or created: the output folder can be written (a real file is
    created and removed in it or its nearest existing parent; the folder itself is made by the
    first write), it holds no earlier run unless ``resume`` or ``overwrite`` says what to do
    with it, and nothing the run writes is a file it reads (the model, its external data, the
    data folder's npz files).

    Why up front: a bad folder found after the last epoch loses the whole run's time, and a
    folder of finished results replaced without asking loses the results."""
    out = options.out
    check_output_path(out, kind="folder")
    existing = [name for name in FILES.values() if (out / name).exists()]
    if existing and not (options.resume or options.overwrite):
        raise OnnxotoError(f"'{out}': holds an earlier run ({', '.join(existing)}); pass "
                           f"--resume to continue it or --overwrite to replace it")
    reads = model_files(model_path)
    if Path(options.data).is_dir():
        reads += [Path(options.data) / f"{split}.npz" for split in ("train", "test")]
    refuse_clobber(reads, _output_files(out))


def remove_earlier_run(options: TrainOptions) -> None:
    """With ``overwrite``, delete the earlier run's files once the model, data and options are
    known good, so the folder never mixes two runs' files."""
    if options.overwrite:
        for path in _output_files(options.out):
            path.unlink(missing_ok=True)


# --------------------------------------------------------------------------- checkpoints


def _checkpoint_path(options: TrainOptions) -> Path:
    return options.out / FILES["checkpoint"]


def _fingerprint(run: Run) -> dict[str, Any]:
    return {**run.options.fingerprint(), "world_size": run.world.size,
            "model_sha256": run.model_sha256}


def save_checkpoint(run: Run, epoch: int) -> None:
    """Atomic torch.save of everything the next epoch depends on (staging file + rename)."""
    state = {
        "format": FORMAT,
        "epoch": epoch,
        "run": _fingerprint(run),
        "module": run.module.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "rng": {"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
        "history": run.history,
        "train_seconds": run.train_seconds,
        "slim": None if run.slim is None else run.slim.to_checkpoint(),
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_bytes_atomic(_checkpoint_path(run.options), buffer.getvalue())


def resume(run: Run) -> None:
    """Load OUT/checkpoint.pt into ``run``, refusing one written by a different run."""
    path = _checkpoint_path(run.options)
    if not path.is_file():
        raise OnnxotoError(f"'{path}': no checkpoint to resume from; run without --resume")
    try:
        state = torch.load(path, map_location=run.device, weights_only=True)
    except Exception as exc:
        raise OnnxotoError(f"'{path}': not a readable checkpoint ({exc})") from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise OnnxotoError(f"'{path}': not an onnxoto training checkpoint")
    saved_run = state.get("run")
    if isinstance(saved_run, dict):
        differ = [f"{k} {saved_run.get(k)!r} -> {v!r}" for k, v in _fingerprint(run).items()
                  if saved_run.get(k) != v]
        if differ:
            raise OnnxotoError(f"'{path}' was written by a different run ({'; '.join(differ)}); "
                               f"use another output folder or the same options")
    if isinstance(state.get("slim"), dict):
        restore(run, state["slim"])
    damaged = _checkpoint_damage(state, run.module)
    if damaged:
        raise OnnxotoError(f"'{path}': damaged checkpoint ({damaged}); run with --overwrite to "
                           f"start again")
    if state["epoch"] > run.options.epochs:
        raise OnnxotoError(f"'{path}' is at epoch {state['epoch']}, past --epochs "
                           f"{run.options.epochs}")
    run.module.load_state_dict(state["module"])
    try:
        run.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"]["torch"].cpu())
        if state["rng"]["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in state["rng"]["cuda"]])
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
        raise OnnxotoError(f"'{path}': damaged checkpoint (optimizer or RNG state: "
                           f"{one_line(exc)}); run with --overwrite to start again") from exc
    run.start_epoch = state["epoch"]
    run.history = list(state["history"])
    run.train_seconds = float(state["train_seconds"])


_CHECKPOINT_KEYS = {"epoch": int, "run": dict, "module": dict, "optimizer": dict, "rng": dict,
                    "history": list, "train_seconds": (int, float)}


def _checkpoint_damage(state: dict[str, Any], module: OnnxModule) -> str:
    """What is wrong with a checkpoint's layout, or "" when its keys, types and the module's
    tensor names and shapes are as ``save_checkpoint`` writes them (the header alone says
    nothing about a file cut or edited after it)."""
    for key, kind in _CHECKPOINT_KEYS.items():
        if key not in state:
            return f"no '{key}'"
        if not isinstance(state[key], kind) or isinstance(state[key], bool):
            return f"'{key}' is a {type(state[key]).__name__}"
    if state["epoch"] < 0:
        return f"epoch {state['epoch']}"
    expected = module.state_dict()
    saved = state["module"]
    missing = sorted(set(expected) - set(saved))
    if missing:
        return f"module tensor '{missing[0]}' missing ({len(missing)} in all)"
    extra = sorted(set(saved) - set(expected))
    if extra:
        return f"module tensor '{extra[0]}' is not in the model"
    for name, tensor in expected.items():
        value = saved[name]
        if not torch.is_tensor(value) or value.shape != tensor.shape:
            shape = tuple(value.shape) if torch.is_tensor(value) else type(value).__name__
            return f"module tensor '{name}' is {shape}, the model's is {tuple(tensor.shape)}"
    return ""
