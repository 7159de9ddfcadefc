"""Masks on a full model: zero masked channels, read masks off zeros, make magnitude masks.

The reference for every equivalence check is the full model with the removed channels' producer
members set to zero; this module builds it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Container, Iterable, Mapping

import numpy as np
import onnx
from onnx import numpy_helper

from onnxoto.files import without_initializers
from onnxoto.groups import Group, Member


def tensor_protos(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    """Initializers and Constant-node tensors by name (Constants are named by their output)."""
    protos = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    protos[node.output[0]] = attr.t
    return protos


# Element types whose raw_data is the numpy array's little-endian bytes as they are (packed
# 4-bit and the like go through numpy_helper.from_array).
PLAIN_TYPES = frozenset({
    onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16,
    onnx.TensorProto.BFLOAT16, onnx.TensorProto.INT8, onnx.TensorProto.INT16,
    onnx.TensorProto.INT32, onnx.TensorProto.INT64, onnx.TensorProto.UINT8,
    onnx.TensorProto.UINT16, onnx.TensorProto.UINT32, onnx.TensorProto.UINT64,
    onnx.TensorProto.BOOL,
})


def write_array(target: onnx.TensorProto, name: str, data_type: int, array: np.ndarray) -> None:
    """Make ``target`` hold ``array`` as a tensor of ``data_type``, field by field: building a
    finished proto and copying it in would hold its bytes twice."""
    dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(data_type))
    array = np.asarray(array).astype(dtype, copy=False)
    target.Clear()
    if data_type not in PLAIN_TYPES:
        target.CopyFrom(numpy_helper.from_array(array, name))
        return
    target.name, target.data_type = name, data_type
    target.dims.extend(array.shape)
    target.raw_data = array.astype(dtype.newbyteorder("<"), copy=False).tobytes()


class Zeroing:
    """The removed channels (mask False) of members in ``roles``: ``name in zeroing`` says
    whether a tensor has any, ``zeroing(name, array)`` zeroes them in a writable array (or a
    memory map of the tensor's bytes) in place.

    The reference of every equivalence check is the model with these channels zeroed; handed to
    onnxruntime as ``runtime.WithTensors(model, zeroing)`` it is written tensor by tensor,
    without a zeroed copy of the model in memory.
    """

    def __init__(self, groups: Iterable[Group], masks: Mapping[int, np.ndarray], *,
                 roles: tuple[str, ...] = ("producer",)) -> None:
        self.cuts: dict[str, list[tuple[Member, np.ndarray]]] = {}
        for group in groups:
            keep = masks.get(group.id)
            if keep is None or keep.all():
                continue
            channels = np.nonzero(~np.asarray(keep, dtype=bool))[0]
            for member in group.members:
                if member.role in roles:
                    self.cuts.setdefault(member.initializer, []).append((member, channels))

    def __contains__(self, name: object) -> bool:
        return name in self.cuts

    def __call__(self, name: str, array: np.ndarray) -> None:
        for member, channels in self.cuts.get(name, ()):
            index = [slice(None)] * array.ndim
            index[member.axis] = member.index_map.indices(channels)
            array[tuple(index)] = 0


def zero_channels(
    model: onnx.ModelProto,
    groups: Iterable[Group],
    masks: Mapping[int, np.ndarray],
    *,
    roles: tuple[str, ...] = ("producer",),
) -> onnx.ModelProto:
    """A copy of ``model`` with the removed channels (mask False) zeroed in members of ``roles``.

    Defaults to producers only: that is what training reaches, and what shrink must match.
    Initializers that change are written once, from their zeroed arrays, rather than copied with
    the model and then replaced: on a VGG-16-sized model nearly every byte is a producer weight.
    """
    zeroing = Zeroing(groups, masks, roles=roles)
    out = without_initializers(model)
    for tensor in model.graph.initializer:
        if tensor.name in zeroing:
            write_array(out.graph.initializer.add(), tensor.name, tensor.data_type,
                        edited(zeroing, tensor.name, tensor))
        else:
            out.graph.initializer.add().CopyFrom(tensor)
    for name, tensor in constant_tensors(out, zeroing.cuts):  # members in Constant nodes
        write_array(tensor, tensor.name, tensor.data_type, edited(zeroing, name, tensor))
    return out


def edited(edit: Callable[[str, np.ndarray], None], name: str,
           tensor: onnx.TensorProto) -> np.ndarray:
    """A writable copy of the tensor's data with ``edit`` applied (the proto's bytes, decoded
    on the way, are freed before this returns)."""
    array = np.array(numpy_helper.to_array(tensor))
    edit(name, array)
    return array


def constant_tensors(model: onnx.ModelProto, names: Container[str],
                     ) -> list[tuple[str, onnx.TensorProto]]:
    """(output name, value tensor) of the Constant nodes whose output is in ``names``: members
    stored as Constants are named by their output."""
    return [(node.output[0], attr.t) for node in model.graph.node
            if node.op_type == "Constant" and node.output[0] in names
            for attr in node.attribute if attr.name == "value"]


def producer_norms(model: onnx.ModelProto, group: Group, *, order: int = 2) -> np.ndarray:
    """Per-channel norm of the group's producer members (l1 or l2), summed over members."""
    return _producer_norms(tensor_protos(model), group, order=order)


def _producer_norms(protos: Mapping[str, onnx.TensorProto], group: Group, *,
                    order: int) -> np.ndarray:
    total = np.zeros(group.size, dtype=np.float64)
    for member in group.by_role("producer"):
        array = numpy_helper.to_array(protos[member.initializer])
        total += channel_reduce(array, member, group.size, "l1" if order == 1 else "sumsq")
    return total if order == 1 else np.sqrt(total)


# Reductions go through the weight in slabs of about this many elements: float32 sums per axis
# index, float64 only on the reduced vector, and no temporary larger than a slab (a whole-weight
# float64 copy and fancy-indexed copies took 7 of 13 s and 4.9 GB on a 553 MB model).
_SLAB_ELEMENTS = 1 << 22


def channel_reduce(array: np.ndarray, member: Member, size: int, kind: str) -> np.ndarray:
    """Per channel of a group of ``size``: "sumsq" (sum of squares), "l1" (sum of |w|) or
    "max" (max |w|) over the member's slice of ``array`` (its block indices included)."""
    per_index = _reduce_axis(array, member.axis, kind)
    picked = per_index[member.index_map.indices(np.arange(size))].reshape(size, -1)
    return picked.max(axis=1) if kind == "max" else picked.sum(axis=1)


def _reduce_axis(array: np.ndarray, axis: int, kind: str) -> np.ndarray:
    """One float64 value per index along ``axis``, reducing every other axis."""
    length = array.shape[axis]
    view = array.reshape(math.prod(array.shape[:axis]), length, -1)
    out = np.zeros(length, dtype=np.float64)
    if view.size == 0:
        return out
    rows = max(1, _SLAB_ELEMENTS // max(1, view.shape[0] * view.shape[2]))
    for start in range(0, length, rows):
        slab = view[:, start:start + rows]
        if slab.dtype != np.float32:
            slab = slab.astype(np.float32)
        if kind == "sumsq":
            part = np.einsum("inj,inj->n", slab, slab)
        elif kind == "l1":
            part = np.abs(slab).sum(axis=(0, 2))
        else:
            part = np.abs(slab).max(axis=(0, 2))
        out[start:start + rows] = part
    return out


def masks_from_zeros(model: onnx.ModelProto, groups: Iterable[Group], *,
                     tol: float = 0.0) -> dict[int, np.ndarray]:
    """Masks that remove every prunable channel whose producers are all within ``tol`` of 0.

    A group is never emptied: if every channel is zero, its largest channel is kept.
    """
    protos = tensor_protos(model)
    masks = {}
    for group in groups:
        if not group.prunable:
            continue
        norms = _max_abs(protos, group)
        keep = norms > tol
        if not keep.any():
            keep[int(np.argmax(norms))] = True
        if not keep.all():
            masks[group.id] = keep
    return masks


def _max_abs(protos: Mapping[str, onnx.TensorProto], group: Group) -> np.ndarray:
    worst = np.zeros(group.size, dtype=np.float64)
    for member in group.by_role("producer"):
        array = numpy_helper.to_array(protos[member.initializer])
        worst = np.maximum(worst, channel_reduce(array, member, group.size, "max"))
    return worst


def magnitude_masks(model: onnx.ModelProto, groups: Iterable[Group], *, ratio: float,
                    criterion: str = "l2") -> dict[int, np.ndarray]:
    """Remove the ``ratio`` share of channels with the smallest producer norm, per group.

    At least one channel of every group is kept. ``criterion`` is "l1" or "l2".
    """
    protos = tensor_protos(model)
    masks = {}
    for group in groups:
        if not group.prunable:
            continue
        norms = _producer_norms(protos, group, order=1 if criterion == "l1" else 2)
        remove = min(int(np.floor(group.size * ratio)), group.size - 1)
        if remove <= 0:
            continue
        keep = np.ones(group.size, dtype=bool)
        keep[np.argsort(norms, kind="stable")[:remove]] = False
        masks[group.id] = keep
    return masks
