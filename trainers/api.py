"""OTO's shape for users who keep their own model and loop: ``attach``, ``job.dhspg``, ``job.save``.

::

    job = trainers.attach(my_module, example_inputs=x)  # or trainers.attach("model.onnx")
    opt = job.dhspg(lr=0.1, target=0.5)                # a torch.optim.Optimizer
    for x, y in loader:
        loss = my_loss(job.module(x), y); loss.backward(); opt.step(); opt.zero_grad()
    job.save("out/")  # trained.onnx, masks.npz, slim.onnx (shrunk, validated), metrics.json

Why the user's module trains itself (not our interpreter of its export): its forward, custom ops
and Python control flow stay exactly as written; the ONNX export is only how the groups are
found and how the slim model is cut. That needs every group member initializer of the export to
*be* one of the module's own tensors, so the export uses torch's legacy (TorchScript) exporter
with ``do_constant_folding=False`` and ``keep_initializers_as_inputs=True``: it names
initializers by their state_dict keys and neither folds BatchNorm into Conv nor merges equal
weights. The dynamo exporter renames and may fold, which would leave members with nothing to map.
Members are mapped by name and their values checked; any that cannot be is a one-line error.

An ONNX file goes through ``OnnxModule`` instead, whose parameters are named by the initializers.
The CLI trainer (``trainers.train``) is a user of this module: ``attach`` for the module and the
groups, ``Job.dhspg`` for the optimizer, ``write_models`` for the files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import Tensor, nn

from onnxoto.errors import MismatchError, OnnxotoError
from onnxoto.files import Written, refuse_clobber, save_model, write_bytes_atomic
from onnxoto.groups import save_masks
from onnxoto.masking import masks_from_zeros
from onnxoto.metrics import measure
from onnxoto.partition import Partition, partition
from onnxoto.runtime import session
from onnxoto.shrink import ShrinkOptions, ShrinkResult, shrink
from trainers.binding import OnnxModule, write_back
from trainers.dhspg import DHSPG, DHSPGOptions
from trainers.zig import ZigIndex, build_zig_index

FILES = {"trained": "trained.onnx", "masks": "masks.npz", "slim": "slim.onnx",
         "metrics": "metrics.json"}
FORMAT = "onnxoto.attach/1"
EXPORT_OPSET = 17


class ValidationMismatch(MismatchError):
    """The slim model does not compute what the trained model computes (CLI exit code 1)."""


def _as_tuple(example_inputs: Tensor | Sequence[Tensor]) -> tuple[Tensor, ...]:
    inputs = (example_inputs,) if isinstance(example_inputs, Tensor) else tuple(example_inputs)
    if not inputs or not all(isinstance(x, Tensor) for x in inputs):
        raise OnnxotoError("example_inputs: give a tensor or a tuple of tensors, as the module's "
                           "forward takes them")
    return inputs


def export_module(module: nn.Module, example_inputs: tuple[Tensor, ...]) -> onnx.ModelProto:
    """``module`` as ONNX with state_dict names kept (legacy exporter, no constant folding).

    The module's train/eval mode is restored; initializers are initializers only (not graph
    inputs). Raises OnnxotoError naming the module when torch cannot export it."""
    names = [f"input_{i}" for i in range(len(example_inputs))] if len(example_inputs) > 1 \
        else ["input"]
    was_training = module.training
    with tempfile.TemporaryDirectory(prefix="onnxoto-attach-") as work:
        path = Path(work) / "model.onnx"
        try:
            with (contextlib.redirect_stdout(io.StringIO()),
                  contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings(),
                  torch.no_grad()):
                warnings.simplefilter("ignore")
                torch.onnx.export(module, example_inputs, str(path), dynamo=False,
                                  do_constant_folding=False, keep_initializers_as_inputs=True,
                                  input_names=names, opset_version=EXPORT_OPSET,
                                  training=torch.onnx.TrainingMode.EVAL)
        except Exception as exc:  # the exporter raises many types; all mean the same to a user
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise OnnxotoError(f"{type(module).__name__}: torch.onnx.export (legacy) cannot "
                               f"export it ({first}); make its forward traceable or export it "
                               f"yourself and attach the .onnx file") from exc
        finally:
            module.train(was_training)
        model = onnx.load(str(path))
    stored = {t.name for t in model.graph.initializer}
    kept = [v for v in model.graph.input if v.name not in stored]
    del model.graph.input[:]
    model.graph.input.extend(kept)
    return model


def map_members(module: nn.Module, parts: Partition) -> dict[str, str]:
    """ONNX initializer -> the module's state_dict key, for every member of a prunable group.

    By name (the legacy export keeps state_dict names), shapes and values checked exactly.
    Raises OnnxotoError naming the initializers that have no such tensor, e.g. a Conv weight
    the exporter computed by folding BatchNorm or a weight parametrization into it."""
    state = module.state_dict()
    stored = {t.name: t for t in parts.model.graph.initializer}
    mapping: dict[str, str] = {}
    missing: list[str] = []
    for group in parts.prunable:
        for member in group.members:
            name = member.initializer
            if name in mapping or name in missing:
                continue
            theirs = state.get(name)
            ours = stored.get(name)
            value = None if ours is None else onnx.numpy_helper.to_array(ours)
            if (theirs is None or value is None or tuple(theirs.shape) != value.shape
                    or not np.array_equal(theirs.detach().cpu().numpy(), value)):
                missing.append(name)
            else:
                mapping[name] = name
    if missing:
        shown = ", ".join(f"'{n}'" for n in missing[:6]) + (", ..." if len(missing) > 6 else "")
        raise OnnxotoError(f"{type(module).__name__}: {len(missing)} initializer(s) of the export "
                           f"are not the module's own tensors ({shown}); the exporter computed "
                           f"them (folded BatchNorm or a parametrization?); keep such weights "
                           f"as plain nn.Parameters or attach an ONNX file")
    return mapping


def _require_backward(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    """A step with no gradient anywhere would push ZIGs with zero directions (DHSPG counts a
    missing ZIG gradient as zero); it is almost always a loop missing ``loss.backward()``."""
    if not any(p.grad is not None for group in optimizer.param_groups for p in group["params"]):
        raise OnnxotoError("DHSPG step before any backward: no parameter has a gradient; call "
                           "loss.backward() before opt.step()")


@dataclass
class Job:
    """One model under DHSPG: ``module`` is what the user trains and calls.

    ``parts`` is the partition of its ONNX form (``parts.model``, the canonical graph its groups
    name); ``params`` are the trainable tensors by ONNX name (a group member's name is its
    state_dict key); ``zig`` and ``optimizer`` exist once ``dhspg`` was called."""

    module: nn.Module
    parts: Partition
    params: dict[str, nn.Parameter]
    source: str
    example_inputs: tuple[Tensor, ...] | None = None
    zig: ZigIndex | None = None
    optimizer: DHSPG | None = None

    def dhspg(self, lr: float = 0.1, target: float = 0.5, *,
              options: DHSPGOptions | None = None) -> DHSPG:
        """DHSPG over the module's parameters; ``lr`` and ``target`` (group sparsity) override
        ``options`` (defaults to OTOv2's, see ``DHSPGOptions``). Builds the ZIG index from the
        parameters as they are now: move the module to its device first."""
        try:
            chosen = dataclasses.replace(options or DHSPGOptions(), lr=lr,
                                         target_group_sparsity=target)
        except ValueError as exc:
            raise OnnxotoError(str(exc)) from exc
        self.zig = build_zig_index(self.parts.groups, self.params)
        self.optimizer = DHSPG(self.params, self.zig, chosen)
        self.optimizer.register_step_pre_hook(_require_backward)
        return self.optimizer

    def trained_model(self) -> onnx.ModelProto:
        """The ONNX model with the module's current weights: the graph written back for an ONNX
        source, a fresh export for a user's module."""
        if isinstance(self.module, OnnxModule):
            return write_back(self.module, self.parts.model)
        return export_module(self.module, self.example_inputs)

    def save(self, out: str | os.PathLike, *, seed: int = 0) -> dict[str, Any]:
        """Write trained.onnx, masks.npz (a channel goes when its producers are all exactly 0),
        slim.onnx (shrunk and validated against trained.onnx) and metrics.json into ``out``.

        Under DDP call it on one rank. Returns metrics.json's content; raises
        ``ValidationMismatch`` when the slim model does not match."""
        out = Path(out)
        reads = [self.source] if not self.source.startswith("<") else []
        refuse_clobber(reads, [out / name for name in FILES.values()])
        trained = self.trained_model()
        saved = write_models(trained, out, seed=seed,
                             parts=self.parts if isinstance(self.module, OnnxModule) else None)
        checked = self._check_module(saved.result.model)
        before, after = measure(self.parts.model), measure(saved.result.model)
        zeros = sum(int((~keep).sum()) for keep in saved.masks.values())
        metrics = {
            "format": FORMAT,
            "source": self.source,
            "params": _ratio(before.params, after.params),
            "macs": _ratio(before.macs, after.macs),
            "group_sparsity": self.zig.zero_fraction() if self.zig else 0.0,
            "channels": {"prunable": sum(g.size for g in saved.parts.prunable),
                         "removed": zeros},
            "validation": saved.result.comparison.to_dict(),
            "module_vs_slim_max_abs": checked,
            "steps": self.optimizer.diagnostics()["step"] if self.optimizer else 0,
            "files": dict(FILES),
        }
        write_bytes_atomic(out / FILES["metrics"], (json.dumps(metrics, indent=1) + "\n").encode())
        return metrics

    def _check_module(self, slim: onnx.ModelProto) -> float | None:
        """The slim model in onnxruntime against the user's module itself on the example inputs
        (eval mode), at the validation tolerance; None when there are no example inputs."""
        if self.example_inputs is None:
            return None
        was_training = self.module.training
        self.module.eval()
        try:
            with torch.no_grad():
                ours = self.module(*self.example_inputs)
        finally:
            self.module.train(was_training)
        ours = ours if isinstance(ours, (tuple, list)) else (ours,)
        runner = session(slim)
        feeds = {i.name: x.detach().cpu().numpy()
                 for i, x in zip(runner.get_inputs(), self.example_inputs, strict=True)}
        worst = 0.0
        for reference, got in zip(ours, runner.run(None, feeds), strict=True):
            reference = reference.detach().cpu().numpy()
            diff = float(np.abs(got - reference).max()) if reference.size else 0.0
            if diff > 1e-5 + 1e-4 * float(np.abs(reference).max()):
                raise ValidationMismatch(f"slim.onnx differs from {type(self.module).__name__} "
                                         f"on the example inputs by {diff:.3g}")
            worst = max(worst, diff)
        return worst


def _ratio(before: int, after: int) -> dict[str, Any]:
    return {"input": before, "slim": after, "slim_over_input": after / before if before else None}


@dataclass
class Saved:
    """What ``write_models`` wrote: the trained model's file, the masks, the shrink result and
    the partition they refer to."""

    written: Written
    masks: dict[int, np.ndarray]
    result: ShrinkResult
    parts: Partition


def write_models(trained: onnx.ModelProto, out: Path, *, seed: int = 0,
                 parts: Partition | None = None) -> Saved:
    """trained.onnx, masks.npz (``--zeros``: producers all exactly 0) and slim.onnx, validated.

    ``parts`` is the partition of ``trained`` when the caller has it (a written-back graph keeps
    its groups); a fresh export is partitioned again. Raises ``ValidationMismatch``."""
    written = save_model(trained, out / FILES["trained"])
    if parts is None:
        parts = partition(trained)
        trained = parts.model  # the canonical graph the groups name
    masks = masks_from_zeros(trained, parts.groups)
    save_masks(out / FILES["masks"], masks, model_sha256=written.sha256)
    result = shrink(trained, masks, options=ShrinkOptions(seed=seed), result=parts)
    if not result.passed:
        raise ValidationMismatch(f"slim model differs from the trained model: "
                                 f"{result.comparison.summary().splitlines()[0]}")
    save_model(result.model, out / FILES["slim"])
    return Saved(written=written, masks=masks, result=result, parts=parts)


def _require_prunable(parts: Partition, where: str) -> None:
    if not parts.prunable:
        reasons = parts.summary.get("top_reasons") or [{"reason": "none given"}]
        raise OnnxotoError(f"{where}: no prunable group, nothing for DHSPG to remove "
                           f"(top reason: {reasons[0]['reason']}); see onnxoto partition")


def attach(model: nn.Module | str | os.PathLike | onnx.ModelProto, *,
           example_inputs: Tensor | Sequence[Tensor] | None = None) -> Job:
    """A ``Job`` for an ONNX model (path or proto: trained as ``OnnxModule``) or for the user's
    own ``nn.Module`` (exported with ``example_inputs``, trained as is).

    Raises OnnxotoError when the module cannot be exported, when a group member cannot be mapped
    to one of its tensors, or when the model has no prunable group."""
    if isinstance(model, nn.Module):
        if example_inputs is None:
            raise OnnxotoError(f"attach({type(model).__name__}): give example_inputs= (the "
                               f"tensors its forward takes) so it can be exported")
        inputs = _as_tuple(example_inputs)
        source = f"<{type(model).__name__}>"
        parts = partition(export_module(model, inputs))
        _require_prunable(parts, source)
        map_members(model, parts)
        return Job(module=model, parts=parts, params=dict(model.named_parameters()),
                   source=source, example_inputs=inputs)
    if example_inputs is not None:
        raise OnnxotoError("example_inputs is only for a torch module; an ONNX model declares "
                           "its inputs")
    source = "<model>" if isinstance(model, onnx.ModelProto) else str(model)
    parts = partition(model)
    _require_prunable(parts, f"'{source}'" if not source.startswith("<") else source)
    module = OnnxModule(parts.model)  # the canonical graph: the groups name its initializers
    return Job(module=module, parts=parts, params=module.onnx_parameters(), source=source)
