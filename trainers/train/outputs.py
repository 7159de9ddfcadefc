"""The end of a run: trained.onnx, masks.npz, slim.onnx (validated) and metrics.json, with
accuracies measured in onnxruntime; the closing table's rows."""

from __future__ import annotations

import json
import math
import time
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from onnxoto.errors import OnnxotoError
from onnxoto.files import write_bytes_atomic
from onnxoto.masking import zero_channels
from onnxoto.metrics import measure
from onnxoto.runtime import session
from trainers.api import ValidationMismatch, write_models
from trainers.binding import write_back
from trainers.train.options import EVAL_BATCH, FILES, FORMAT, Log
from trainers.train.prepare import Run
from trainers.train.slim import merge_back
from trainers.zig import ZigIndex


def _dynamic_batch(model: onnx.ModelProto) -> onnx.ModelProto:
    """Copy whose graph inputs and outputs take any batch, so onnxruntime can run big batches;
    ``prepare`` already ran the graph with a batch of 2."""
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
    """Class predictions (argmax of the single output) of ``model`` in onnxruntime (CPU), on
    as many threads as torch trains with: a run held to N threads stays on N for its test."""
    runner = session(_dynamic_batch(model), threads=torch.get_num_threads())
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


def _zeroed_predictions(trained: onnx.ModelProto, run: Run, masks: dict[int, np.ndarray],
                        trained_pred: np.ndarray) -> np.ndarray:
    """Predictions of ``trained`` with the masks' producer channels set to zero. When those are
    exact zeros already (the masks come from them), the zeroed weights equal the trained ones
    and so do the predictions: the test pass, as costly as the trained model's, is skipped."""
    zeroed = zero_channels(trained, run.parts.groups, masks)
    same = all(np.array_equal(numpy_helper.to_array(a), numpy_helper.to_array(b))
               for a, b in zip(_stored(trained), _stored(zeroed), strict=True))
    return trained_pred if same else onnx_predictions(zeroed, run.test.x)


def _stored(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    """Initializers, then Constant nodes' values: every tensor ``zero_channels`` may edit."""
    constants = [attr.t for node in model.graph.node if node.op_type == "Constant"
                 for attr in node.attribute if attr.name == "value"]
    return [*model.graph.initializer, *constants]


def _ratio(before: int, after: int) -> dict[str, Any]:
    return {"input": before, "slim": after,
            "slim_over_input": after / before if before else None}


def _target_reached(zig: ZigIndex, target: float) -> bool:
    """Whether as many groups are zero as DHSPG's redundant set holds (floor of the target
    share of all groups, see ``DHSPG._select``)."""
    zeros = round(zig.zero_fraction() * zig.num_groups)
    return zeros >= math.floor(zig.num_groups * target)


def _slim_record(run: Run) -> dict[str, Any]:
    """When the run switched to the slim network, what that cost and bought: epoch seconds
    before and after (means over this process's epochs of each kind), params and MACs."""
    if run.slim is None:
        return {"enabled": run.options.slim_continuation, "switch_epoch": None}
    seconds = {kind: [h["epoch_seconds"] for h in run.history
                      if "epoch_seconds" in h and h.get("slim", False) == (kind == "slim")]
               for kind in ("full", "slim")}
    summary = run.slim.summary
    return {"enabled": True, "switch_epoch": run.slim.epoch + 1,
            "params": _ratio(*summary["params"]), "macs": _ratio(*summary["macs"]),
            "switch_seconds": summary.get("seconds"),
            "epoch_seconds": {kind: sum(v) / len(v) if v else None
                              for kind, v in seconds.items()}}


def finish(run: Run, wall_started: float, log: Log) -> dict[str, Any]:
    """Write trained.onnx, masks.npz, slim.onnx and metrics.json; returns the metrics. A target
    not reached is a warning (the models are still right, only less pruned than asked), said in
    the log and recorded as ``target_reached``."""
    out = run.options.out
    module, optimizer = (run.module, run.optimizer) if run.slim is None else merge_back(
        run.slim, run.module)
    trained = write_back(module, run.model)
    saved = write_models(trained, out, seed=run.options.seed, parts=run.parts)
    masks, result = saved.masks, saved.result
    full_pred = onnx_predictions(trained, run.test.x)
    zeroed_pred = _zeroed_predictions(trained, run, result.masks, full_pred)
    slim_pred = onnx_predictions(result.model, run.test.x)
    slim_right = slim_pred == run.test.y
    before, after = measure(run.model_path), measure(result.model)
    # A MAC budget (woodfisher --target-macs) is reached by slim.onnx's MACs, not by a share
    # of zero groups (that target is 0 then).
    target_macs = getattr(run.options, "target_macs", None)
    reached = (after.macs <= target_macs * before.macs if target_macs is not None
               else _target_reached(optimizer.zig, run.options.target))
    channels = sum(g.size for g in run.parts.prunable)
    removed = sum(int((~keep).sum()) for keep in masks.values())
    metrics = {
        "format": FORMAT,
        "method": run.options.method,
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
        "group_sparsity": optimizer.zig.zero_fraction(),
        "target_group_sparsity": run.options.target,
        "target_reached": reached,
        "slim_continuation": _slim_record(run),
        "channels": {"prunable": channels, "removed": removed},
        "validation": result.comparison.to_dict() if result.comparison else None,
        "train_seconds": run.train_seconds,  # summed over every resumed segment
        "wall_seconds": time.perf_counter() - wall_started,  # this process only
        "resumed_at_epoch": run.start_epoch,  # 0: trained in one process
        "files": dict(FILES),
        "history": run.history,
    }
    write_bytes_atomic(out / FILES["metrics"], (json.dumps(metrics, indent=1) + "\n").encode())
    if not reached and target_macs is not None:
        log(f"warning: slim.onnx keeps {after.macs / before.macs:.1%} of the MACs, above the "
            f"target {target_macs:.1%}; raise --max-group-share or lower the target")
    elif not reached:
        log(f"warning: group sparsity {metrics['group_sparsity']:.1%} is short of the target "
            f"{run.options.target:.1%} after {run.options.epochs} epochs; train longer "
            f"(--epochs), start pruning sooner (--warmup-epochs) or zero groups sooner "
            f"(--epsilon)")
    if metrics["accuracy"]["prediction_mismatches"]:
        raise ValidationMismatch(f"trained and slim models disagree on "
                                 f"{metrics['accuracy']['prediction_mismatches']} test samples "
                                 f"(see {out / FILES['metrics']})")
    return metrics


def summary_rows(metrics: dict[str, Any]) -> list[list[object]]:
    """Rows (metric, full, slim, slim/full) for the closing table."""
    acc = metrics["accuracy"]
    rows: list[list[object]] = [["test accuracy", f"{acc['trained']:.2%}", f"{acc['slim']:.2%}",
                                 None]]
    for name, key in (("params", "params"), ("MACs", "macs")):
        entry = metrics[key]
        rows.append([name, entry["input"], entry["slim"], entry["slim_over_input"]])
    return rows
