"""Kernels of layer ops: Gemm and Einsum, convolution, pooling, normalization, softmax and
reductions. Pads follow ONNX (``pads`` or ``auto_pad``) and are applied explicitly where torch
cannot take them as an argument."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from trainers.binding.convert import ints, optional_input, positive_axis, torch_pads
from trainers.binding.registry import OnnxNode, OpFn, RunContext, UnsupportedOp, op


@op("Gemm")
def _gemm(ctx: RunContext, node: OnnxNode, inputs: list[Tensor | None]) -> list[Tensor]:
    a, b, c = inputs[0], inputs[1], optional_input(inputs, 2)
    a = a.t() if node.attr("transA", 0) else a
    b = b.t() if node.attr("transB", 0) else b
    alpha, beta = node.attr("alpha", 1.0), node.attr("beta", 1.0)
    y = a @ b if alpha == 1.0 else alpha * (a @ b)
    if c is not None:
        y = y + (c if beta == 1.0 else beta * c)
    return [y]


@op("Einsum")
def _einsum(ctx: RunContext, node: OnnxNode, inputs: list[Tensor | None]) -> list[Tensor]:
    return [torch.einsum(node.attr("equation"), *inputs)]


def _window_pads(
    node: OnnxNode, spatial: Sequence[int], kernel: Sequence[int], strides: Sequence[int],
    dilations: Sequence[int],
) -> list[tuple[int, int]]:
    """(begin, end) pads per spatial axis from ``pads`` or ``auto_pad`` (Conv and pools)."""
    auto = node.attr("auto_pad", "NOTSET")
    rank = len(spatial)
    if auto == "VALID":
        return [(0, 0)] * rank
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads = []
        for size, k, s, d in zip(spatial, kernel, strides, dilations, strict=True):
            total = max(0, (-(-size // s) - 1) * s + (k - 1) * d + 1 - size)
            small = total // 2
            pads.append((small, total - small) if auto == "SAME_UPPER" else (total - small, small))
        return pads
    flat = node.attr("pads", [0] * (2 * rank))
    return list(zip(flat[:rank], flat[rank:], strict=True))


def _apply_pads(
    x: Tensor, pads: list[tuple[int, int]], value: float, limits: Sequence[int] | None = None
) -> tuple[Tensor, list[int]]:
    """Pads torch can take as an argument (symmetric, within ``limits``), else padded explicitly."""
    native = all(b == e for b, e in pads) and (
        limits is None or all(b <= lim for (b, _), lim in zip(pads, limits, strict=True))
    )
    if native:
        return x, [b for b, _ in pads]
    spatial = {axis + 2: pad for axis, pad in enumerate(pads)}
    return F.pad(x, torch_pads(spatial, x.dim()), value=value), [0] * len(pads)


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
_MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVG_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


def _spatial_attrs(node: OnnxNode, rank: int) -> tuple[list[int], list[int]]:
    return node.attr("strides", [1] * rank), node.attr("dilations", [1] * rank)


@op("Conv")
def _conv(ctx: RunContext, node: OnnxNode, inputs: list[Tensor | None]) -> list[Tensor]:
    x, w, b = inputs[0], inputs[1], optional_input(inputs, 2)
    rank = w.dim() - 2
    strides, dilations = _spatial_attrs(node, rank)
    pads = _window_pads(node, x.shape[2:], w.shape[2:], strides, dilations)
    x, padding = _apply_pads(x, pads, 0.0)
    return [_CONV[rank](x, w, b, strides, padding, dilations, node.attr("group", 1))]


def _transpose_pads(
    node: OnnxNode, spatial: Sequence[int], full: Sequence[int], extra: Sequence[int],
    strides: Sequence[int],
) -> list[tuple[int, int]]:
    """ConvTranspose crop per axis: from ``pads``, or derived from output_shape / auto_pad.

    The odd pixel goes to the tail for SAME_UPPER, else to the head, as onnxruntime does.
    """
    auto = node.attr("auto_pad", "NOTSET")
    target = node.attr("output_shape")
    if target is None and auto in ("SAME_UPPER", "SAME_LOWER"):
        target = [size * s for size, s in zip(spatial, strides, strict=True)]
    if target is None:
        return _window_pads(node, spatial, [1] * len(spatial), strides, [1] * len(spatial))
    pads = []
    for length, extra_pad, want in zip(full, extra, target[-len(full):], strict=True):
        total = length + extra_pad - want
        half = total // 2
        pads.append((half, total - half) if auto == "SAME_UPPER" else (total - half, half))
    return pads


@op("ConvTranspose")
def _conv_transpose(ctx: RunContext, node: OnnxNode, inputs: list[Tensor | None]) -> list[Tensor]:
    x, w, b = inputs[0], inputs[1], optional_input(inputs, 2)
    rank = w.dim() - 2
    strides, dilations = _spatial_attrs(node, rank)
    extra = node.attr("output_padding", [0] * rank)
    y = _CONV_T[rank](x, w, None, strides, 0, 0, node.attr("group", 1), dilations)
    pads = _transpose_pads(node, x.shape[2:], y.shape[2:], extra, strides)
    crop = {
        axis + 2: (-begin, out_pad - end)
        for axis, ((begin, end), out_pad) in enumerate(zip(pads, extra, strict=True))
    }
    y = F.pad(y, torch_pads(crop, y.dim()))
    if b is not None:
        y = y + b.reshape((1, -1) + (1,) * rank)
    return [y]


@op("MaxPool")
def _max_pool(ctx: RunContext, node: OnnxNode, inputs: list[Tensor | None]) -> list[Tensor]:
    if node.attr("storage_order", 0) or (len(node.outputs) > 1 and node.outputs[1]):
        raise UnsupportedOp(f"MaxPool '{node.name}': Indices output / storage_order not supported")
    x, kernel = inputs[0], node.attr("kernel_shape")
    strides, dilations = _spatial_attrs(node, len(kernel))
    pads = _window_pads(node, x.shape[2:], kernel, strides, dilations)
    x, padding = _apply_pads(x, pads, -math.inf, [k // 2 for k in kernel])
    pool = _MAX_POOL[len(kernel)]
    return [pool(x, kernel, strides, padding, dilations, ceil_mode=bool(node.attr("ceil_mode", 0)))]


@op("AveragePool")
def _average_pool(ctx: RunContext, node: OnnxNode, inputs: list[Tensor | None]) -> list[Tensor]:
    x, kernel = inputs[0], node.attr("kernel_shape")
    strides, dilations = _spatial_attrs(node, len(kernel))
    if any(d != 1 for d in dilations):
        raise UnsupportedOp(f"AveragePool '{node.name}': dilations are not supported")
    pads = _window_pads(node, x.shape[2:], kernel, strides, dilations)
    include = bool(node.attr("count_include_pad", 0))
    pool = functools.partial(
        _AVG_POOL[len(kernel)], kernel_size=kernel, stride=strides,
        ceil_mode=bool(node.attr("ceil_mode", 0)),
    )
    padded, padding = _apply_pads(x, pads, 0.0, [k // 2 for k in kernel])
    if padded is x or include:
        return [pool(padded, padding=padding, count_include_pad=include)]
    # asymmetric pads that must not count: divide window sums by window sizes
    ones, _ = _apply_pads(torch.ones_like(x[:1, :1]), pads, 0.0, [-1] * len(kernel))
    return [pool(padded, padding=0) / pool(ones, padding=0)]


@op("GlobalAveragePool")
def _global_average_pool(
    ctx: RunContext, node: OnnxNode, inputs: list[Tensor | None]
) -> list[Tensor]:
    x = inputs[0]
    return [x.mean(dim=tuple(range(2, x.dim())), keepdim=True)]


@op("GlobalMaxPool")
def _global_max_pool(ctx: RunContext, node: OnnxNode, inputs: list[Tensor | None]) -> list[Tensor]:
    x = inputs[0]
    return [x.amax(dim=tuple(range(2, x.dim())), keepdim=True)]


@op("GlobalLpPool")
def _global_lp_pool(ctx: RunContext, node: OnnxNode, inputs: list[Tensor | None]) -> list[Tensor]:
    x = inputs[0]
    dims = tuple(range(2, x.dim()))
    return [torch.linalg.vector_norm(x, node.attr("p", 2), dims, keepdim=True)]


@op("LpNormalization")
def _lp_normalization(
    ctx: RunContext, node: OnnxNode, inputs: list[Tensor | None]
) -> list[Tensor]:
    x = inputs[0]
    norm = torch.linalg.vector_norm(x, node.attr("p", 2), node.attr("axis", -1), keepdim=True)
    return [x / norm]


@op("MeanVarianceNormalization")
def _mean_variance_normalization(
    ctx: RunContext, node: OnnxNode, inputs: list[Tensor | None]
) -> list[Tensor]:
    """ONNX's function body: (x - mean) / (sqrt(E[x^2] - mean^2) + 1e-9) over ``axes``."""
    x = inputs[0]
    axes = tuple(node.attr("axes", [0, 2, 3]))
    mean = x.mean(axes, keepdim=True)
    std = ((x * x).mean(axes, keepdim=True) - mean * mean).sqrt()
    return [(x - mean) / (std + 1e-9)]


@op("Hardmax", static=None)
def _hardmax(ctx: RunContext, node: OnnxNode, inputs: list[Tensor | None]) -> list[Tensor]:
    x = inputs[0]
    axis = positive_axis(node.attr("axis", -1), x.dim())
    hot = F.one_hot(x.argmax(axis), x.shape[axis]).to(x.dtype)
    return [hot.movedim(-1, axis)]


@op("BatchNormalization", static=(3, 4))
def _batch_norm(ctx: RunContext, node: OnnxNode, inputs: list[Tensor | None]) -> list[Tensor]:
    """Train mode: batch statistics, running stats updated in place like torch.

    ONNX momentum m keeps m of the old value; torch's momentum is the new value's weight, 1 - m.
    """
    x, scale, bias, mean, var = inputs[:5]
    eps = node.attr("epsilon", 1e-5)
    if not ctx.training:
        return [F.batch_norm(x, mean, var, scale, bias, False, 0.0, eps), mean, var]
    tracked = node.inputs[3] in ctx.state and node.inputs[4] in ctx.state
    running = (mean, var) if tracked else (None, None)
    momentum = 1.0 - node.attr("momentum", 0.9)
    return [F.batch_norm(x, *running, scale, bias, True, momentum, eps), mean, var]


@op("InstanceNormalization")
def _instance_norm(ctx: RunContext, node: OnnxNode, inputs: list[Tensor | None]) -> list[Tensor]:
    x, scale, bias = inputs[:3]
    return [F.instance_norm(x, weight=scale, bias=bias, eps=node.attr("epsilon", 1e-5))]


@op("LayerNormalization")
def _layer_norm(ctx: RunContext, node: OnnxNode, inputs: list[Tensor | None]) -> list[Tensor]:
    x, scale, bias = inputs[0], inputs[1], optional_input(inputs, 2)
    axis = positive_axis(node.attr("axis", -1), x.dim())
    shape, eps = x.shape[axis:], node.attr("epsilon", 1e-5)
    if scale.shape == shape and (bias is None or bias.shape == shape):
        y = F.layer_norm(x, shape, scale, bias, eps)
    else:  # broadcastable scale/bias
        y = F.layer_norm(x, shape, None, None, eps) * scale
        y = y if bias is None else y + bias
    if len(node.outputs) == 1:
        return [y]
    dims = tuple(range(axis, x.dim()))
    mean = x.mean(dims, keepdim=True)
    inv_std = torch.rsqrt(x.var(dims, unbiased=False, keepdim=True) + eps)
    return [y, mean, inv_std]


@op("GroupNormalization")
def _group_norm(ctx: RunContext, node: OnnxNode, inputs: list[Tensor | None]) -> list[Tensor]:
    """Opset 18 gives scale/bias per group, opset 21 per channel: both are accepted."""
    x, scale, bias = inputs[:3]
    groups, channels = node.attr("num_groups"), x.shape[1]
    if scale.numel() != channels:
        scale = scale.repeat_interleave(channels // groups)
        bias = bias.repeat_interleave(channels // groups)
    return [F.group_norm(x, groups, scale, bias, node.attr("epsilon", 1e-5))]


def _softmax_like(fn: Callable[[Tensor, int], Tensor]) -> OpFn:
    """Opset >= 13 normalizes one axis; older opsets flatten to 2-D at ``axis`` first."""

    def run(ctx: RunContext, node: OnnxNode, inputs: list[Tensor | None]) -> list[Tensor]:
        x = inputs[0]
        if ctx.opset >= 13:
            return [fn(x, node.attr("axis", -1))]
        axis = positive_axis(node.attr("axis", 1), x.dim())
        return [fn(x.reshape(math.prod(x.shape[:axis]), -1), 1).reshape(x.shape)]

    return run


op("Softmax")(_softmax_like(torch.softmax))
op("LogSoftmax")(_softmax_like(torch.log_softmax))


def _reduction(fn: Callable[[Tensor, tuple[int, ...], bool], Tensor]) -> OpFn:
    """Axes come from the attribute (older opsets) or the second input (newer ones)."""

    def run(ctx: RunContext, node: OnnxNode, inputs: list[Tensor | None]) -> list[Tensor]:
        x = inputs[0]
        axes = node.attr("axes") or ints(optional_input(inputs, 1))
        if not axes:
            if node.attr("noop_with_empty_axes", 0):
                return [x]
            axes = range(x.dim())
        dims = tuple(sorted(positive_axis(a, x.dim()) for a in axes))
        return [fn(x, dims, bool(node.attr("keepdims", 1)))]

    return run


def _prod(x: Tensor, dims: tuple[int, ...], keep: bool) -> Tensor:
    for dim in reversed(dims):
        x = x.prod(dim, keepdim=keep)
    return x


_REDUCTIONS: dict[str, Callable[[Tensor, tuple[int, ...], bool], Tensor]] = {
    "ReduceMean": lambda x, d, k: x.mean(d, keepdim=k),
    "ReduceSum": lambda x, d, k: x.sum(d, keepdim=k),
    "ReduceMax": lambda x, d, k: x.amax(d, keepdim=k),
    "ReduceMin": lambda x, d, k: x.amin(d, keepdim=k),
    "ReduceProd": _prod,
    "ReduceL1": lambda x, d, k: x.abs().sum(d, keepdim=k),
    "ReduceL2": lambda x, d, k: torch.linalg.vector_norm(x, 2, d, keepdim=k),
    "ReduceSumSquare": lambda x, d, k: (x * x).sum(d, keepdim=k),
    "ReduceLogSum": lambda x, d, k: x.sum(d, keepdim=k).log(),
    "ReduceLogSumExp": lambda x, d, k: torch.logsumexp(x, d, keepdim=k),
}
for _op_type, _fn in _REDUCTIONS.items():
    op(_op_type)(_reduction(_fn))


def _arg_reduction(fn: Callable[..., Tensor]) -> OpFn:
    def run(ctx: RunContext, node: OnnxNode, inputs: list[Tensor | None]) -> list[Tensor]:
        x, axis, keep = inputs[0], node.attr("axis", 0), bool(node.attr("keepdims", 1))
        if not node.attr("select_last_index", 0):
            return [fn(x, axis, keepdim=keep)]
        axis = positive_axis(axis, x.dim())
        return [x.shape[axis] - 1 - fn(x.flip(axis), axis, keepdim=keep)]

    return run


op("ArgMax", static=None)(_arg_reduction(torch.argmax))
op("ArgMin", static=None)(_arg_reduction(torch.argmin))
