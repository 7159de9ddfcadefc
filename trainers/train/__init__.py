"""Train an ONNX classifier with DHSPG, then write the trained, masked and slim models.

``run_dhspg(model, options)`` binds the ONNX graph to torch (``OnnxModule``), indexes the
zero-invariant groups of its partition (``build_zig_index``) and trains with ``DHSPG`` and
cross-entropy. Every epoch ends with a checkpoint (``OUT/checkpoint.pt``) that ``resume``
continues from bit for bit. At the end it writes into ``OUT``:

- ``trained.onnx``: the input graph with the trained weights (same names, zeros kept);
- ``masks.npz``: True = keep, a channel goes when its whole ZIG is exactly 0;
- ``slim.onnx``: ``onnxoto.shrink`` of the trained model, validated in onnxruntime;
- ``metrics.json``: accuracy of trained and slim in onnxruntime (same predictions, or it fails)
  with the slim model's right/wrong per test sample (``pack_correct``), params and MACs before
  and after, group sparsity, times, dataset sizes, per-epoch history.

Under ``torchrun`` (``WORLD_SIZE`` > 1) it runs DistributedDataParallel (gloo on CPU, nccl on
CUDA) with a DistributedSampler; only rank 0 logs and writes files.

Layout: ``options`` (TrainOptions, file names), ``prepare`` (world, device, data, module,
optimizer), ``checkpoint`` (output folder, per-epoch checkpoints), ``loop`` (the epochs),
``outputs`` (files and metrics at the end); ``run_training`` here ties them together for any
method's optimizer (``run_dhspg``: DHSPG; ``trainers.woodfisher.run``: WoodFisher). The module,
the groups, the optimizer and the model files come from ``trainers.api`` (``attach``,
``Job.dhspg``, ``write_models``), the same code users' own loops run.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from trainers.train.checkpoint import check_output, remove_earlier_run, resume
from trainers.train.checkpoint import save_checkpoint as _save_checkpoint  # tests patch this name
from trainers.train.loop import scheduled_lr, train
from trainers.train.options import DEFAULT_LR, DEVICES, FILES, LR_SCHEDULES, Log, TrainOptions
from trainers.train.outputs import (
    ValidationMismatch,
    finish,
    onnx_predictions,
    pack_correct,
    summary_rows,
    unpack_correct,
)
from trainers.train.prepare import (
    OptimizerFactory,
    Pruner,
    Setup,
    World,
    dhspg_optimizer,
    prepare,
    process_group,
    resolve_device,
    seed_everything,
)

__all__ = [
    "DEFAULT_LR",
    "DEVICES",
    "FILES",
    "LR_SCHEDULES",
    "Log",
    "OptimizerFactory",
    "Pruner",
    "Setup",
    "TrainOptions",
    "ValidationMismatch",
    "World",
    "onnx_predictions",
    "pack_correct",
    "resolve_device",
    "run_dhspg",
    "run_training",
    "scheduled_lr",
    "summary_rows",
    "unpack_correct",
]


def run_dhspg(model_path: str | os.PathLike, options: TrainOptions, *,
              log: Log = print) -> dict[str, Any]:
    """Train ``model_path`` with DHSPG as ``options`` say; returns metrics.json's content
    (an empty dict on ranks other than 0). Raises ``OnnxotoError`` for bad input and
    ``ValidationMismatch`` if the slim model does not match the trained one."""
    return run_training(model_path, options, dhspg_optimizer, log=log)


def run_training(model_path: str | os.PathLike, options: TrainOptions,
                 make_optimizer: OptimizerFactory, *, log: Log = print) -> dict[str, Any]:
    """One run of any method: ``make_optimizer`` builds its optimizer (see ``Pruner``); the
    output folder, data, loop, checkpoints and files are the same for every method."""
    wall_started = time.perf_counter()
    model_path = Path(model_path)
    check_output(model_path, options)
    world = World.from_env()
    device = resolve_device(options.device, world.local_rank)
    seed_everything(options.seed, device)
    with process_group(world, device):
        run = prepare(model_path, options, world, device, make_optimizer)
        if world.main and not options.quiet and run.compile_note:
            log(run.compile_note)
        if options.resume:
            resume(run)
        if world.main:
            remove_earlier_run(options)
        train(run, log, _save_checkpoint)
        if not world.main:
            return {}
        return finish(run, wall_started, log)
