"""Everything a run holds before its first step: this process's place in a torchrun launch, the
device, the data splits (checked against the model), the bound module, the optimizer and the
loaders.

The optimizer comes from a factory (``dhspg_optimizer`` by default; WoodFisher passes its own):
the loop, the checkpoints and the outputs only need the ``Pruner`` protocol, so a second method
reuses them instead of copying them."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnx
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from onnxoto.errors import OnnxotoError
from onnxoto.partition import Partition
from trainers.api import Job, attach
from trainers.binding import OnnxModule
from trainers.data import load_dataset, make_loader, source_name, take, train_augment
from trainers.dhspg import DHSPGOptions, compile_decision
from trainers.train.options import DEVICES, EVAL_BATCH, TrainOptions
from trainers.zig import ZigIndex


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
def process_group(world: World, device: torch.device) -> Iterator[None]:
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


def seed_everything(seed: int, device: torch.device) -> None:
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


class Pruner(Protocol):
    """What the loop, the checkpoints and the outputs use of a run's optimizer: the loop sets
    ``param_groups[0]["lr"]`` each step and logs ``diagnostics()`` per epoch (its ``step`` and
    ``group_sparsity`` go to metrics.json), the outputs count zero groups in ``zig``."""

    param_groups: list[dict[str, Any]]
    zig: ZigIndex

    def step(self) -> Any: ...
    def zero_grad(self, set_to_none: bool = True) -> None: ...
    def diagnostics(self) -> dict[str, Any]: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class Run:
    """Everything one training run holds; built by ``prepare``."""

    model_path: Path
    model: onnx.ModelProto
    parts: Partition
    module: OnnxModule
    net: torch.nn.Module
    optimizer: Pruner
    train: Split
    test: Split
    train_loader: DataLoader
    test_loader: DataLoader
    device: torch.device
    world: World
    options: TrainOptions
    model_sha256: str
    compile_note: str = ""
    history: list[dict[str, Any]] = field(default_factory=list)
    train_seconds: float = 0.0
    start_epoch: int = 0
    slim: Any = None  # trainers.train.slim.Slim once the run trains the slim network


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


@dataclass(frozen=True)
class Setup:
    """What an optimizer factory may need besides the job: the options, the training split (a
    pruner draws its own seeded batches from it), the steps per epoch and this process."""

    options: TrainOptions
    train: Split
    steps_per_epoch: int
    world: World
    device: torch.device


# (the optimizer over job.module's parameters, a line the run logs before training)
OptimizerFactory = Callable[[Job, Setup], tuple[Pruner, str]]


def dhspg_optimizer(job: Job, setup: Setup) -> tuple[Pruner, str]:
    """DHSPG as the options say; the line says whether its sums are compiled."""
    options = setup.options
    compile_stats, compile_note = compile_decision(
        sum(p.numel() for p in job.module.parameters()), requested=options.compile_stats)
    try:
        dhspg_options = DHSPGOptions(
            lr=options.lr, variant=options.variant, momentum=options.momentum,
            weight_decay=options.weight_decay, target_group_sparsity=options.target,
            epsilon=options.epsilon, lam=options.lam,
            lam_amplify=options.lam_amplify, lam_hat=options.lam_hat,
            warmup_steps=options.warmup_epochs * setup.steps_per_epoch,
            period=options.period_steps, reselect=options.reselect, seed=options.seed,
            compile_stats=compile_stats)
    except ValueError as exc:
        raise OnnxotoError(str(exc)) from exc
    return job.dhspg(options.lr, options.target, options=dhspg_options), compile_note


def wrap_ddp(module: torch.nn.Module, world: World, device: torch.device) -> torch.nn.Module:
    """``module`` in DistributedDataParallel under torchrun, else ``module`` itself."""
    if not world.distributed:
        return module
    return DistributedDataParallel(module,
                                   device_ids=[device.index] if device.type == "cuda" else None)


def prepare(model_path: Path, options: TrainOptions, world: World, device: torch.device,
            make_optimizer: OptimizerFactory = dhspg_optimizer) -> Run:
    job = attach(model_path)
    parts, model, module = job.parts, job.parts.model, job.module
    train = Split.load(options.data, "train", options.limit_train)
    test = Split.load(options.data, "test", options.limit_test)
    _check_data_fits(module, model, train, test, options.data)
    module.to(device)
    train_loader = make_loader(train.x, train.y, options.batch_size, True, options.seed,
                               distributed=world.distributed, augment=train_augment(options.data))
    setup = Setup(options=options, train=train, steps_per_epoch=len(train_loader), world=world,
                  device=device)
    optimizer, note = make_optimizer(job, setup)
    net = wrap_ddp(module, world, device)
    test_loader = make_loader(test.x, test.y, EVAL_BATCH, False, options.seed)
    return Run(model_path=model_path, model=model, parts=parts, module=module, net=net,
               optimizer=optimizer, train=train, test=test, train_loader=train_loader,
               test_loader=test_loader, device=device, world=world, options=options,
               model_sha256=parts.model_info["sha256"], compile_note=note)
