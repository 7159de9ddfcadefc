"""What one training run is asked to do: ``TrainOptions`` (checked when made), the files it
writes into its output folder, and the options a resumed run must share."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

from onnxoto.errors import OnnxotoError

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
             "lam_amplify", "lam_hat", "limit_train", "seed", "slim_continuation")

Log = Callable[[str], None]


@dataclass
class TrainOptions:
    """One DHSPG run. ``lr`` defaults per variant (sgd 0.1, adam 1e-3); ``momentum`` (sgd only)
    and L2 ``weight_decay`` go to the optimizer's direction; ``lr_schedule`` cosine
    decays it to 0 over all steps (see ``scheduled_lr``); ``batch_size`` is per
    process; ``warmup_epochs`` of plain steps come before any group is pushed to zero;
    the redundant set is chosen once, when the warm-up ends (OTOv2); ``period_steps`` re-chooses
    it every N steps (our extension; a chosen group stays while it shrinks, unless ``reselect``;
    see DHSPGOptions); ``epsilon`` in [0, 0.95] is the
    half-space threshold (higher projects to zero sooner); ``lam``, ``lam_amplify`` and
    ``lam_hat`` set the push toward zero (None: the variant's default; see
    ``redundant_lambdas``); ``limit_*`` keep the first N samples;
    ``device`` auto picks CUDA when torch sees one; ``compile_stats`` runs DHSPG's per-step
    sums through torch.compile (True/False; None: ``compile_decision`` chooses, since the compile
    pays only on large models and needs a C++ compiler). ``slim_continuation`` (default on)
    deletes the zero groups once DHSPG has reached the target and stopped pushing, and trains the
    slim network for the remaining epochs: the same training (the deleted channels carry exact
    zeros; tests check the kept weights against the full network's), at the slim network's cost.
    ``test_each_epoch`` (default on) measures test accuracy after every epoch; off, only after
    the last (a test pass over the test split costs a third of a training pass over as many
    samples: on a budget, the samples go to training instead).
    An ``out`` folder holding any of ``FILES`` is refused unless ``resume`` (continue from its
    checkpoint) or ``overwrite`` (replace them): a finished run is never silently lost."""

    method: ClassVar[str] = "dhspg"  # metrics.json's "method"; another method's options override it
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
    period_steps: int | None = None
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
    compile_stats: bool | None = None
    slim_continuation: bool = True
    test_each_epoch: bool = True

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
            "period_steps >= 1": self.period_steps is None or self.period_steps >= 1,
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
