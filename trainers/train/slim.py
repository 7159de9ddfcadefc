"""Slim continuation: once DHSPG has stopped pushing, delete the zero channels and train on.

After the release (target group sparsity reached, see ``DHSPG.released``) DHSPG takes plain
steps and holds its zero ZIGs at exactly 0. A channel whose producers are 0 carries 0, so every
kept weight sees the same gradient in the network without that channel (up to the order of float
sums): training the slim network is the same training, at the slim network's cost.

The switch (``switch``, at an epoch boundary) writes the current weights into the ONNX graph,
``onnxoto.shrink``s it with the held ZIGs' masks (validated in onnxruntime on CPU), binds the slim
graph as a new ``OnnxModule`` and carries the optimizer state over: every buffer shaped like its
parameter is cut with the indices shrink deletes (``onnxoto.shrink.removed_indices``; no second
copy of shrink's slicing). The slim optimizer is DHSPG with no ZIGs, whose step is the plain step
the released full run takes. ``merge_back`` writes the slim weights into the kept slices of the
full network as it was at the switch, so trained.onnx stays the full graph with zeros (removed
producers are 0; removed consumer and attached slices keep their values from the switch, which
the function does not read).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import torch
from torch import Tensor

from onnxoto.errors import OnnxotoError, one_line
from onnxoto.masking import tensor_protos
from onnxoto.metrics import measure
from onnxoto.partition import Partition
from onnxoto.shrink import ShrinkOptions, ShrinkResult, removed_indices, shrink
from trainers.api import ValidationMismatch
from trainers.binding import OnnxModule, write_back
from trainers.dhspg import DHSPG
from trainers.train.options import Log
from trainers.train.prepare import Run, wrap_ddp
from trainers.zig import build_zig_index

Kept = dict[str, dict[int, np.ndarray]]


@dataclass
class Slim:
    """The slim network a run trains after the switch, and the full one it came from.

    ``epoch``: epochs done on the full network; ``masks``: the held ZIGs as onnxoto masks;
    ``model``: the slim ONNX graph (its weights as of the switch); ``kept``: initializer -> axis
    -> the indices shrink keeps; ``full_module``/``full_optimizer``: the full network as of the
    switch; ``diagnostics``: the full optimizer's at the switch (group sparsity no longer
    changes); ``summary``: params and MACs before and after, and the switch's seconds."""

    epoch: int
    masks: dict[int, np.ndarray]
    model: onnx.ModelProto
    kept: Kept
    full_module: OnnxModule
    full_optimizer: DHSPG
    diagnostics: dict[str, Any]
    summary: dict[str, Any]

    def to_checkpoint(self) -> dict[str, Any]:
        """What a resumed run needs to rebuild this (``restore``): the slim graph as bytes."""
        return {"epoch": self.epoch, "onnx": self.model.SerializeToString(),
                "masks": {str(gid): torch.from_numpy(keep) for gid, keep in self.masks.items()},
                "full_module": self.full_module.state_dict(), "diagnostics": self.diagnostics,
                "summary": self.summary}


def ready(optimizer: DHSPG) -> bool:
    """Whether the full network can be cut: DHSPG released its push and holds some ZIG at 0."""
    return isinstance(optimizer, DHSPG) and optimizer.released and bool(
        optimizer.held_zero.any())


def kept_indices(parts: Partition, masks: dict[int, np.ndarray]) -> Kept:
    """Initializer -> axis -> the indices that ``onnxoto.shrink`` keeps under ``masks``."""
    dims = {name: tuple(proto.dims) for name, proto in tensor_protos(parts.model).items()}
    return {name: {axis: np.setdiff1d(np.arange(dims[name][axis]), gone)
                   for axis, gone in axes.items()}
            for name, axes in removed_indices(parts, masks).items()}


def slice_tensor(tensor: Tensor, axes: dict[int, np.ndarray]) -> Tensor:
    """``tensor`` with only the kept indices along each axis (as shrink cuts its initializer)."""
    for axis, keep in axes.items():
        tensor = tensor.index_select(axis, torch.as_tensor(keep, device=tensor.device))
    return tensor


def embed(full: Tensor, slim: Tensor, axes: dict[int, np.ndarray]) -> Tensor:
    """``full`` with ``slim`` written at the kept indices: the inverse of ``slice_tensor``."""
    if not axes:
        return slim.to(full.dtype)
    (axis, keep), *rest = axes.items()
    index = torch.as_tensor(keep, device=full.device)
    inner = embed(full.index_select(axis, index), slim, dict(rest))
    return full.index_copy(axis, index, inner)


def slim_optimizer(full: DHSPG, params: dict[str, torch.nn.Parameter], kept: Kept) -> DHSPG:
    """DHSPG without ZIGs over ``params`` (the slim module's), its state the full optimizer's
    with every parameter-shaped buffer (momentum, Adam moments) cut as the parameter is."""
    strangers = sorted(set(params) - set(full.named))
    if strangers:
        raise OnnxotoError(f"slim continuation: the slim graph has parameter '{strangers[0]}' "
                           f"that the full graph does not; run with --no-slim-continuation")
    optimizer = DHSPG(params, build_zig_index([], params), full.options)
    state = full.state_dict()
    full_names = list(full.named)
    by_name = {full_names[index]: slots for index, slots in state["state"].items()}
    carried = {}
    for index, name in enumerate(params):
        shape = full.named[name].shape
        carried[index] = {key: slice_tensor(value, kept.get(name, {})).clone()
                          if torch.is_tensor(value) and value.shape == shape and value.dim()
                          else value for key, value in by_name.get(name, {}).items()}
    empty = torch.zeros(0)
    extra = {**state["dhspg"], "redundant": empty.bool(), "zeroed": empty.bool(),
             "lam": empty, "chosen_norm": empty, "released": True}
    group = {**state["param_groups"][0], "params": list(range(len(params)))}
    optimizer.load_state_dict({"state": {i: s for i, s in carried.items() if s},
                               "param_groups": [group], "dhspg": extra})
    return optimizer


def cut(module: OnnxModule, model: onnx.ModelProto, parts: Partition, optimizer: DHSPG, *,
        seed: int = 0) -> tuple[onnx.ModelProto, ShrinkResult]:
    """The full network's current weights as ONNX (``model`` written back) and its shrink by
    the ZIGs ``optimizer`` holds at zero, validated (onnxruntime, CPU, ``seed``'s inputs).

    Raises ``ValidationMismatch`` when the slim graph does not compute what the full one does."""
    masks = optimizer.zig.masks(zero=optimizer.held_zero)
    trained = write_back(module, model)
    result = shrink(trained, masks, options=ShrinkOptions(seed=seed), result=parts)
    if not result.passed:
        raise ValidationMismatch(f"slim continuation: the slim network differs from the full "
                                 f"one: {result.comparison.summary().splitlines()[0]}")
    return trained, result


def switch(run: Run, epoch: int, log: Log | None = None) -> None:
    """Cut the held ZIGs out of ``run``'s network after ``epoch`` epochs and continue on the slim
    one. Every rank does the same (deterministic) work, so under DDP all switch identically."""
    started = time.perf_counter()
    full = run.optimizer
    trained, result = cut(run.module, run.model, run.parts, full, seed=run.options.seed)
    before, after = measure(trained), measure(result.model)
    summary = {"params": [before.params, after.params], "macs": [before.macs, after.macs]}
    _enter(run, result.model, result.masks, epoch, full.diagnostics(), summary)
    run.optimizer = slim_optimizer(full, run.module.onnx_parameters(), run.slim.kept)
    full.state.clear()  # moved to the slim optimizer; a resumed run has none either
    full.zero_grad(set_to_none=True)
    summary["seconds"] = time.perf_counter() - started
    run.train_seconds += summary["seconds"]
    if log is not None:
        log(f"slim from epoch {epoch + 1}: params {before.params:,} -> {after.params:,}, MACs "
            f"{before.macs:,} -> {after.macs:,} (shrink, validate, bind: "
            f"{summary['seconds']:.2f} s)")


def restore(run: Run, saved: dict[str, Any]) -> None:
    """Rebuild the slim network of a checkpoint (``Slim.to_checkpoint``) into the freshly
    prepared ``run``; the caller then loads the slim module's and optimizer's state."""
    try:
        model = onnx.load_from_string(saved["onnx"])
        masks = {int(gid): keep.cpu().numpy().astype(bool) for gid, keep in
                 saved["masks"].items()}
        run.module.load_state_dict(saved["full_module"])
    except Exception as exc:
        raise OnnxotoError(f"'{run.options.out}': damaged checkpoint (slim network: "
                           f"{one_line(exc)}); run with --overwrite to start again") from exc
    full = run.optimizer
    _enter(run, model, masks, int(saved["epoch"]), dict(saved["diagnostics"]),
           dict(saved["summary"]))
    run.optimizer = slim_optimizer(full, run.module.onnx_parameters(), run.slim.kept)


def _enter(run: Run, model: onnx.ModelProto, masks: dict[int, np.ndarray], epoch: int,
           diagnostics: dict[str, Any], summary: dict[str, Any]) -> None:
    """Bind ``model`` and make it the network ``run`` trains (the optimizer is the caller's)."""
    module = OnnxModule(model).to(run.device)
    run.slim = Slim(epoch=epoch, masks=masks, model=model, kept=kept_indices(run.parts, masks),
                    full_module=run.module, full_optimizer=run.optimizer,
                    diagnostics=diagnostics, summary=summary)
    run.module = module
    run.net = wrap_ddp(module, run.world, run.device)


@torch.no_grad()
def merge_back(slim: Slim, module: OnnxModule) -> tuple[OnnxModule, DHSPG]:
    """The full module with ``module``'s (the slim one's) values in its kept slices, and the
    full optimizer (its ZIG index reads the full module's zeros)."""
    full = slim.full_module.onnx_state_dict()
    for name, value in module.onnx_state_dict().items():
        if name not in full:  # a shape constant shrink added
            continue
        merged = embed(full[name], value, slim.kept.get(name, {}))
        if merged.shape != full[name].shape:
            raise RuntimeError(f"slim continuation: '{name}' is {tuple(value.shape)} in the slim "
                               f"network, which does not fit {tuple(full[name].shape)}")
        full[name].copy_(merged)
    return slim.full_module, slim.full_optimizer
