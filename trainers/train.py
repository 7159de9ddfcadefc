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
"""

from __future__ import annotations

import io
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from onnxoto.errors import OnnxotoError, one_line
from onnxoto.files import (
    check_output_path,
    model_files,
    refuse_clobber,
    save_model,
    save_targets,
    write_bytes_atomic,
)
from onnxoto.groups import save_masks
from onnxoto.masking import zero_channels
from onnxoto.metrics import measure
from onnxoto.partition import Partition, partition
from onnxoto.runtime import session
from onnxoto.shrink import ShrinkOptions, shrink
from trainers.binding import OnnxModule, write_back
from trainers.data import load_dataset, make_loader, source_name, take
from trainers.dhspg import DHSPG, DHSPGOptions
from trainers.zig import build_zig_index

__all__ = [
    "FILES",
    "TrainOptions",
    "ValidationMismatch",
    "World",
    "onnx_predictions",
    "pack_correct",
    "resolve_device",
    "run_dhspg",
    "scheduled_lr",
    "unpack_correct",
]

FORMAT = "onnxoto.train/1"
FILES = {
    "checkpoint": "checkpoint.pt",
    "trained": "trained.onnx",
    "masks": "masks.npz",
    "slim": "slim.onnx",
    "metrics": "metrics.json",
}
DEFAULT_LR = {"sgd": 0.1, "adam": 1e-3}
LR_SCHEDULES = ("constant", "cosine")
DEVICES = ("auto", "cpu", "cuda")
EVAL_BATCH = 1024
# Options that change the trajectory: a checkpoint only resumes a run that agrees on all of them.
_RUN_KEYS = ("data", "target", "batch_size", "lr", "lr_schedule", "variant", "momentum",
             "weight_decay", "warmup_epochs", "period_steps", "reselect", "epsilon", "lam",
             "lam_amplify", "lam_hat", "limit_train", "seed")

Log = Callable[[str], None]


class ValidationMismatch(OnnxotoError):
    """The slim model does not compute what the trained model computes (CLI exit code 1)."""


@dataclass
class TrainOptions:
    """One DHSPG run. ``lr`` defaults per variant (sgd 0.1, adam 1e-3); ``momentum`` (sgd only)
    and L2 ``weight_decay`` go to the optimizer's direction; ``lr_schedule`` cosine
    decays it to 0 over all steps (see ``scheduled_lr``); ``batch_size`` is per
    process; ``warmup_epochs`` of plain steps come before any group is pushed to zero;
    ``period_steps`` is how often the redundant set is chosen (a chosen group stays while it
    shrinks, unless ``reselect``; see DHSPGOptions); ``epsilon`` in [0, 0.95] is the
    half-space threshold (higher projects to zero sooner); ``lam``, ``lam_amplify`` and
    ``lam_hat`` set the push toward zero (None: the variant's default; see
    ``redundant_lambdas``); ``limit_*`` keep the first N samples;
    ``device`` auto picks CUDA when torch sees one; ``compile_stats`` runs DHSPG's per-step
    sums through torch.compile (faster steps after a ~25 s compile; see DHSPGOptions).
    An ``out`` folder holding any of ``FILES`` is refused unless ``resume`` (continue from its
    checkpoint) or ``overwrite`` (replace them): a finished run is never silently lost."""

    data: str = "fashion-mnist"
    target: float = 0.5
    epochs: int = 10
    batch_size: int = 64
    lr: float | None = None
    lr_schedule: str = "constant"
    variant: str = "sgd"
    momentum: float = 0.0
    weight_decay: float = 0.0
    warmup_epochs: int = 1
    period_steps: int = 100
    reselect: bool = False
    epsilon: float = 0.5
    lam: float | None = None
    lam_amplify: float | None = None
    lam_hat: float | None = None
    limit_train: int | None = None
    limit_test: int | None = None
    seed: int = 0
    device: str = "auto"
    out: Path = Path("out/dhspg")
    resume: bool = False
    overwrite: bool = False
    quiet: bool = False
    compile_stats: bool = False

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        if self.variant not in DEFAULT_LR:
            raise OnnxotoError(f"variant {self.variant!r}: choose from {', '.join(DEFAULT_LR)}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise OnnxotoError(f"lr schedule {self.lr_schedule!r}: choose from "
                               f"{', '.join(LR_SCHEDULES)}")
        if self.device not in DEVICES:
            raise OnnxotoError(f"device {self.device!r}: choose from {', '.join(DEVICES)}")
        self.lr = DEFAULT_LR[self.variant] if self.lr is None else self.lr
        numbers = ("lr", "momentum", "weight_decay", "target", "epsilon", "lam", "lam_amplify",
                   "lam_hat")
        infinite = [name for name in numbers
                    if getattr(self, name) is not None and not math.isfinite(getattr(self, name))]
        if infinite:
            raise OnnxotoError(f"options must be finite numbers: "
                               f"{', '.join(f'{n} {getattr(self, n)}' for n in infinite)}")
        checks = {
            "epochs >= 1": self.epochs >= 1,
            "batch_size >= 1": self.batch_size >= 1,
            "lr > 0": self.lr > 0,
            "0 <= momentum < 1": 0 <= self.momentum < 1,
            "weight_decay >= 0": self.weight_decay >= 0,
            "0 <= target < 1": 0 <= self.target < 1,
            "0 <= epsilon <= 0.95": 0 <= self.epsilon <= 0.95,
            "lam >= 0": self.lam is None or self.lam >= 0,
            "lam_amplify >= 1": self.lam_amplify is None or self.lam_amplify >= 1,
            "lam_hat >= 1": self.lam_hat is None or self.lam_hat >= 1,
            "warmup_epochs >= 0": self.warmup_epochs >= 0,
            "period_steps >= 1": self.period_steps >= 1,
            "limit_train >= 1": self.limit_train is None or self.limit_train >= 1,
            "limit_test >= 1": self.limit_test is None or self.limit_test >= 1,
        }
        broken = [rule for rule, ok in checks.items() if not ok]
        if broken:
            raise OnnxotoError(f"options out of range: need {', '.join(broken)}")
        if self.resume and self.overwrite:
            raise OnnxotoError("resume and overwrite exclude each other: resume continues the "
                               "run in the output folder, overwrite replaces it")
        if self.target > 0 and self.epochs <= self.warmup_epochs:
            raise OnnxotoError(f"epochs {self.epochs} <= warmup_epochs {self.warmup_epochs}: no "
                               f"epoch is left to prune toward target {self.target:g}; raise "
                               f"--epochs or lower --warmup-epochs (or --target 0)")

    def fingerprint(self) -> dict[str, Any]:
        """Options a resumed run must share; a cosine rate also depends on the epoch count."""
        keys = _RUN_KEYS + (("epochs",) if self.lr_schedule == "cosine" else ())
        return {key: getattr(self, key) for key in keys}

    def to_dict(self) -> dict[str, Any]:
        return {f.name: (str(v) if isinstance(v := getattr(self, f.name), Path) else v)
                for f in fields(self)}


# --------------------------------------------------------------------------- processes, device


@dataclass(frozen=True)
class World:
    """This process's place in a torchrun launch (rank 0 of 1 when run directly)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> World:
        """Read torchrun's RANK / WORLD_SIZE / LOCAL_RANK."""
        env = os.environ
        return cls(rank=int(env.get("RANK", 0)), size=int(env.get("WORLD_SIZE", 1)),
                   local_rank=int(env.get("LOCAL_RANK", 0)))

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def resolve_device(choice: str, local_rank: int = 0) -> torch.device:
    """cpu, or CUDA (this rank's GPU) for ``cuda`` and for ``auto`` when torch sees a GPU."""
    if choice not in DEVICES:
        raise OnnxotoError(f"device {choice!r}: choose from {', '.join(DEVICES)}")
    available = torch.cuda.is_available()
    if choice == "cuda" and not available:
        raise OnnxotoError("device cuda: torch sees no CUDA device; use --device auto or cpu")
    if choice == "cpu" or not available:
        return torch.device("cpu")
    return torch.device("cuda", local_rank % torch.cuda.device_count())


@contextmanager
def _process_group(world: World, device: torch.device) -> Iterator[None]:
    """torch.distributed for the run when launched by torchrun; nothing otherwise.

    On success every rank waits for the others before tearing the group down: a rank that
    destroyed gloo and exited while rank 0 was still writing results aborted at interpreter
    exit ("terminate called without an active exception", ~1 run in 20 under load). On an
    error the barrier is skipped; torchrun stops the ranks still waiting.
    """
    if not world.distributed:
        yield
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    try:
        yield
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _seed_everything(seed: int, device: torch.device) -> None:
    """Seeded torch RNGs; on CUDA also deterministic kernels (DHSPG's index_add_, cuBLAS)."""
    torch.manual_seed(seed)
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)


# --------------------------------------------------------------------------- setup


@dataclass
class Split:
    """One split's arrays, how many samples the source had before ``limit``, and how messages
    name it (its npz file, or the dataset's name and split)."""

    x: np.ndarray
    y: np.ndarray
    available: int
    limit: int | None
    where: str = ""

    @classmethod
    def load(cls, data: str, split: str, limit: int | None) -> Split:
        x, y = load_dataset(data, split=split)
        available = len(y)
        x, y = take(x, y, limit)
        return cls(x=x, y=y, available=available, limit=limit, where=source_name(data, split))

    def describe(self) -> dict[str, Any]:
        return {"samples": len(self.y), "available": self.available,
                "limited": len(self.y) < self.available}


@dataclass
class Run:
    """Everything one training run holds; built by ``_prepare``."""

    model_path: Path
    model: onnx.ModelProto
    parts: Partition
    module: OnnxModule
    net: torch.nn.Module
    optimizer: DHSPG
    train: Split
    test: Split
    train_loader: DataLoader
    test_loader: DataLoader
    device: torch.device
    world: World
    options: TrainOptions
    model_sha256: str
    history: list[dict[str, Any]] = field(default_factory=list)
    train_seconds: float = 0.0
    start_epoch: int = 0


def _input_dims(module: OnnxModule, model: onnx.ModelProto) -> tuple[int | None, ...]:
    if len(module.input_names) != 1 or len(module.output_names) != 1:
        raise OnnxotoError(f"model has inputs {module.input_names} and outputs "
                           f"{module.output_names}; dhspg trains a classifier with one image "
                           f"input and one logits output")
    value = next(v for v in model.graph.input if v.name == module.input_names[0])
    return tuple(d.dim_value if d.HasField("dim_value") else None
                 for d in value.type.tensor_type.shape.dim)


def _check_data_fits(module: OnnxModule, model: onnx.ModelProto, train: Split, test: Split,
                     data: str) -> None:
    """Sample shape against the model input, every label against the logits, and a batch of 2.

    Why the batch: an export may bake batch 1 into a Reshape; training would then fail on its
    first step with an error about a node rather than about the model. Its logits must be
    finite: NaN weights, or data scaled so large that the logits overflow, train to NaN.
    Why the test labels too: one past the logits is never predicted, so the run would end with
    a quietly low accuracy instead of an error."""
    dims = _input_dims(module, model)
    sample = tuple(train.x.shape[1:])
    if tuple(test.x.shape[1:]) != sample:
        raise OnnxotoError(f"'{test.where}': samples of shape {tuple(test.x.shape[1:])}, but "
                           f"'{train.where}' has {sample}; both splits need one sample shape")
    expected = dims[1:]
    if len(expected) != len(sample) or any(d is not None and d != s
                                           for d, s in zip(expected, sample, strict=True)):
        shown = tuple("?" if d is None else d for d in dims)
        raise OnnxotoError(f"dataset '{data}' has samples of shape {sample} but model input "
                           f"'{module.input_names[0]}' is {shown} (batch first); they must match")
    module.eval()
    try:
        with torch.no_grad():
            logits = module(torch.from_numpy(train.x[:2]))
    except Exception as exc:
        raise OnnxotoError(f"the model cannot run a batch of 2 samples ({str(exc).splitlines()[0]}"
                           f"); export it so the batch size is not fixed in the graph") from exc
    if logits.dim() != 2:
        raise OnnxotoError(f"model output is {tuple(logits.shape)} for 2 samples; a classifier "
                           f"gives logits of shape (batch, classes)")
    if not torch.isfinite(logits).all():
        raise OnnxotoError(f"model output holds NaN or Inf for the first 2 samples of "
                           f"'{train.where}' (largest |x| {float(np.abs(train.x[:2]).max()):.3g}); "
                           f"check the model's weights and the data's scale")
    classes = logits.shape[1]
    for split in (train, test):
        beyond = np.flatnonzero(split.y >= classes)
        if beyond.size:
            first = int(beyond[0])
            raise OnnxotoError(f"'{split.where}': label {int(split.y[first])} at index {first} "
                               f"is out of range for the model's {classes} classes (labels "
                               f"0..{classes - 1}); {beyond.size} label(s) out of range")


def _prepare(model_path: Path, options: TrainOptions, world: World, device: torch.device) -> Run:
    parts = partition(model_path)
    model = parts.model  # the canonical graph: the groups name its initializers
    if not parts.prunable:
        reasons = parts.summary.get("top_reasons") or [{"reason": "none given"}]
        raise OnnxotoError(f"'{model_path}': no prunable group, nothing for DHSPG to remove "
                           f"(top reason: {reasons[0]['reason']}); see onnxoto partition")
    module = OnnxModule(model)
    train = Split.load(options.data, "train", options.limit_train)
    test = Split.load(options.data, "test", options.limit_test)
    _check_data_fits(module, model, train, test, options.data)
    module.to(device)
    params = module.onnx_parameters()
    zig = build_zig_index(parts.groups, params)
    train_loader = make_loader(train.x, train.y, options.batch_size, True, options.seed,
                               distributed=world.distributed)
    steps_per_epoch = len(train_loader)
    try:
        dhspg_options = DHSPGOptions(
            lr=options.lr, variant=options.variant, momentum=options.momentum,
            weight_decay=options.weight_decay, target_group_sparsity=options.target,
            epsilon=options.epsilon, lam=options.lam,
            lam_amplify=options.lam_amplify, lam_hat=options.lam_hat,
            warmup_steps=options.warmup_epochs * steps_per_epoch,
            period=options.period_steps, reselect=options.reselect, seed=options.seed,
            compile_stats=options.compile_stats)
    except ValueError as exc:
        raise OnnxotoError(str(exc)) from exc
    optimizer = DHSPG(params, zig, dhspg_options)
    net: torch.nn.Module = module
    if world.distributed:
        net = DistributedDataParallel(
            module, device_ids=[device.index] if device.type == "cuda" else None)
    test_loader = make_loader(test.x, test.y, EVAL_BATCH, False, options.seed)
    return Run(model_path=model_path, model=model, parts=parts, module=module, net=net,
               optimizer=optimizer, train=train, test=test, train_loader=train_loader,
               test_loader=test_loader, device=device, world=world, options=options,
               model_sha256=parts.model_info["sha256"])


# --------------------------------------------------------------------------- output folder


def _output_files(out: Path) -> list[Path]:
    """Every file a run may write or replace in ``out``: ``FILES`` and the external-data files
    of models already there that a save replaces."""
    paths = [out / name for name in FILES.values()]
    return paths + [extra for name in ("trained", "slim")
                    for extra in save_targets(out / FILES[name])[1:]]


def _check_output(model_path: Path, options: TrainOptions) -> None:
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


def _remove_earlier_run(options: TrainOptions) -> None:
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


def _save_checkpoint(run: Run, epoch: int) -> None:
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
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_bytes_atomic(_checkpoint_path(run.options), buffer.getvalue())


def _resume(run: Run) -> None:
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
    tensor names and shapes are as ``_save_checkpoint`` writes them (the header alone says
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


# --------------------------------------------------------------------------- training


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
    return (f"epoch {record['epoch']}/{epochs}  loss {record['loss']:.4f}  "
            f"train acc {record['train_accuracy']:.2%}  test acc {record['test_accuracy']:.2%}  "
            f"group sparsity {record['group_sparsity']:.1%}  "
            f"redundant {record['redundant_count']}/{record['num_zigs']}  "
            f"redundant norm {record['redundant_mean_norm']:.4g}"
            + ("  (warm-up)" if record["in_warmup"] else ""))


def _train(run: Run, log: Log) -> None:
    options, main = run.options, run.world.main
    show_bar = main and not options.quiet and sys.stderr.isatty()
    for epoch in range(run.start_epoch, options.epochs):
        started = time.perf_counter()
        stats = _train_epoch(run, epoch, show_bar)
        run.train_seconds += time.perf_counter() - started
        if not main:
            continue
        record = {"epoch": epoch + 1, **stats, "test_accuracy": _torch_accuracy(run),
                  **run.optimizer.diagnostics(), "train_seconds": run.train_seconds}
        run.history.append(record)
        if not options.quiet:
            log(_epoch_line(record, options.epochs))
        _save_checkpoint(run, epoch + 1)


# --------------------------------------------------------------------------- results


def _dynamic_batch(model: onnx.ModelProto) -> onnx.ModelProto:
    """Copy whose graph inputs and outputs take any batch, so onnxruntime can run big batches;
    ``_check_data_fits`` already ran the graph with a batch of 2."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    stored = {t.name for t in out.graph.initializer}
    for value in (*out.graph.input, *out.graph.output):
        if value.name in stored:
            continue
        dims = value.type.tensor_type.shape.dim
        if dims:
            dims[0].Clear()
            dims[0].dim_param = "batch"
    del out.graph.value_info[:]
    return out


def onnx_predictions(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """Class predictions (argmax of the single output) of ``model`` in onnxruntime (CPU)."""
    runner = session(_dynamic_batch(model))
    name = runner.get_inputs()[0].name
    chunks = [runner.run(None, {name: x[i:i + EVAL_BATCH]})[0].argmax(axis=1)
              for i in range(0, len(x), EVAL_BATCH)]
    return np.concatenate(chunks)


def pack_correct(correct: np.ndarray) -> str:
    """Which test samples a model got right, one bit each, as hex: with the same test subset,
    two runs' records give the paired error of their accuracy difference (a benchmark's
    drop), smaller than treating the two accuracies as independent when the models miss mostly
    the same samples."""
    return np.packbits(np.asarray(correct, dtype=bool)).tobytes().hex()


def unpack_correct(text: str, samples: int) -> np.ndarray:
    """Inverse of ``pack_correct`` for a record of ``samples`` test samples."""
    bits = np.unpackbits(np.frombuffer(bytes.fromhex(text), dtype=np.uint8))
    if bits.size < samples or bits.size - samples >= 8:
        raise OnnxotoError(f"a correctness record of {bits.size} bits cannot hold exactly "
                           f"{samples} test samples")
    return bits[:samples].astype(bool)


def _ratio(before: int, after: int) -> dict[str, Any]:
    return {"input": before, "slim": after,
            "slim_over_input": after / before if before else None}


def _target_reached(run: Run) -> bool:
    """Whether as many groups are zero as DHSPG's redundant set holds (floor of the target
    share of all groups, see ``DHSPG._select``)."""
    zig = run.optimizer.zig
    zeros = round(zig.zero_fraction() * zig.num_groups)
    return zeros >= math.floor(zig.num_groups * run.options.target)


def _finish(run: Run, wall_started: float, log: Log) -> dict[str, Any]:
    """Write trained.onnx, masks.npz, slim.onnx and metrics.json; returns the metrics. A target
    not reached is a warning (the models are still right, only less pruned than asked), said in
    the log and recorded as ``target_reached``."""
    out = run.options.out
    trained = write_back(run.module, run.model)
    written = save_model(trained, out / FILES["trained"])
    masks = run.optimizer.zig.masks()
    save_masks(out / FILES["masks"], masks, model_sha256=written.sha256)
    result = shrink(trained, masks, options=ShrinkOptions(seed=run.options.seed),
                    result=run.parts)
    if not result.passed:
        raise ValidationMismatch(f"slim model differs from the trained model: "
                                 f"{result.comparison.summary().splitlines()[0]}")
    save_model(result.model, out / FILES["slim"])
    full_pred = onnx_predictions(trained, run.test.x)
    zeroed_pred = onnx_predictions(zero_channels(trained, run.parts.groups, result.masks),
                                   run.test.x)
    slim_pred = onnx_predictions(result.model, run.test.x)
    slim_right = slim_pred == run.test.y
    before, after = measure(run.model_path), measure(result.model)
    channels = sum(g.size for g in run.parts.prunable)
    removed = sum(int((~keep).sum()) for keep in masks.values())
    metrics = {
        "format": FORMAT,
        "method": "dhspg",
        "model": {"path": str(run.model_path), "sha256": run.model_sha256},
        "data": {"source": run.options.data, "train": run.train.describe(),
                 "test": run.test.describe()},
        "options": run.options.to_dict(),
        "epochs": run.options.epochs,
        "steps": run.optimizer.diagnostics()["step"],
        "world_size": run.world.size,
        "device": str(run.device),
        "torch_threads": torch.get_num_threads(),  # train seconds depend on it
        # trained: trained.onnx as written; zeroed: with the masks' channels set to zero (equal
        # when DHSPG's groups are exact zeros, which is what this records); slim: slim.onnx.
        "accuracy": {"trained": float((full_pred == run.test.y).mean()),
                     "zeroed": float((zeroed_pred == run.test.y).mean()),
                     "slim": float(slim_right.mean()),
                     "prediction_mismatches": int((full_pred != slim_pred).sum()),
                     "slim_correct": pack_correct(slim_right),
                     "runtime": "onnxruntime CPU"},
        "params": _ratio(before.params, after.params),
        "macs": _ratio(before.macs, after.macs),
        "group_sparsity": run.optimizer.zig.zero_fraction(),
        "target_group_sparsity": run.options.target,
        "target_reached": _target_reached(run),
        "channels": {"prunable": channels, "removed": removed},
        "validation": result.comparison.to_dict() if result.comparison else None,
        "train_seconds": run.train_seconds,  # summed over every resumed segment
        "wall_seconds": time.perf_counter() - wall_started,  # this process only
        "resumed_at_epoch": run.start_epoch,  # 0: trained in one process
        "files": dict(FILES),
        "history": run.history,
    }
    write_bytes_atomic(out / FILES["metrics"], (json.dumps(metrics, indent=1) + "\n").encode())
    if not metrics["target_reached"]:
        log(f"warning: group sparsity {metrics['group_sparsity']:.1%} is short of the target "
            f"{run.options.target:.1%} after {run.options.epochs} epochs; train longer "
            f"(--epochs), start pruning sooner (--warmup-epochs) or zero groups sooner "
            f"(--epsilon)")
    if metrics["accuracy"]["prediction_mismatches"]:
        raise ValidationMismatch(f"trained and slim models disagree on "
                                 f"{metrics['accuracy']['prediction_mismatches']} test samples "
                                 f"(see {out / FILES['metrics']})")
    return metrics


def run_dhspg(model_path: str | os.PathLike, options: TrainOptions, *,
              log: Log = print) -> dict[str, Any]:
    """Train ``model_path`` with DHSPG as ``options`` say; returns metrics.json's content
    (an empty dict on ranks other than 0). Raises ``OnnxotoError`` for bad input and
    ``ValidationMismatch`` if the slim model does not match the trained one."""
    wall_started = time.perf_counter()
    model_path = Path(model_path)
    _check_output(model_path, options)
    world = World.from_env()
    device = resolve_device(options.device, world.local_rank)
    _seed_everything(options.seed, device)
    with _process_group(world, device):
        run = _prepare(model_path, options, world, device)
        if options.resume:
            _resume(run)
        if world.main:
            _remove_earlier_run(options)
        _train(run, log)
        if not world.main:
            return {}
        return _finish(run, wall_started, log)


def summary_rows(metrics: dict[str, Any]) -> list[list[object]]:
    """Rows (metric, full, slim, slim/full) for the closing table."""
    acc = metrics["accuracy"]
    rows: list[list[object]] = [["test accuracy", f"{acc['trained']:.2%}", f"{acc['slim']:.2%}",
                                 None]]
    for name, key in (("params", "params"), ("MACs", "macs")):
        entry = metrics[key]
        rows.append([name, entry["input"], entry["slim"], entry["slim_over_input"]])
    return rows
