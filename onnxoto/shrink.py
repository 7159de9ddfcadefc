"""Delete masked channels from the graph and prove the slim model computes the same function.

Initializers are sliced member by member (index maps included); the rules fix the attributes
and shape constants of their nodes; stale intermediate shapes are dropped and re-inferred. The
reference for validation is the full model with the removed channels' producers set to zero.

The rewriting works on the protobuf, not through onnx-graphsurgeon. A graphsurgeon round trip
(import, slice the Constants, ``cleanup().toposort()``, export) was measured beside it on
ResNet-50 and a VGG-16-sized model (benchmarks/shrink_rewriter.py, results/shrink_rewriter.md):
neither was faster beyond the noise, the round trip only saves the one model copy that protobuf
slicing makes (validation and partitioning, not slicing, set the peak memory), and graphsurgeon
sees Constant-node weights as Variables it cannot slice. The rules' edits are a few attributes
and shape constants, which protobuf does in place, so the switch would buy no measured gain.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from onnxoto import runtime
from onnxoto.canonical import canonicalize
from onnxoto.files import (  # noqa: F401  (moved to files.py; old imports keep working)
    EXTERNAL_DATA_LIMIT,
    save_model,
    uses_external_data,
    without_initializers,
)
from onnxoto.graph import GraphView, ModelLike, infer_shapes, light_copy, load_model
from onnxoto.groups import check_masks
from onnxoto.masking import Zeroing, constant_tensors, producer_norms, write_array
from onnxoto.partition import Partition, opset_of, partition
from onnxoto.rules import rule_for
from onnxoto.validate import CompareOptions, Comparison, check, record


@dataclass(frozen=True)
class ShrinkOptions:
    """How to shrink. Defaults: keep exact counts, validate with 3 seeded samples at the
    tolerances of each output's dtype (``rtol``/``atol`` None; see validate.DEFAULT_TOLERANCES)."""

    round_to: int = 1
    validate: bool = True
    samples: int = 3
    seed: int = 0
    rtol: float | None = None
    atol: float | None = None
    dynamic_dim: int = 1
    input_shapes: Mapping[str, tuple[int, ...]] | None = None


@dataclass
class ChannelChange:
    """One group's channel count before and after, named by its first producer."""

    group: int
    layer: str
    before: int
    after: int


@dataclass
class ShrinkResult:
    model: onnx.ModelProto
    masks: dict[int, np.ndarray]
    changes: list[ChannelChange] = field(default_factory=list)
    comparison: Comparison | None = None

    @property
    def passed(self) -> bool:
        return self.comparison is None or self.comparison.passed


def normalize_masks(raw: Mapping, result: Partition, *, source: str = "masks") -> dict:
    """Accept {group id: keep} or {"g<id>": keep}; check every mask against the groups."""
    named = {(k if isinstance(k, str) else f"g{int(k)}"): v for k, v in raw.items()}
    return check_masks(named, result.groups, source=source)


def round_masks(model: onnx.ModelProto, result: Partition, masks: Mapping[int, np.ndarray],
                multiple: int) -> dict[int, np.ndarray]:
    """Keep channel counts at multiples of ``multiple`` (tensor cores like 8) by keeping back
    the largest-norm removed channels. Groups smaller than ``multiple`` stay whole."""
    if multiple <= 1:
        return dict(masks)
    rounded = {}
    for gid, keep in masks.items():
        group = result.groups[gid]
        target = min(group.size, -(-int(keep.sum()) // multiple) * multiple)
        keep = keep.copy()
        missing = target - int(keep.sum())
        if missing > 0:
            norms = producer_norms(model, group)
            removed = np.nonzero(~keep)[0]
            keep[removed[np.argsort(-norms[removed], kind="stable")[:missing]]] = True
        if not keep.all():
            rounded[gid] = keep
    return rounded


def shrink(model: ModelLike, masks: Mapping, *, options: ShrinkOptions = ShrinkOptions(),
           result: Partition | None = None) -> ShrinkResult:
    """Delete the channels that ``masks`` remove (False = remove) and validate the slim model.

    ``masks`` maps group ids (or "g<id>") to boolean keep vectors; groups not listed are kept.
    """
    # The canonical graph (deterministic names, so a given ``result`` matches it) is what is
    # sliced and what the slim model is; a partition's own model is that graph already, loaded
    # and checked.
    if result is not None and model is result.model:
        full = result.model
    else:
        full = canonicalize(load_model(model), in_place=not isinstance(model, onnx.ModelProto))
    result = result or partition(full)
    masks = round_masks(full, result, normalize_masks(masks, result), options.round_to)
    recording = None
    if options.validate:  # the reference runs (and its session goes) before the slim model exists
        recording = record(runtime.WithTensors(full, Zeroing(result.groups, masks)),
                           compare_options(options))
    slim = slice_model(full, result, masks)
    changes = [ChannelChange(gid, _layer_name(result, gid), result.groups[gid].size,
                             int(keep.sum())) for gid, keep in sorted(masks.items())]
    comparison = None if recording is None else check(recording, slim)
    return ShrinkResult(model=slim, masks=masks, changes=changes, comparison=comparison)


def compare_options(options: ShrinkOptions) -> CompareOptions:
    """How shrink's validation compares the slim model with the zeroed full one."""
    return CompareOptions(samples=options.samples, seed=options.seed, rtol=options.rtol,
                          atol=options.atol, dynamic_dim=options.dynamic_dim,
                          shapes=options.input_shapes)


def _layer_name(result: Partition, gid: int) -> str:
    producers = result.groups[gid].by_role("producer")
    return producers[0].node if producers else f"group {gid}"


def slice_model(full: onnx.ModelProto, result: Partition,
                masks: Mapping[int, np.ndarray]) -> onnx.ModelProto:
    """The graph surgery itself: slice members, let rules fix their nodes, re-infer shapes."""
    slim = _sliced_copy(full, removed_indices(result, masks))
    _drop_initializer_inputs(slim)
    if slim.ir_version < 4:
        _declare_initializer_inputs(slim)
    rewrite_nodes(slim, result, masks, opset=opset_of(full))
    _refresh_shapes(slim)
    try:
        onnx.checker.check_model(light_copy(slim), full_check=False)
    except Exception as exc:  # a bug of ours, not the user's input: say so plainly
        raise RuntimeError(f"shrink produced an invalid model: {exc}") from exc
    return slim


def rewrite_nodes(slim: onnx.ModelProto, result: Partition, masks: Mapping[int, np.ndarray],
                  *, opset: int) -> None:
    """Let each changed node's rule fix its attributes and shape constants (in place)."""
    slot_keep = result.slot_keep(masks)
    used_names = {t.name for t in slim.graph.initializer} | {
        o for n in slim.graph.node for o in n.output}
    for node in slim.graph.node:
        edit = NodeEdit(node, slim, result, slot_keep, used_names)
        rule = rule_for(node, opset)
        if rule is not None and edit.changed:
            rule.rewrite(node, edit)


def _drop_initializer_inputs(model: onnx.ModelProto) -> None:
    """Weights listed as graph inputs (keep_initializers_as_inputs) were treated as constants;
    their declared shapes would be stale after slicing, so the slim model lists them no more."""
    names = {t.name for t in model.graph.initializer}
    kept = [i for i in model.graph.input if i.name not in names]
    if len(kept) != len(model.graph.input):
        del model.graph.input[:]
        model.graph.input.extend(kept)


def _declare_initializer_inputs(model: onnx.ModelProto) -> None:
    """IR version 3 requires every initializer to be a graph input: list them again, with the
    shapes they have after slicing."""
    model.graph.input.extend(
        onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
        for t in model.graph.initializer)


def removed_indices(result: Partition, masks: Mapping[int, np.ndarray],
                    ) -> dict[str, dict[int, list[int]]]:
    """Initializer -> axis -> the sorted indices the masks delete (members of several groups
    collect every group's)."""
    removed: dict[str, dict[int, set[int]]] = {}
    for gid, keep in masks.items():
        gone = np.nonzero(~np.asarray(keep, dtype=bool))[0]
        for member in result.groups[gid].members:
            axes = removed.setdefault(member.initializer, {})
            axes.setdefault(member.axis, set()).update(member.index_map.indices(gone).tolist())
    return {name: {axis: sorted(ix) for axis, ix in axes.items()}
            for name, axes in removed.items()}


def _sliced_copy(full: onnx.ModelProto, removed: dict[str, dict[int, list[int]]],
                 ) -> onnx.ModelProto:
    """A copy of ``full`` whose initializers lose the ``removed`` indices, each written once
    from its sliced array: copying the whole model first and then replacing tensors would hold
    the full model's bytes a second time."""
    slim = without_initializers(full)
    for tensor in full.graph.initializer:
        axes = removed.get(tensor.name)
        if axes is None:
            slim.graph.initializer.add().CopyFrom(tensor)
        else:
            write_array(slim.graph.initializer.add(), tensor.name, tensor.data_type,
                        _sliced(tensor, axes))
    for name, tensor in constant_tensors(slim, removed):
        write_array(tensor, tensor.name, tensor.data_type, _sliced(tensor, removed[name]))
    return slim


def _sliced(tensor: onnx.TensorProto, axes: dict[int, list[int]]) -> np.ndarray:
    """The tensor without the given indices per axis: ``np.take`` of the kept ones copies only
    what stays, where ``np.delete`` with an index list is several times slower."""
    array = numpy_helper.to_array(tensor)
    for axis, indices in axes.items():
        keep = np.ones(array.shape[axis], dtype=bool)
        keep[indices] = False
        array = np.take(array, np.flatnonzero(keep), axis=axis)
    return array


def _refresh_shapes(model: onnx.ModelProto) -> None:
    """Drop every intermediate shape (they are stale) and put back freshly inferred ones."""
    del model.graph.value_info[:]
    boundary = {i.name for i in model.graph.input} | {o.name for o in model.graph.output}
    inferred = infer_shapes(model)
    model.graph.value_info.extend(v for v in inferred.graph.value_info if v.name not in boundary)


class NodeEdit:
    """What a rule may read and change on its node while shrinking (see rules.base.Edit)."""

    def __init__(self, node: onnx.NodeProto, model: onnx.ModelProto, result: Partition,
                 slot_keep: np.ndarray, used_names: set[str]) -> None:
        self.node, self.model, self.result = node, model, result
        self.view: GraphView = result.view
        self.slot_keep = slot_keep
        self.used_names = used_names

    @property
    def changed(self) -> bool:
        return any(self.keep(n) is not None and not self.keep(n).all()
                   for n in list(self.node.input) + list(self.node.output) if n)

    def keep(self, tensor: str) -> np.ndarray | None:
        space = self.result.spaces.get(tensor)
        return None if space is None else self.slot_keep[space.slots]

    def kept_count(self, tensor: str) -> int | None:
        keep = self.keep(tensor)
        return None if keep is None else int(keep.sum())

    def axis(self, tensor: str) -> int | None:
        space = self.result.spaces.get(tensor)
        return None if space is None else space.axis

    def rank(self, tensor: str) -> int | None:
        return self.view.rank(tensor)

    def const(self, name: str) -> np.ndarray | None:
        return self.view.const(name)

    def set_attr(self, name: str, value) -> None:
        for attr in self.node.attribute:
            if attr.name == name:
                self.node.attribute.remove(attr)
                break
        self.node.attribute.append(onnx.helper.make_attribute(name, value))

    def drop_attr(self, name: str) -> None:
        for attr in list(self.node.attribute):
            if attr.name == name:
                self.node.attribute.remove(attr)

    def set_input_const(self, index: int, value: np.ndarray) -> None:
        """Point input ``index`` at a new initializer holding ``value`` (never edits a shared
        constant in place: other nodes may read it)."""
        name = self._fresh_name(f"{self.node.name or self.node.op_type}_{index}_shrunk")
        self.model.graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
        while len(self.node.input) <= index:
            self.node.input.append("")
        self.node.input[index] = name

    add_input_const = set_input_const

    def _fresh_name(self, base: str) -> str:
        name, n = base, 0
        while name in self.used_names:
            n += 1
            name = f"{base}_{n}"
        self.used_names.add(name)
        return name
