"""Resize and Upsample: separable per axis, coordinates exactly as the ONNX spec defines them."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from trainers.binding.convert import ints, optional_input, positive_axis
from trainers.binding.registry import OnnxNode, RunContext, UnsupportedOp, op

_COORDINATES: dict[str, Callable[[Tensor, float, int, int], Tensor]] = {
    "half_pixel": lambda d, s, n, m: (d + 0.5) / s - 0.5,
    "pytorch_half_pixel": lambda d, s, n, m: (d + 0.5) / s - 0.5 if m > 1 else d * 0,
    "align_corners": lambda d, s, n, m: d * (n - 1) / (m - 1) if m > 1 else d * 0,
    "asymmetric": lambda d, s, n, m: d / s,
    "tf_half_pixel_for_nn": lambda d, s, n, m: (d + 0.5) / s,
    "half_pixel_symmetric": lambda d, s, n, m: (
        n / 2 * (1 - m / (s * n)) + (d + 0.5) / s - 0.5
    ),
}
_NEAREST: dict[str, Callable[[Tensor, float], Tensor]] = {
    "round_prefer_floor": lambda x, s: torch.ceil(x - 0.5),
    "round_prefer_ceil": lambda x, s: torch.floor(x + 0.5),
    "floor": lambda x, s: torch.floor(x),
    "ceil": lambda x, s: torch.ceil(x),
    "simple": lambda x, s: torch.ceil(x) if s < 1 else torch.floor(x),  # Upsample
}


def _resize_axis(
    x: Tensor, axis: int, size: int, scale: float, mode: str, coordinates: str, nearest: str
) -> Tensor:
    length = x.shape[axis]
    dst = torch.arange(size, dtype=torch.float64, device=x.device)
    src = _COORDINATES[coordinates](dst, scale, length, size)
    if mode == "nearest":
        return x.index_select(axis, _NEAREST[nearest](src, scale).clamp(0, length - 1).long())
    src = src.clamp(0, length - 1)
    low = src.floor().long()
    high = (low + 1).clamp(max=length - 1)
    shape = [1] * x.dim()
    shape[axis] = size
    weight = (src - low).to(x.dtype).reshape(shape)
    a, b = x.index_select(axis, low), x.index_select(axis, high)
    return a + (b - a) * weight


@op("Resize", "Upsample", static=(1, 2, 3))
def _resize(ctx: RunContext, node: OnnxNode, inputs: list[Tensor | None]) -> list[Tensor]:
    """Nearest and (bi)linear, any coordinate mode except tf_crop_and_resize."""
    x = inputs[0]
    legacy = node.op_type == "Upsample" or ctx.opset < 11
    if legacy:
        scales, sizes = node.attr("scales") or optional_input(inputs, 1), None
    else:
        scales, sizes = optional_input(inputs, 2), optional_input(inputs, 3)
    mode = node.attr("mode", "nearest")
    coordinates = node.attr("coordinate_transformation_mode",
                            "asymmetric" if legacy else "half_pixel")
    nearest = node.attr("nearest_mode", "simple" if node.op_type == "Upsample" else
                        "round_prefer_floor")
    unsupported = (mode not in ("nearest", "linear") or node.attr("antialias", 0)
                   or coordinates not in _COORDINATES
                   or node.attr("keep_aspect_ratio_policy", "stretch") != "stretch")
    if unsupported:
        raise UnsupportedOp(f"Resize '{node.name}': mode {mode!r} / {coordinates!r} / antialias "
                            "/ keep_aspect_ratio_policy not supported")
    axes = [positive_axis(a, x.dim()) for a in node.attr("axes", range(x.dim()))]
    if sizes is not None and sizes.numel():
        out = ints(sizes)
        factors = [o / x.shape[a] for o, a in zip(out, axes, strict=True)]
    else:
        factors = [float(s) for s in (scales.reshape(-1).tolist()
                                      if isinstance(scales, Tensor) else scales)]
        out = [math.floor(x.shape[a] * s) for a, s in zip(axes, factors, strict=True)]
    for axis, size, scale in zip(axes, out, factors, strict=True):
        if size != x.shape[axis] or scale != 1.0:
            x = _resize_axis(x, axis, size, scale, mode, coordinates, nearest)
    return [x]
