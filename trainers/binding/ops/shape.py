"""Kernels of shape and layout ops. Int64 shape arithmetic runs on tensors, on the input's
device; Constant is evaluated once, when the module is built."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from trainers.binding.convert import (
    ints,
    optional_input,
    positive_axis,
    tensor_from_proto,
    torch_pads,
)
from trainers.binding.registry import OnnxNode, RunContext, UnsupportedOp, op


@op("Shape", static=None)
def _shape(ctx: RunContext, node: OnnxNode, inputs: list[Tensor | None]) -> list[Tensor]:
    x = inputs[0]
    dims = list(x.shape)[node.attr("start", 0) : node.attr("end")]
    return [torch.tensor(dims, dtype=torch.int64, device=x.device)]


@op("Size", static=None)
def _size(ctx: RunContext, node: OnnxNode, inputs: list[Tensor | None]) -> list[Tensor]:
    x = inputs[0]
    return [torch.tensor(x.numel(), dtype=torch.int64, device=x.device)]


@op("Constant")
def _constant(ctx: RunContext, node: OnnxNode, inputs: list[Tensor | None]) -> list[Tensor]:
    """Evaluated once at construction: the value becomes a parameter or buffer."""
    if "value" in node.attrs:
        return [tensor_from_proto(node.attrs["value"])]
    for key, dtype in (("value_float", torch.float32), ("value_floats", torch.float32),
                       ("value_int", torch.int64), ("value_ints", torch.int64)):
        if key in node.attrs:
            return [torch.tensor(node.attrs[key], dtype=dtype)]
    raise UnsupportedOp(f"Constant '{node.name}': only tensor, float and int values are supported")


@op("ConstantOfShape", static=None)
def _constant_of_shape(
    ctx: RunContext, node: OnnxNode, inputs: list[Tensor | None]
) -> list[Tensor]:
    value = node.attr("value")
    fill = torch.zeros(1) if value is None else tensor_from_proto(value)
    shape = ints(inputs[0])
    return [torch.full(shape, fill.item(), dtype=fill.dtype, device=inputs[0].device)]


@op("Range", static=None)
def _range(ctx: RunContext, node: OnnxNode, inputs: list[Tensor | None]) -> list[Tensor]:
    start, limit, delta = inputs
    return [torch.arange(start.item(), limit.item(), delta.item(), dtype=start.dtype,
                         device=start.device)]


@op("Reshape")
def _reshape(ctx: RunContext, node: OnnxNode, inputs: list[Tensor | None]) -> list[Tensor]:
    x, shape = inputs[0], ints(inputs[1])
    if not node.attr("allowzero", 0):
        shape = [x.shape[i] if v == 0 else v for i, v in enumerate(shape)]
    return [x.reshape(shape)]


@op("Flatten")
def _flatten(ctx: RunContext, node: OnnxNode, inputs: list[Tensor | None]) -> list[Tensor]:
    x = inputs[0]
    axis = positive_axis(node.attr("axis", 1), x.dim())
    return [x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))]


@op("Transpose")
def _transpose(ctx: RunContext, node: OnnxNode, inputs: list[Tensor | None]) -> list[Tensor]:
    x = inputs[0]
    return [x.permute(node.attr("perm") or list(reversed(range(x.dim()))))]


@op("Squeeze")
def _squeeze(ctx: RunContext, node: OnnxNode, inputs: list[Tensor | None]) -> list[Tensor]:
    x = inputs[0]
    axes = node.attr("axes") or ints(optional_input(inputs, 1))
    if not axes:
        return [x.squeeze()]
    return [x.squeeze(tuple(positive_axis(a, x.dim()) for a in axes))]


@op("Unsqueeze")
def _unsqueeze(ctx: RunContext, node: OnnxNode, inputs: list[Tensor | None]) -> list[Tensor]:
    x = inputs[0]
    axes = node.attr("axes") or ints(inputs[1])
    rank = x.dim() + len(axes)
    for axis in sorted(positive_axis(a, rank) for a in axes):
        x = x.unsqueeze(axis)
    return [x]


@op("Concat")
def _concat(ctx: RunContext, node: OnnxNode, inputs: list[Tensor | None]) -> list[Tensor]:
    return [torch.cat([t for t in inputs if t is not None], dim=node.attr("axis"))]


@op("Split")
def _split(ctx: RunContext, node: OnnxNode, inputs: list[Tensor | None]) -> list[Tensor]:
    x = inputs[0]
    axis = positive_axis(node.attr("axis", 0), x.dim())
    sizes = node.attr("split") or ints(optional_input(inputs, 1))
    if not sizes:
        parts, length = node.attr("num_outputs", len(node.outputs)), x.shape[axis]
        chunk = -(-length // parts)
        sizes = [min(chunk, length - i * chunk) for i in range(parts)]
    return list(torch.split(x, sizes, axis))


def _slice_bounds(start: int, end: int, step: int, length: int) -> tuple[int, int]:
    """ONNX Slice clamping: negative indices count from the end, then clip to the axis."""
    start = start + length if start < 0 else start
    end = end + length if end < 0 else end
    if step > 0:
        return min(max(start, 0), length), min(max(end, 0), length)
    return min(max(start, 0), length - 1), min(max(end, -1), length - 1)


@op("Slice")
def _slice(ctx: RunContext, node: OnnxNode, inputs: list[Tensor | None]) -> list[Tensor]:
    x = inputs[0]
    if "starts" in node.attrs:  # opset < 10
        starts, ends, axes, steps = node.attr("starts"), node.attr("ends"), node.attr("axes"), None
    else:
        starts, ends = ints(inputs[1]), ints(inputs[2])
        axes, steps = ints(optional_input(inputs, 3)), ints(optional_input(inputs, 4))
    axes = axes or list(range(len(starts)))
    steps = steps or [1] * len(starts)
    for axis, start, end, step in zip(axes, starts, ends, steps, strict=True):
        axis = positive_axis(axis, x.dim())
        start, end = _slice_bounds(start, end, step, x.shape[axis])
        if step > 0:
            x = x[(slice(None),) * axis + (slice(start, end, step),)]
        else:
            index = torch.tensor(list(range(start, end, step)), dtype=torch.long, device=x.device)
            x = x.index_select(axis, index)
    return [x]


@op("Gather")
def _gather(ctx: RunContext, node: OnnxNode, inputs: list[Tensor | None]) -> list[Tensor]:
    data, index = inputs[0], inputs[1].long()
    axis = positive_axis(node.attr("axis", 0), data.dim())
    index = torch.where(index < 0, index + data.shape[axis], index)
    out = data.index_select(axis, index.reshape(-1))
    return [out.reshape(data.shape[:axis] + index.shape + data.shape[axis + 1 :])]


@op("GatherElements")
def _gather_elements(ctx: RunContext, node: OnnxNode, inputs: list[Tensor | None]) -> list[Tensor]:
    data, index = inputs[0], inputs[1].long()
    axis = positive_axis(node.attr("axis", 0), data.dim())
    index = torch.where(index < 0, index + data.shape[axis], index)
    return [torch.gather(data, axis, index)]


@op("Expand")
def _expand(ctx: RunContext, node: OnnxNode, inputs: list[Tensor | None]) -> list[Tensor]:
    x = inputs[0]
    return [x.expand(torch.broadcast_shapes(x.shape, tuple(ints(inputs[1]))))]


@op("Tile")
def _tile(ctx: RunContext, node: OnnxNode, inputs: list[Tensor | None]) -> list[Tensor]:
    return [inputs[0].repeat(ints(inputs[1]))]


def _pad_index(mode: str, length: int, begin: int, end: int, device: torch.device) -> Tensor:
    """Source index of every padded position along one axis for reflect / edge / wrap."""
    index = torch.arange(-begin, length + end, device=device)
    if mode == "edge":
        return index.clamp(0, length - 1)
    if mode == "wrap":
        return index.remainder(length)
    period = 2 * (length - 1)
    index = index.remainder(period)
    return torch.where(index >= length, period - index, index)


@op("Pad", static=(1, 2, 3))
def _pad(ctx: RunContext, node: OnnxNode, inputs: list[Tensor | None]) -> list[Tensor]:
    x, mode = inputs[0], node.attr("mode", "constant")
    if "pads" in node.attrs:  # opset < 11
        pads, value, axes = node.attr("pads"), node.attr("value", 0.0), None
    else:
        fill = optional_input(inputs, 2)
        pads, axes = ints(inputs[1]), ints(optional_input(inputs, 3))
        value = 0.0 if fill is None or fill.numel() == 0 else fill.item()
    axes = [positive_axis(a, x.dim()) for a in (axes or range(x.dim()))]
    pairs = dict(zip(axes, zip(pads[: len(axes)], pads[len(axes) :], strict=True), strict=True))
    if mode == "constant":
        return [F.pad(x, torch_pads(pairs, x.dim()), value=value)]
    if mode not in ("reflect", "edge", "wrap"):
        raise UnsupportedOp(f"Pad '{node.name}': mode {mode!r} not supported")
    for axis, (begin, end) in pairs.items():
        if begin or end:
            x = x.index_select(axis, _pad_index(mode, x.shape[axis], begin, end, x.device))
    return [x]


@op("DepthToSpace")
def _depth_to_space(ctx: RunContext, node: OnnxNode, inputs: list[Tensor | None]) -> list[Tensor]:
    x, r = inputs[0], node.attr("blocksize")
    n, c, h, w = x.shape
    if node.attr("mode", "DCR") == "CRD":
        y = x.reshape(n, c // (r * r), r, r, h, w).permute(0, 1, 4, 2, 5, 3)
    else:
        y = x.reshape(n, r, r, c // (r * r), h, w).permute(0, 3, 4, 1, 5, 2)
    return [y.reshape(n, c // (r * r), h * r, w * r)]


@op("SpaceToDepth")
def _space_to_depth(ctx: RunContext, node: OnnxNode, inputs: list[Tensor | None]) -> list[Tensor]:
    x, r = inputs[0], node.attr("blocksize")
    n, c, h, w = x.shape
    y = x.reshape(n, c, h // r, r, w // r, r).permute(0, 3, 5, 1, 2, 4)
    return [y.reshape(n, c * r * r, h // r, w // r)]
