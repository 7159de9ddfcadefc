"""Masks on a full model: zero masked channels, read masks off zeros, make magnitude masks.

The reference for every equivalence check is the full model with the removed channels' producer
members set to zero; this module builds it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import onnx
from onnx import numpy_helper

from onnxoto.groups import Group


def tensor_protos(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    """Initializers and Constant-node tensors by name (Constants are named by their output)."""
    protos = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    protos[node.output[0]] = attr.t
    return protos


def replace_tensor(proto: onnx.TensorProto, value: np.ndarray) -> None:
    """Overwrite a tensor proto in place, keeping its name and dtype."""
    new = numpy_helper.from_array(np.asarray(value).astype(numpy_helper.to_array(proto).dtype,
                                                          copy=False), proto.name)
    proto.CopyFrom(new)


def zero_channels(
    model: onnx.ModelProto,
    groups: Iterable[Group],
    masks: Mapping[int, np.ndarray],
    *,
    roles: tuple[str, ...] = ("producer",),
) -> onnx.ModelProto:
    """A copy of ``model`` with the removed channels (mask False) zeroed in members of ``roles``.

    Defaults to producers only: that is what training reaches, and what shrink must match.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    protos = tensor_protos(out)
    values: dict[str, np.ndarray] = {}
    for group in groups:
        keep = masks.get(group.id)
        if keep is None or keep.all():
            continue
        removed = np.nonzero(~np.asarray(keep, dtype=bool))[0]
        for member in group.members:
            if member.role not in roles:
                continue
            if member.initializer not in values:
                values[member.initializer] = numpy_helper.to_array(
                    protos[member.initializer]).copy()
            array = values[member.initializer]
            index = [slice(None)] * array.ndim
            index[member.axis] = member.index_map.indices(removed)
            array[tuple(index)] = 0
    for name, array in values.items():
        replace_tensor(protos[name], array)
    return out


def producer_norms(model: onnx.ModelProto, group: Group, *, order: int = 2) -> np.ndarray:
    """Per-channel norm of the group's producer members (l1 or l2), summed over members."""
    protos = tensor_protos(model)
    total = np.zeros(group.size, dtype=np.float64)
    for member in group.by_role("producer"):
        array = numpy_helper.to_array(protos[member.initializer]).astype(np.float64)
        moved = np.moveaxis(array, member.axis, 0)
        picked = moved[member.index_map.indices(np.arange(group.size))]
        per_channel = np.abs(picked.reshape(group.size, -1))
        if order == 1:
            total += per_channel.sum(axis=1)
        else:
            total += (per_channel ** 2).sum(axis=1)
    return total if order == 1 else np.sqrt(total)


def masks_from_zeros(model: onnx.ModelProto, groups: Iterable[Group], *,
                     tol: float = 0.0) -> dict[int, np.ndarray]:
    """Masks that remove every prunable channel whose producers are all within ``tol`` of 0.

    A group is never emptied: if every channel is zero, its largest channel is kept.
    """
    masks = {}
    for group in groups:
        if not group.prunable:
            continue
        norms = _max_abs(model, group)
        keep = norms > tol
        if not keep.any():
            keep[int(np.argmax(norms))] = True
        if not keep.all():
            masks[group.id] = keep
    return masks


def _max_abs(model: onnx.ModelProto, group: Group) -> np.ndarray:
    protos = tensor_protos(model)
    worst = np.zeros(group.size, dtype=np.float64)
    for member in group.by_role("producer"):
        array = np.moveaxis(numpy_helper.to_array(protos[member.initializer]), member.axis, 0)
        picked = np.abs(array[member.index_map.indices(np.arange(group.size))])
        worst = np.maximum(worst, picked.reshape(group.size, -1).max(axis=1))
    return worst


def magnitude_masks(model: onnx.ModelProto, groups: Iterable[Group], *, ratio: float,
                    criterion: str = "l2") -> dict[int, np.ndarray]:
    """Remove the ``ratio`` share of channels with the smallest producer norm, per group.

    At least one channel of every group is kept. ``criterion`` is "l1" or "l2".
    """
    masks = {}
    for group in groups:
        if not group.prunable:
            continue
        norms = producer_norms(model, group, order=1 if criterion == "l1" else 2)
        remove = min(int(np.floor(group.size * ratio)), group.size - 1)
        if remove <= 0:
            continue
        keep = np.ones(group.size, dtype=bool)
        keep[np.argsort(norms, kind="stable")[:remove]] = False
        masks[group.id] = keep
    return masks
