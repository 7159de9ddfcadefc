"""The training loop: cross-entropy steps with DHSPG at a learning rate that is a pure function of
the step, losses summed over every rank, test accuracy and DHSPG's diagnostics per epoch, and the
switch to the slim network (``trainers.train.slim``) at the first epoch boundary after DHSPG's
release."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from onnxoto.errors import OnnxotoError
from trainers.train.options import Log
from trainers.train.prepare import Run
from trainers.train.slim import ready, switch


def scheduled_lr(base: float, schedule: str, step: int, total_steps: int) -> float:
    """The learning rate of global ``step`` (0-based) out of ``total_steps``.

    A pure function of the step, not a scheduler object with state: a resumed run recomputes
    the same rate, and DHSPG reads it from the param group each step (its push scales with it).
    """
    if schedule == "constant":
        return base
    return base * 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))


def _train_epoch(run: Run, epoch: int, show_bar: bool) -> dict[str, float]:
    """One pass over this rank's shard; loss and accuracy summed over every rank."""
    run.train_loader.sampler.set_epoch(epoch)
    run.net.train()
    totals = torch.zeros(3, dtype=torch.float64, device=run.device)
    bar = tqdm(run.train_loader, desc=f"epoch {epoch + 1}/{run.options.epochs}", leave=False,
               disable=not show_bar, file=sys.stderr)
    options, per_epoch = run.options, len(run.train_loader)
    for step, (x, y) in enumerate(bar):
        x, y = x.to(run.device, non_blocking=True), y.to(run.device, non_blocking=True)
        run.optimizer.param_groups[0]["lr"] = scheduled_lr(
            options.lr, options.lr_schedule, epoch * per_epoch + step, options.epochs * per_epoch)
        run.optimizer.zero_grad(set_to_none=True)
        logits = run.net(x)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        run.optimizer.step()
        with torch.no_grad():
            totals += torch.stack([loss.detach().double() * len(y),
                                   (logits.argmax(1) == y).sum().double(),
                                   torch.tensor(float(len(y)), device=run.device)])
        if show_bar and step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
    if run.world.distributed:
        dist.all_reduce(totals)
    loss_sum, correct, count = totals.tolist()
    if not math.isfinite(loss_sum):
        raise OnnxotoError(f"training diverged: the loss is {loss_sum} in epoch {epoch + 1} "
                           f"(lr {options.lr:g}); lower --lr or check the data's scale (no "
                           f"file written for this epoch)")
    return {"loss": loss_sum / count, "train_accuracy": correct / count}


@torch.no_grad()
def _torch_accuracy(run: Run) -> float:
    """Test accuracy of the torch module (eval mode), on this process alone."""
    run.module.eval()
    correct = 0
    for x, y in run.test_loader:
        logits = run.module(x.to(run.device))
        correct += int((logits.argmax(1).cpu() == y).sum())
    return correct / len(run.test.y)


def _epoch_line(record: dict[str, Any], epochs: int) -> str:
    test = record["test_accuracy"]
    line = (f"epoch {record['epoch']}/{epochs}  loss {record['loss']:.4f}  "
            f"train acc {record['train_accuracy']:.2%}  "
            f"test acc {'-' if test is None else f'{test:.2%}'}  "
            f"group sparsity {record['group_sparsity']:.1%}  ")
    if "macs_fraction" in record:  # WoodFisher --target-macs: its schedule runs on MACs
        return line + f"MACs {record['macs_fraction']:.1%} of dense"
    if "weight_sparsity" in record:  # WoodFisher: its schedule, not a push, sets the sparsity
        return line + f"weight sparsity {record['weight_sparsity']:.1%}"
    return (line
            + f"redundant {record['redundant_count']}/{record['num_zigs']}  "
            f"redundant norm {record['redundant_mean_norm']:.4g}"
            + ("  (warm-up)" if record["in_warmup"] else ""))


def _diagnostics(run: Run) -> dict[str, Any]:
    """The optimizer's diagnostics; on the slim network the full one's at the switch (its
    groups no longer change) with the step count going on."""
    now = run.optimizer.diagnostics()
    return now if run.slim is None else {**run.slim.diagnostics, "step": now["step"]}


def train(run: Run, log: Log, checkpoint: Callable[[Run, int], None]) -> None:
    """Epochs from ``run.start_epoch``; rank 0 records each, logs it and calls ``checkpoint(run,
    epochs done)``. With ``slim_continuation``, an epoch that starts after DHSPG's release
    first switches to the slim network (every rank; a resumed run switches where the
    uninterrupted one did, since the checkpoint before holds the released optimizer)."""
    options, main = run.options, run.world.main
    show_bar = main and not options.quiet and sys.stderr.isatty()
    for epoch in range(run.start_epoch, options.epochs):
        if options.slim_continuation and run.slim is None and ready(run.optimizer):
            switch(run, epoch, log if main and not options.quiet else None)
        started = time.perf_counter()
        stats = _train_epoch(run, epoch, show_bar)
        seconds = time.perf_counter() - started
        run.train_seconds += seconds
        if not main:
            continue
        tested = options.test_each_epoch or epoch + 1 == options.epochs
        record = {"epoch": epoch + 1, **stats,
                  "test_accuracy": _torch_accuracy(run) if tested else None,
                  **_diagnostics(run), "slim": run.slim is not None, "epoch_seconds": seconds,
                  "train_seconds": run.train_seconds}
        run.history.append(record)
        if not options.quiet:
            log(_epoch_line(record, options.epochs))
        checkpoint(run, epoch + 1)
