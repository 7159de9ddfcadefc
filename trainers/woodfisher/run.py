"""``onnxoto train woodfisher``: prune an ONNX classifier with WoodFisher (OBS with a blockwise
inverse empirical Fisher) and fine-tune it, with the DHSPG command's loop, checkpoints and files.

Why an optimizer-like object rather than a loop of its own: the shared loop (``trainers.train``)
steps ``run.optimizer`` once per batch and checkpoints its ``state_dict`` per epoch. ``WoodFisher``
wraps SGD and, on the schedule's pruning steps, estimates the Fisher and prunes (OBS update)
instead of stepping; after every step it holds the masks. Its state (SGD's, the masks, the step)
is all a resumed run needs, and the Fisher's batches come from a generator seeded by (seed,
step), so a resumed run draws the same ones.

Schedule (``steps`` pruning steps over the run's T training steps, every = T // steps): pruning
at steps 0, every, ..., (steps - 1) * every to the cubic sparsity s_f - s_f (1 - (k + 1) /
steps)^3 of pruning step k, then fine-tuning with the masks held. One-shot is steps = 1: the
given model is pruned to the sparsity at step 0 and fine-tuned for every epoch. The batch whose
gradient the loop took just before a pruning step is not applied: it is the gradient of the
weights before pruning.

Unstructured pruning covers the weight matrices and kernels (parameters of rank >= 2: biases and
norm scales stay), one global threshold over all of them. ``structured`` prunes whole ZIGs of the
partition by group OBS, the sparsity read as group sparsity; their exact zeros are what
``shrink --zeros`` removes, whereas unstructured zeros leave every channel that keeps a weight.
``target_macs`` replaces the group sparsity by a budget on slim.onnx's MACs
(``trainers.woodfisher.macs``): the schedule runs over the share of MACs removed, so a gradual run
meets the budget at its last pruning step.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from tqdm import tqdm

from onnxoto.errors import OnnxotoError
from trainers.api import Job
from trainers.train import Log, Setup, TrainOptions, run_training
from trainers.woodfisher.fisher import Batch, FisherOptions, fisher_memory
from trainers.woodfisher.macs import DEFAULT_GROUP_SHARE, MacCounter
from trainers.woodfisher.schedule import CubicSchedule, GradualPruner
from trainers.zig import ZigIndex, build_zig_index

__all__ = ["WoodFisher", "WoodFisherOptions", "run_woodfisher", "woodfisher_optimizer"]

GIB = 2 ** 30
# --criterion -> (unstructured, structured) criterion of trainers.woodfisher
CRITERIA = {"woodfisher": ("woodfisher", "woodfisher"), "magnitude": ("global_magnitude",
                                                                      "magnitude")}
GRADUAL_STEPS = 4
SIDES = ("consumer", "producer")
# TrainOptions fields that only DHSPG reads: left out of metrics.json's options.
_DHSPG_ONLY = ("target", "variant", "warmup_epochs", "period_steps", "reselect", "epsilon", "lam",
               "lam_amplify", "lam_hat", "compile_stats", "slim_continuation")
# Options that change the trajectory (with TrainOptions' shared ones): a checkpoint only resumes
# a run that agrees on all of them. Epochs always: the schedule spans every epoch's steps.
_RUN_KEYS = ("data", "batch_size", "lr", "lr_schedule", "momentum", "weight_decay", "limit_train",
             "seed", "epochs", "sparsity", "structured", "gradual", "steps", "fisher_samples",
             "fisher_batch", "block_size", "damping", "low_rank", "joint", "criterion", "side",
             "target_macs", "max_group_share")


@dataclass
class WoodFisherOptions(TrainOptions):
    """One WoodFisher run: the shared options of ``TrainOptions`` (data, epochs, lr, momentum,
    output folder, resume...) plus the pruning: ``sparsity`` (share of weights, or with
    ``structured`` of ZIGs), ``gradual`` over ``steps`` pruning steps (default 4; one-shot is 1),
    and the Fisher: ``fisher_samples`` gradients of ``fisher_batch`` samples each, blocks of
    ``block_size`` weights, ``damping``, ``low_rank`` blocks (structured only: each block kept
    as its gradients, O(N d) instead of d^2, so a block can be a whole layer); ``joint`` solves
    the OBS update for each block's pruned set at once instead of summing single updates;
    ``criterion`` magnitude is the baseline on the same path (global |w|, or ||w_Q|| of a ZIG;
    no Fisher). ``side`` is what structured pruning scores and updates (default: consumer for
    woodfisher, producer for magnitude): a channel's consumer slices (the next layers' input
    columns, whose update lets the other channels stand in for it; its producers are zeroed
    with it) or its producers (its own rows: their update cannot compensate the lost output,
    and small layers' channels score lowest; on the mnist MLP at 0.5 it kept 1 of 20 units of
    the second layer, 19.7 % one-shot vs 76.4 % consumer side). A Fisher needing more than
    ``max_fisher_gb`` GiB is refused before any work. ``target_macs`` (structured, instead of
    ``sparsity``) prunes until slim.onnx has at most that share of the dense MACs, channels
    ranked by score per MAC saved and at most ``max_group_share`` (default 0.75) of any group's
    channels removed; ``sparsity`` defaults to 0.5 without it."""

    method: ClassVar[str] = "woodfisher"
    sparsity: float | None = None
    target_macs: float | None = None
    max_group_share: float | None = None
    structured: bool = False
    gradual: bool = False
    steps: int | None = None
    fisher_samples: int = 1000
    fisher_batch: int = 1
    block_size: int = 1000
    damping: float = 1e-5
    low_rank: bool = False
    joint: bool = False
    criterion: str = "woodfisher"
    side: str | None = None
    max_fisher_gb: float = 4.0
    warmup_epochs: int = 0  # DHSPG's; no warm-up here
    out: Path = Path("out/woodfisher")

    def __post_init__(self) -> None:
        if self.steps is None:
            self.steps = GRADUAL_STEPS if self.gradual else 1
        self._check_mac_target()
        numbers = {"sparsity": self.sparsity, "damping": self.damping,
                   "max_fisher_gb": self.max_fisher_gb}
        infinite = [f"{name} {value}" for name, value in numbers.items()
                    if value is not None and not math.isfinite(value)]
        if infinite:
            raise OnnxotoError(f"options must be finite numbers: {', '.join(infinite)}")
        checks = {
            "0 < sparsity < 1": self.sparsity is None or 0 < self.sparsity < 1,
            "steps >= 2 with --gradual": not self.gradual or self.steps >= 2,
            "fisher_samples >= 1": self.fisher_samples >= 1,
            "fisher_batch >= 1": self.fisher_batch >= 1,
            "block_size >= 1": self.block_size >= 1,
            "damping > 0": self.damping > 0,
            "max_fisher_gb > 0": self.max_fisher_gb > 0,
        }
        broken = [rule for rule, ok in checks.items() if not ok]
        if broken:
            raise OnnxotoError(f"options out of range: need {', '.join(broken)}")
        if self.criterion not in CRITERIA:
            raise OnnxotoError(f"criterion {self.criterion!r}: choose from {', '.join(CRITERIA)}")
        if self.side is None:
            self.side = "consumer" if self.criterion == "woodfisher" else "producer"
        if self.side not in SIDES:
            raise OnnxotoError(f"side {self.side!r}: choose from {', '.join(SIDES)}")
        if self.low_rank and not self.structured:
            raise OnnxotoError("low_rank needs structured: the unstructured OBS update reads "
                               "dense block inverses; drop --low-rank or add --structured")
        if not self.gradual and self.steps != 1:
            raise OnnxotoError(f"steps {self.steps} without gradual: one-shot prunes once; pass "
                               f"--gradual to prune over several steps")
        self.target = self.sparsity if self.structured and self.sparsity is not None else 0.0
        super().__post_init__()

    def _check_mac_target(self) -> None:
        """--target-macs: structured only, instead of --sparsity, a share in (0, 1); its cap
        only with it. Fills the defaults of sparsity and the cap."""
        if self.target_macs is None:
            if self.max_group_share is not None:
                raise OnnxotoError("max_group_share caps --target-macs' choice; add "
                                   "--target-macs or drop --max-group-share")
            self.sparsity = 0.5 if self.sparsity is None else self.sparsity
            return
        if self.sparsity is not None:
            raise OnnxotoError("--sparsity and --target-macs exclude each other: give a share "
                               "of the channels or a share of the dense MACs, not both")
        if not self.structured:
            raise OnnxotoError("--target-macs needs --structured: unstructured zeros leave the "
                               "channels, so the MACs do not fall")
        self.max_group_share = (DEFAULT_GROUP_SHARE if self.max_group_share is None
                                else self.max_group_share)
        shares = {"target_macs": self.target_macs, "max_group_share": self.max_group_share}
        for name, value in shares.items():
            if not math.isfinite(value):
                raise OnnxotoError(f"options must be finite numbers: {name} {value}")
        if not 0 < self.target_macs < 1 or not 0 < self.max_group_share <= 1:
            raise OnnxotoError(f"options out of range: need 0 < target_macs < 1 (got "
                               f"{self.target_macs:g}) and 0 < max_group_share <= 1 (got "
                               f"{self.max_group_share:g})")

    def fingerprint(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in _RUN_KEYS}

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in super().to_dict().items() if k not in _DHSPG_ONLY}

    def fisher_options(self) -> FisherOptions:
        return FisherOptions(num_grads=self.fisher_samples, mini_batch=self.fisher_batch,
                             damping=self.damping, block_size=self.block_size,
                             low_rank=self.low_rank)


class WoodFisher:
    """SGD over ``params`` that prunes on ``pruner``'s schedule (see the module docstring); the
    loop sees an optimizer (``param_groups``, ``step``, ``zero_grad``, ``diagnostics``,
    ``state_dict``). ``fisher_data`` (x, y) feeds the Fisher: ``fisher_samples`` x
    ``fisher_batch`` samples per pruning step, drawn without augmentation by a generator seeded
    by (``seed``, step), cycling through the data when it holds fewer."""

    def __init__(self, module: torch.nn.Module, params: dict[str, torch.nn.Parameter],
                 pruner: GradualPruner, zig: ZigIndex,
                 fisher_data: tuple[torch.Tensor, torch.Tensor], *,
                 lr: float, momentum: float = 0.0, weight_decay: float = 0.0, seed: int = 0,
                 progress: bool = False) -> None:
        self.module = module
        self.pruner = pruner
        self.zig = zig  # the producers' ZIGs: group sparsity, also of an unstructured run
        self.sgd = torch.optim.SGD(list(params.values()), lr=lr, momentum=momentum,
                                   weight_decay=weight_decay)
        self.param_groups = self.sgd.param_groups
        self.fisher_data = fisher_data
        self.seed = seed
        self.progress = progress
        self._t = 0
        self._pruning_steps = 0
        self._fisher_seconds = 0.0

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.sgd.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        """A pruning step prunes and drops the batch's gradient; any other step is SGD's. Then
        the masks are held (pruned weights back to exactly 0)."""
        if self.pruner.schedule.prunes_at(self._t):
            self._prune()
        else:
            self.sgd.step()
        self.pruner.hold()
        self._t += 1

    def _prune(self) -> None:
        """The Fisher of the model as it predicts (eval mode: running statistics untouched and
        mini-batches of one sample valid under BatchNorm), then the OBS prune."""
        started = time.perf_counter()
        was_training = self.module.training
        self.module.eval()
        try:
            self.pruner.step(self._t, self.module, self._fisher_batches, F.cross_entropy)
        finally:
            self.module.train(was_training)
        self._pruning_steps += 1
        self._fisher_seconds += time.perf_counter() - started

    def _fisher_batches(self) -> Iterator[Batch]:
        options = self.pruner.fisher_options
        x, y = self.fisher_data
        count, size = options.num_grads, options.mini_batch
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self._t)
        order = torch.cat([torch.randperm(len(y), generator=generator)
                           for _ in range(-(-count * size // len(y)))])
        device = next(iter(self.pruner.params.values())).device
        bar = tqdm(range(count), desc=f"fisher at step {self._t}", unit="grad", leave=False,
                   disable=not self.progress, file=sys.stderr)
        for i in bar:
            take = order[i * size:(i + 1) * size]
            yield x[take].to(device), y[take].to(device)

    def diagnostics(self) -> dict[str, Any]:
        """What the epoch line and the history record: the step, group sparsity (share of ZIGs
        exactly zero), weight sparsity (share of the pruned parameters' weights exactly zero),
        the pruning steps done and their seconds (Fisher and OBS)."""
        return {"step": self._t, "num_zigs": self.zig.num_groups,
                "group_sparsity": self.zig.zero_fraction(),
                "weight_sparsity": self.pruner.weight_sparsity(),
                "pruning_steps": self._pruning_steps, "pruning_seconds": self._fisher_seconds,
                **({} if self.pruner.macs is None
                   else {"macs_fraction": self.pruner.macs_fraction()})}

    def state_dict(self) -> dict[str, Any]:
        """SGD's state, the masks and the step: all a resumed run needs besides the weights."""
        return {"sgd": self.sgd.state_dict(),
                "woodfisher": {"step": self._t, "pruning_steps": self._pruning_steps,
                               "pruning_seconds": self._fisher_seconds,
                               **self.pruner.state_dict()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sgd.load_state_dict(state["sgd"])
        saved = state["woodfisher"]
        self.pruner.load_state_dict(saved)
        self._t = int(saved["step"])
        self._pruning_steps = int(saved["pruning_steps"])
        self._fisher_seconds = float(saved["pruning_seconds"])


def _gib(size: int) -> str:
    return f"{size / GIB:.2f} GiB"


def _consumers(job: Job, producers: ZigIndex) -> ZigIndex:
    """The ZIGs indexed over their consumer slices, the same ZIGs as ``producers``."""
    try:
        consumers = build_zig_index(job.parts.groups, job.params, roles=("consumer",))
    except ValueError as exc:
        raise OnnxotoError(f"'{job.source}': consumer-side group OBS cannot index it ({exc}); "
                           f"use --side producer") from exc
    if consumers.group_sizes != producers.group_sizes:
        raise OnnxotoError(f"'{job.source}': the consumer slices do not cover the same channels "
                           f"as the producers; use --side producer")
    return consumers


def woodfisher_optimizer(job: Job, setup: Setup) -> tuple[WoodFisher, str]:
    """The ``OptimizerFactory`` of a WoodFisher run. Refuses, before any work, a Fisher over
    ``max_fisher_gb`` and more pruning steps than training steps; the line it returns says what
    the blocks need."""
    options = setup.options
    if not isinstance(options, WoodFisherOptions):
        raise TypeError(f"woodfisher_optimizer needs WoodFisherOptions, got "
                        f"{type(options).__name__}")
    total = options.epochs * setup.steps_per_epoch
    if options.steps > total:
        raise OnnxotoError(f"--steps {options.steps} pruning steps do not fit in the run's "
                           f"{total} training steps ({options.epochs} epoch(s) of "
                           f"{setup.steps_per_epoch}); lower --steps or raise --epochs")
    zig = build_zig_index(job.parts.groups, job.params)
    job.zig = zig
    fisher = options.fisher_options()
    every = total // options.steps
    by_macs = options.target_macs is not None
    final = 1 - options.target_macs if by_macs else options.sparsity
    schedule = CubicSchedule(0.0, final, start=-every, end=(options.steps - 1) * every,
                             every=every)
    unstructured, structured = CRITERIA[options.criterion]
    if options.structured:
        ranked, zero_also = zig, None
        if options.side == "consumer":
            ranked, zero_also = _consumers(job, zig), zig
        counter = (MacCounter(job.parts, zig, max_group_share=options.max_group_share)
                   if by_macs else None)
        pruner = GradualPruner.structured(ranked, schedule, structured, fisher,
                                          joint=options.joint, zero_also=zero_also,
                                          macs=counter)
    else:
        weights = {n: p for n, p in job.params.items() if p.dim() >= 2}
        if not weights:
            raise OnnxotoError(f"'{job.source}': no weight matrix or kernel (a parameter of rank "
                               f">= 2) to prune")
        pruner = GradualPruner(weights, schedule, unstructured, fisher, joint=options.joint)
    kind = "groups (structured)" if options.structured else "weights (unstructured)"
    when = ("at step 0" if options.steps == 1
            else f"in {options.steps} steps, every {every} training steps")
    if options.structured:
        kind += f", scored on their {options.side}s"
    if by_macs:
        amount = (f"the {kind} until slim.onnx has <= {options.target_macs:.1%} of the dense "
                  f"{counter.dense:,} MACs (ranked per MAC saved, at most "
                  f"{options.max_group_share:.0%} of any group's channels)")
    else:
        amount = f"{options.sparsity:.1%} of the {kind}"
    note = f"woodfisher: prune {amount} {when}"
    if options.criterion != "woodfisher":
        note += f" by {options.criterion} (no Fisher)"
    else:
        memory = fisher_memory({n: tuple(p.shape) for n, p in pruner.params.items()}, fisher)
        what = (f"{memory['weights']:,} weights in {memory['blocks']} blocks of <= "
                f"{options.block_size}{' (low-rank)' if options.low_rank else ''}: "
                f"{_gib(memory['total'])} (inverses {_gib(memory['inverse'])}, "
                f"{options.fisher_samples} gradients {_gib(memory['gradients'])})")
        if memory["total"] > options.max_fisher_gb * GIB:
            raise OnnxotoError(f"fisher: {what} is over --max-fisher-gb "
                               f"{options.max_fisher_gb:g}; lower --block-size (the inverses grow "
                               f"with it) or --fisher-samples, or raise --max-fisher-gb")
        note += (f"; Fisher of {what}, {options.fisher_batch} sample(s) per gradient, damping "
                 f"{options.damping:g}")
    progress = setup.world.main and not options.quiet and sys.stderr.isatty()
    data = (torch.from_numpy(setup.train.x), torch.from_numpy(setup.train.y))
    optimizer = WoodFisher(job.module, job.params, pruner, zig, data, lr=options.lr,
                           momentum=options.momentum, weight_decay=options.weight_decay,
                           seed=options.seed, progress=progress)
    return optimizer, note


def run_woodfisher(model_path: str | os.PathLike, options: WoodFisherOptions, *,
                   log: Log = print) -> dict[str, Any]:
    """Prune and fine-tune ``model_path`` with WoodFisher as ``options`` say; writes what
    ``run_dhspg`` writes and returns metrics.json's content (empty on ranks other than 0)."""
    return run_training(model_path, options, woodfisher_optimizer, log=log)
