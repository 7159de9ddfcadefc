"""Run an ONNX graph as a trainable torch module, and write the trained weights back.

Why an interpreter of our own: training must not depend on which framework wrote the ONNX file,
and converters we measured (onnx2torch) fail on dynamo exports and leave MatMul weights frozen.
``OnnxModule`` executes the nodes in graph order with torch ops; every float initializer that
feeds a differentiable input is an ``nn.Parameter`` keyed by its ONNX name, so pruning code can
talk about ``conv1.weight`` exactly as ``partition.json`` does.

All knowledge of an op lives in one place: ``OPS`` maps op_type to a small function
``(ctx, node, inputs) -> outputs``, registered with ``@op``, which also declares the inputs that
are configuration (shapes, scales, running statistics) rather than trainable data.
"""

from __future__ import annotations

import functools
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import TensorProto, numpy_helper
from torch import Tensor, nn

from onnxoto.errors import OnnxotoError
from onnxoto.graph import load_model

__all__ = [
    "OPS",
    "BindingError",
    "OnnxModule",
    "OnnxNode",
    "RunContext",
    "UnsupportedOp",
    "bind_state_dict",
    "copy_to_onnx",
    "op",
    "write_back",
]


class BindingError(OnnxotoError):
    """The ONNX model cannot be bound to torch (or written back) as asked."""


class UnsupportedOp(BindingError):
    """The graph uses an op (or an op setting) this interpreter does not implement."""


@dataclass(frozen=True)
class OnnxNode:
    """One ONNX node with its attributes decoded once, so forward does no protobuf work."""

    op_type: str
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: Mapping[str, Any] = field(default_factory=dict)
    domain: str = ""

    def attr(self, key: str, default: Any = None) -> Any:
        return self.attrs.get(key, default)


@dataclass(frozen=True)
class RunContext:
    """What an op may need beyond its inputs: train/eval mode, opset, names of running stats."""

    training: bool
    opset: int
    state: frozenset[str]


OpFn = Callable[[RunContext, OnnxNode, list[Tensor | None]], list[Tensor]]
OPS: dict[str, OpFn] = {}
_STATIC_INPUTS: dict[str, frozenset[int] | None] = {}


def op(*op_types: str, static: Iterable[int] | None = ()) -> Callable[[OpFn], OpFn]:
    """Register ``fn`` for ``op_types``; ``static`` input positions are never trained.

    ``static=None`` means no input carries a gradient (comparisons, Shape, ArgMax). A float
    initializer that only reaches static positions (Resize scales, Clip bounds, BatchNormalization
    running stats) becomes a buffer instead of a parameter. Duplicates raise.
    """

    def register(fn: OpFn) -> OpFn:
        for op_type in op_types:
            if op_type in OPS:
                raise ValueError(f"op {op_type} registered twice")
            OPS[op_type] = fn
            _STATIC_INPUTS[op_type] = None if static is None else frozenset(static)
        return fn

    return register


# ---------------------------------------------------------------------------------------------
# Tensor conversion

_TORCH_DTYPES: dict[int, torch.dtype] = {
    TensorProto.FLOAT: torch.float32,
    TensorProto.DOUBLE: torch.float64,
    TensorProto.FLOAT16: torch.float16,
    TensorProto.BFLOAT16: torch.bfloat16,
    TensorProto.INT8: torch.int8,
    TensorProto.INT16: torch.int16,
    TensorProto.INT32: torch.int32,
    TensorProto.INT64: torch.int64,
    TensorProto.UINT8: torch.uint8,
    TensorProto.BOOL: torch.bool,
}
_FLOAT_TYPES = frozenset(
    {TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16}
)


def _torch_dtype(data_type: int, what: str) -> torch.dtype:
    if data_type not in _TORCH_DTYPES:
        name = TensorProto.DataType.Name(data_type)
        raise BindingError(f"{what}: ONNX type {name} has no torch equivalent here")
    return _TORCH_DTYPES[data_type]


def _tensor_from_proto(tensor: TensorProto) -> Tensor:
    dtype = _torch_dtype(tensor.data_type, f"tensor '{tensor.name}'")
    array = numpy_helper.to_array(tensor)
    if dtype == torch.bfloat16:
        return torch.from_numpy(array.astype(np.float32)).to(dtype)
    return torch.from_numpy(np.array(array, copy=True))


def _tensor_to_proto(value: Tensor, like: TensorProto) -> TensorProto:
    """``value`` as a TensorProto with the name and element type of ``like``; shapes must agree."""
    host = value.detach().cpu()
    if host.dtype == torch.bfloat16:
        host = host.float()
    array = host.numpy().astype(onnx.helper.tensor_dtype_to_np_dtype(like.data_type))
    if tuple(array.shape) != tuple(like.dims):
        raise BindingError(
            f"'{like.name}': value of shape {tuple(array.shape)} cannot replace an initializer "
            f"of shape {tuple(like.dims)}"
        )
    return numpy_helper.from_array(array, like.name)


def _ints(value: Tensor | None) -> list[int] | None:
    return None if value is None else [int(v) for v in value.reshape(-1).tolist()]


def _get(inputs: Sequence[Tensor | None], index: int) -> Tensor | None:
    return inputs[index] if index < len(inputs) else None


def _axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def _torch_pads(pads: Mapping[int, tuple[int, int]], rank: int) -> list[int]:
    """ONNX per-axis (begin, end) pads as F.pad's flat list, which starts at the last axis."""
    flat = [0] * (2 * rank)
    for axis, (begin, end) in pads.items():
        flat[2 * (rank - 1 - axis)] = begin
        flat[2 * (rank - 1 - axis) + 1] = end
    return flat


# ---------------------------------------------------------------------------------------------
# Elementwise ops


def _elementwise(fn: Callable[..., Tensor]) -> OpFn:
    def run(ctx: RunContext, node: OnnxNode, inputs: list[Tensor | None]) -> list[Tensor]:
        return [fn(*inputs)]

    return run


def _divide(a: Tensor, b: Tensor) -> Tensor:
    return a / b if a.is_floating_point() else torch.div(a, b, rounding_mode="trunc")


_ELEMENTWISE: dict[str, Callable[..., Tensor]] = {
    "Identity": lambda x: x,
    "Relu": torch.relu,
    "Sigmoid": torch.sigmoid,
    "Tanh": torch.tanh,
    "Exp": torch.exp,
    "Log": torch.log,
    "Sqrt": torch.sqrt,
    "Reciprocal": torch.reciprocal,
    "Neg": torch.neg,
    "Abs": torch.abs,
    "Erf": torch.erf,
    "Softplus": F.softplus,
    "Softsign": F.softsign,
    "Mish": F.mish,
    "HardSwish": F.hardswish,
    "Sin": torch.sin,
    "Cos": torch.cos,
    "Add": torch.add,
    "Sub": torch.sub,
    "Mul": torch.mul,
    "Div": _divide,
    "Pow": lambda a, b: torch.pow(a, b).to(a.dtype),
    "Where": lambda cond, a, b: torch.where(cond.bool(), a, b),
    "MatMul": torch.matmul,
    "Max": lambda *xs: functools.reduce(torch.maximum, xs),
    "Min": lambda *xs: functools.reduce(torch.minimum, xs),
    "Sum": lambda *xs: functools.reduce(torch.add, xs),
    "Mean": lambda *xs: functools.reduce(torch.add, xs) / len(xs),
}
_PIECEWISE_CONSTANT: dict[str, Callable[..., Tensor]] = {
    "Floor": torch.floor,
    "Ceil": torch.ceil,
    "Round": torch.round,
    "Sign": torch.sign,
    "Not": torch.logical_not,
    "Equal": torch.eq,
    "Less": torch.lt,
    "LessOrEqual": torch.le,
    "Greater": torch.gt,
    "GreaterOrEqual": torch.ge,
    "And": torch.logical_and,
    "Or": torch.logical_or,
    "Xor": torch.logical_xor,
}
for _op_type, _fn in _ELEMENTWISE.items():
    op(_op_type)(_elementwise(_fn))
for _op_type, _fn in _PIECEWISE_CONSTANT.items():
    op(_op_type, static=None)(_elementwise(_fn))


@op("Mod")
def _mod(ctx: RunContext, node: OnnxNode, inputs: list[Tensor | None]) -> list[Tensor]:
    fn = torch.fmod if node.attr("fmod", 0) else torch.remainder
    return [fn(inputs[0], inputs[1])]


@op("LeakyRelu")
def _leaky_relu(ctx: RunContext, node: OnnxNode, inputs: list[Tensor | None]) -> list[Tensor]:
    return [F.leaky_relu(inputs[0], node.attr("alpha", 0.01))]


@op("PRelu")
def _prelu(ctx: RunContext, node: OnnxNode, inputs: list[Tensor | None]) -> list[Tensor]:
    x, slope = inputs[0], inputs[1]
    return [torch.where(x < 0, x * slope, x)]


@op("Elu")
def _elu(ctx: RunContext, node: OnnxNode, inputs: list[Tensor | None]) -> list[Tensor]:
    return [F.elu(inputs[0], node.attr("alpha", 1.0))]


@op("Selu")
def _selu(ctx: RunContext, node: OnnxNode, inputs: list[Tensor | None]) -> list[Tensor]:
    x = inputs[0]
    alpha = node.attr("alpha", 1.67326319217681884765625)
    gamma = node.attr("gamma", 1.05070102214813232421875)
    return [gamma * torch.where(x > 0, x, alpha * torch.expm1(x))]


@op("HardSigmoid")
def _hard_sigmoid(ctx: RunContext, node: OnnxNode, inputs: list[Tensor | None]) -> list[Tensor]:
    x = inputs[0]
    return [torch.clamp(x * node.attr("alpha", 0.2) + node.attr("beta", 0.5), 0.0, 1.0)]


@op("Gelu")
def _gelu(ctx: RunContext, node: OnnxNode, inputs: list[Tensor | None]) -> list[Tensor]:
    return [F.gelu(inputs[0], approximate=node.attr("approximate", "none"))]


@op("Clip", static=(1, 2))
def _clip(ctx: RunContext, node: OnnxNode, inputs: list[Tensor | None]) -> list[Tensor]:
    x, low, high = inputs[0], _get(inputs, 1), _get(inputs, 2)
    if "min" in node.attrs or "max" in node.attrs:  # opset < 11
        low, high = node.attr("min"), node.attr("max")
    if low is None and high is None:
        return [x]
    return [torch.clamp(x, low, high)]


@op("Cast")
def _cast(ctx: RunContext, node: OnnxNode, inputs: list[Tensor | None]) -> list[Tensor]:
    return [inputs[0].to(_torch_dtype(node.attr("to"), f"node '{node.name}'"))]


@op("CastLike")
def _cast_like(ctx: RunContext, node: OnnxNode, inputs: list[Tensor | None]) -> list[Tensor]:
    return [inputs[0].to(inputs[1].dtype)]


@op("Dropout", static=(1, 2))
def _dropout(ctx: RunContext, node: OnnxNode, inputs: list[Tensor | None]) -> list[Tensor]:
    """Identity in train mode too: deterministic steps make pruning runs reproducible."""
    x = inputs[0]
    return [x, torch.ones_like(x, dtype=torch.bool)]


# ---------------------------------------------------------------------------------------------
# Linear algebra, convolution, pooling


@op("Gemm")
def _gemm(ctx: RunContext, node: OnnxNode, inputs: list[Tensor | None]) -> list[Tensor]:
    a, b, c = inputs[0], inputs[1], _get(inputs, 2)
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
    return F.pad(x, _torch_pads(spatial, x.dim()), value=value), [0] * len(pads)


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
_MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVG_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


def _spatial_attrs(node: OnnxNode, rank: int) -> tuple[list[int], list[int]]:
    return node.attr("strides", [1] * rank), node.attr("dilations", [1] * rank)


@op("Conv")
def _conv(ctx: RunContext, node: OnnxNode, inputs: list[Tensor | None]) -> list[Tensor]:
    x, w, b = inputs[0], inputs[1], _get(inputs, 2)
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
    x, w, b = inputs[0], inputs[1], _get(inputs, 2)
    rank = w.dim() - 2
    strides, dilations = _spatial_attrs(node, rank)
    extra = node.attr("output_padding", [0] * rank)
    y = _CONV_T[rank](x, w, None, strides, 0, 0, node.attr("group", 1), dilations)
    pads = _transpose_pads(node, x.shape[2:], y.shape[2:], extra, strides)
    crop = {
        axis + 2: (-begin, out_pad - end)
        for axis, ((begin, end), out_pad) in enumerate(zip(pads, extra, strict=True))
    }
    y = F.pad(y, _torch_pads(crop, y.dim()))
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


# ---------------------------------------------------------------------------------------------
# Normalization and softmax


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
    x, scale, bias = inputs[0], inputs[1], _get(inputs, 2)
    axis = _axis(node.attr("axis", -1), x.dim())
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
        axis = _axis(node.attr("axis", 1), x.dim())
        return [fn(x.reshape(math.prod(x.shape[:axis]), -1), 1).reshape(x.shape)]

    return run


op("Softmax")(_softmax_like(torch.softmax))
op("LogSoftmax")(_softmax_like(torch.log_softmax))


def _reduction(fn: Callable[[Tensor, tuple[int, ...], bool], Tensor]) -> OpFn:
    """Axes come from the attribute (older opsets) or the second input (newer ones)."""

    def run(ctx: RunContext, node: OnnxNode, inputs: list[Tensor | None]) -> list[Tensor]:
        x = inputs[0]
        axes = node.attr("axes") or _ints(_get(inputs, 1))
        if not axes:
            if node.attr("noop_with_empty_axes", 0):
                return [x]
            axes = range(x.dim())
        dims = tuple(sorted(_axis(a, x.dim()) for a in axes))
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
        axis = _axis(axis, x.dim())
        return [x.shape[axis] - 1 - fn(x.flip(axis), axis, keepdim=keep)]

    return run


op("ArgMax", static=None)(_arg_reduction(torch.argmax))
op("ArgMin", static=None)(_arg_reduction(torch.argmin))


# ---------------------------------------------------------------------------------------------
# Shapes and layout (int64 shape arithmetic runs on tensors, on the input's device)


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
        return [_tensor_from_proto(node.attrs["value"])]
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
    fill = torch.zeros(1) if value is None else _tensor_from_proto(value)
    shape = _ints(inputs[0])
    return [torch.full(shape, fill.item(), dtype=fill.dtype, device=inputs[0].device)]


@op("Range", static=None)
def _range(ctx: RunContext, node: OnnxNode, inputs: list[Tensor | None]) -> list[Tensor]:
    start, limit, delta = inputs
    return [torch.arange(start.item(), limit.item(), delta.item(), dtype=start.dtype,
                         device=start.device)]


@op("Reshape")
def _reshape(ctx: RunContext, node: OnnxNode, inputs: list[Tensor | None]) -> list[Tensor]:
    x, shape = inputs[0], _ints(inputs[1])
    if not node.attr("allowzero", 0):
        shape = [x.shape[i] if v == 0 else v for i, v in enumerate(shape)]
    return [x.reshape(shape)]


@op("Flatten")
def _flatten(ctx: RunContext, node: OnnxNode, inputs: list[Tensor | None]) -> list[Tensor]:
    x = inputs[0]
    axis = _axis(node.attr("axis", 1), x.dim())
    return [x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))]


@op("Transpose")
def _transpose(ctx: RunContext, node: OnnxNode, inputs: list[Tensor | None]) -> list[Tensor]:
    x = inputs[0]
    return [x.permute(node.attr("perm") or list(reversed(range(x.dim()))))]


@op("Squeeze")
def _squeeze(ctx: RunContext, node: OnnxNode, inputs: list[Tensor | None]) -> list[Tensor]:
    x = inputs[0]
    axes = node.attr("axes") or _ints(_get(inputs, 1))
    if not axes:
        return [x.squeeze()]
    return [x.squeeze(tuple(_axis(a, x.dim()) for a in axes))]


@op("Unsqueeze")
def _unsqueeze(ctx: RunContext, node: OnnxNode, inputs: list[Tensor | None]) -> list[Tensor]:
    x = inputs[0]
    axes = node.attr("axes") or _ints(inputs[1])
    rank = x.dim() + len(axes)
    for axis in sorted(_axis(a, rank) for a in axes):
        x = x.unsqueeze(axis)
    return [x]


@op("Concat")
def _concat(ctx: RunContext, node: OnnxNode, inputs: list[Tensor | None]) -> list[Tensor]:
    return [torch.cat([t for t in inputs if t is not None], dim=node.attr("axis"))]


@op("Split")
def _split(ctx: RunContext, node: OnnxNode, inputs: list[Tensor | None]) -> list[Tensor]:
    x = inputs[0]
    axis = _axis(node.attr("axis", 0), x.dim())
    sizes = node.attr("split") or _ints(_get(inputs, 1))
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
        starts, ends = _ints(inputs[1]), _ints(inputs[2])
        axes, steps = _ints(_get(inputs, 3)), _ints(_get(inputs, 4))
    axes = axes or list(range(len(starts)))
    steps = steps or [1] * len(starts)
    for axis, start, end, step in zip(axes, starts, ends, steps, strict=True):
        axis = _axis(axis, x.dim())
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
    axis = _axis(node.attr("axis", 0), data.dim())
    index = torch.where(index < 0, index + data.shape[axis], index)
    out = data.index_select(axis, index.reshape(-1))
    return [out.reshape(data.shape[:axis] + index.shape + data.shape[axis + 1 :])]


@op("GatherElements")
def _gather_elements(ctx: RunContext, node: OnnxNode, inputs: list[Tensor | None]) -> list[Tensor]:
    data, index = inputs[0], inputs[1].long()
    axis = _axis(node.attr("axis", 0), data.dim())
    index = torch.where(index < 0, index + data.shape[axis], index)
    return [torch.gather(data, axis, index)]


@op("Expand")
def _expand(ctx: RunContext, node: OnnxNode, inputs: list[Tensor | None]) -> list[Tensor]:
    x = inputs[0]
    return [x.expand(torch.broadcast_shapes(x.shape, tuple(_ints(inputs[1]))))]


@op("Tile")
def _tile(ctx: RunContext, node: OnnxNode, inputs: list[Tensor | None]) -> list[Tensor]:
    return [inputs[0].repeat(_ints(inputs[1]))]


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
        fill = _get(inputs, 2)
        pads, axes = _ints(inputs[1]), _ints(_get(inputs, 3))
        value = 0.0 if fill is None or fill.numel() == 0 else fill.item()
    axes = [_axis(a, x.dim()) for a in (axes or range(x.dim()))]
    pairs = dict(zip(axes, zip(pads[: len(axes)], pads[len(axes) :], strict=True), strict=True))
    if mode == "constant":
        return [F.pad(x, _torch_pads(pairs, x.dim()), value=value)]
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


# ---------------------------------------------------------------------------------------------
# Resize: separable per axis, coordinates exactly as the ONNX spec defines them

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
        scales, sizes = node.attr("scales") or _get(inputs, 1), None
    else:
        scales, sizes = _get(inputs, 2), _get(inputs, 3)
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
    axes = [_axis(a, x.dim()) for a in node.attr("axes", range(x.dim()))]
    if sizes is not None and sizes.numel():
        out = _ints(sizes)
        factors = [o / x.shape[a] for o, a in zip(out, axes, strict=True)]
    else:
        factors = [float(s) for s in (scales.reshape(-1).tolist()
                                      if isinstance(scales, Tensor) else scales)]
        out = [math.floor(x.shape[a] * s) for a, s in zip(axes, factors, strict=True)]
    for axis, size, scale in zip(axes, out, factors, strict=True):
        if size != x.shape[axis] or scale != 1.0:
            x = _resize_axis(x, axis, size, scale, mode, coordinates, nearest)
    return [x]


# ---------------------------------------------------------------------------------------------
# The module


def _parse_node(proto: onnx.NodeProto, index: int) -> OnnxNode:
    attrs: dict[str, Any] = {}
    for attribute in proto.attribute:
        value = onnx.helper.get_attribute_value(attribute)
        if isinstance(value, bytes):
            value = value.decode()
        elif isinstance(value, list) and value and isinstance(value[0], bytes):
            value = [v.decode() for v in value]
        attrs[attribute.name] = value
    return OnnxNode(
        op_type=proto.op_type,
        name=proto.name or f"{proto.op_type}_{index}",
        inputs=tuple(proto.input),
        outputs=tuple(proto.output),
        attrs=attrs,
        domain=proto.domain,
    )


def _check_supported(nodes: Sequence[OnnxNode]) -> None:
    for node in nodes:
        if node.domain not in ("", "ai.onnx") or node.op_type not in OPS:
            qualified = f"{node.domain}::{node.op_type}" if node.domain else node.op_type
            raise UnsupportedOp(
                f"op '{qualified}' (node '{node.name}') is not supported by the torch binding; "
                f"add it to trainers.binding.OPS"
            )


def _check_wiring(nodes: Sequence[OnnxNode], known: Iterable[str], outputs: Sequence[str]) -> None:
    available = set(known)
    for node in nodes:
        for name in node.inputs:
            if name and name not in available:
                raise BindingError(f"node '{node.name}' reads '{name}', which no earlier node, "
                                   "initializer or graph input provides (graph not sorted?)")
        available.update(node.outputs)
    missing = [name for name in outputs if name not in available]
    if missing:
        raise BindingError(f"graph outputs {missing} are never produced")


def _release_plan(nodes: Sequence[OnnxNode], outputs: Sequence[str]) -> list[tuple[str, ...]]:
    """Names to drop after each node, so forward holds only live activations."""
    last: dict[str, int] = {}
    for index, node in enumerate(nodes):
        for name in node.inputs:
            if name:
                last[name] = index
    keep = set(outputs)
    plan: list[list[str]] = [[] for _ in nodes]
    for name, index in last.items():
        if name not in keep:
            plan[index].append(name)
    return [tuple(names) for names in plan]


def _differentiable(nodes: Sequence[OnnxNode], outputs: Sequence[str]) -> set[str]:
    """Names a gradient from the graph outputs can reach (walking nodes backwards)."""
    live = set(outputs)
    for node in reversed(nodes):
        static = _STATIC_INPUTS[node.op_type]
        if static is None or not live.intersection(node.outputs):
            continue
        live.update(name for i, name in enumerate(node.inputs) if name and i not in static)
    return live


def _trainable_names(
    values: Mapping[str, Tensor], constants: set[str], nodes: Sequence[OnnxNode],
    outputs: Sequence[str],
) -> tuple[set[str], set[str]]:
    """(parameters, running-stat buffers) among the stored values.

    A float value is a parameter if a gradient from the outputs reaches it; Constant-node values
    only when they hold more than one element (scalars there are exporter literals).
    """
    live = _differentiable(nodes, outputs)
    state = {name for n in nodes if n.op_type == "BatchNormalization" for name in n.inputs[3:5]}
    params = {
        name
        for name, value in values.items()
        if value.is_floating_point() and name in live and name not in state
        and (name not in constants or value.numel() > 1)
    }
    return params, state & set(values)


def _safe_key(name: str, container: nn.Module) -> str:
    """A key ``register_parameter`` accepts (no dots, no clash with attributes)."""
    key = re.sub(r"\W", "_", name) or "_"
    while hasattr(container, key):
        key += "_"
    return key


class OnnxModule(nn.Module):
    """An ONNX graph as a trainable ``nn.Module``.

    Float initializers (and multi-element float Constant nodes) read as data become parameters in
    ``onnx_params``; everything else (shape constants, Resize scales, scalar literals,
    BatchNormalization running stats) becomes a buffer in ``onnx_buffers``. Torch keys are the
    ONNX names with non-identifier characters replaced; ``parameter_name_map`` and
    ``buffer_name_map`` map ONNX name -> key. Runs on CPU until the user moves it.
    Dropout is the identity in both modes, so train steps are deterministic.
    """

    def __init__(self, model: onnx.ModelProto | str | os.PathLike) -> None:
        super().__init__()
        proto = load_model(model, check=False)
        if proto.functions:
            proto = onnx.inliner.inline_local_functions(proto)
        graph = proto.graph
        self.opset = next(
            (o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 1
        )
        nodes = [_parse_node(n, i) for i, n in enumerate(graph.node)]
        _check_supported(nodes)
        values = {t.name: _tensor_from_proto(t) for t in graph.initializer}
        context = RunContext(training=False, opset=self.opset, state=frozenset())
        constants = {n.outputs[0] for n in nodes if n.op_type == "Constant"}
        for node in nodes:
            if node.op_type == "Constant":
                values[node.outputs[0]] = OPS["Constant"](context, node, [])[0]
        runnable = [n for n in nodes if n.op_type != "Constant"]
        self.input_names = [i.name for i in graph.input if i.name not in values]
        self.output_names = [o.name for o in graph.output]
        _check_wiring(runnable, list(values) + self.input_names, self.output_names)

        params, state = _trainable_names(values, constants, runnable, self.output_names)
        self.onnx_params = nn.ParameterDict()
        self.onnx_buffers = nn.Module()
        self.parameter_name_map: dict[str, str] = {}
        self.buffer_name_map: dict[str, str] = {}
        for name, value in values.items():
            if name in params:
                key = _safe_key(name, self.onnx_params)
                self.onnx_params[key] = nn.Parameter(value)
                self.parameter_name_map[name] = key
            else:
                key = _safe_key(name, self.onnx_buffers)
                self.onnx_buffers.register_buffer(key, value)
                self.buffer_name_map[name] = key
        self._state = frozenset(state)
        self._nodes = runnable
        self._release = _release_plan(runnable, self.output_names)

    def onnx_parameters(self) -> dict[str, nn.Parameter]:
        """ONNX name -> trainable parameter (the names partition.json uses)."""
        return {name: self.onnx_params[key] for name, key in self.parameter_name_map.items()}

    def onnx_buffers_by_name(self) -> dict[str, Tensor]:
        """ONNX name -> non-trainable stored tensor (running stats, shape constants, literals)."""
        return {name: getattr(self.onnx_buffers, key) for name, key in self.buffer_name_map.items()}

    def onnx_state_dict(self) -> dict[str, Tensor]:
        """Every stored tensor by ONNX name: what ``write_back`` puts into the model."""
        return {**self.onnx_parameters(), **self.onnx_buffers_by_name()}

    def forward(self, *inputs: Tensor | Mapping[str, Tensor]) -> Tensor | tuple[Tensor, ...]:
        """Inputs positionally in graph-input order, or one dict by input name."""
        if len(inputs) == 1 and isinstance(inputs[0], Mapping):
            feeds = dict(inputs[0])
        elif len(inputs) == len(self.input_names):
            feeds = dict(zip(self.input_names, inputs, strict=True))
        else:
            raise BindingError(f"expected {len(self.input_names)} inputs "
                               f"{self.input_names}, got {len(inputs)}")
        missing = [name for name in self.input_names if name not in feeds]
        if missing:
            raise BindingError(f"missing graph inputs {missing}")
        env: dict[str, Tensor] = self.onnx_state_dict()
        env.update((name, torch.as_tensor(feeds[name])) for name in self.input_names)
        ctx = RunContext(training=self.training, opset=self.opset, state=self._state)
        for node, release in zip(self._nodes, self._release, strict=True):
            args = [env[name] if name else None for name in node.inputs]
            try:
                outs = OPS[node.op_type](ctx, node, args)
            except Exception as exc:
                exc.add_note(f"while running ONNX node '{node.name}' ({node.op_type})")
                raise
            if any(node.outputs[len(outs):]):
                raise UnsupportedOp(f"node '{node.name}' ({node.op_type}): optional outputs "
                                    f"{list(node.outputs[len(outs):])} are not supported")
            env.update((name, t) for name, t in zip(node.outputs, outs, strict=False) if name)
            for name in release:
                env.pop(name, None)
        results = tuple(env[name] for name in self.output_names)
        return results[0] if len(results) == 1 else results

    def extra_repr(self) -> str:
        return (f"opset={self.opset}, nodes={len(self._nodes)}, "
                f"parameters={len(self.parameter_name_map)}, buffers={len(self.buffer_name_map)}")


# ---------------------------------------------------------------------------------------------
# Writing back and binding a user's own module


def _with_values(model: onnx.ModelProto, values: Mapping[str, Tensor]) -> onnx.ModelProto:
    """A copy of ``model`` whose initializers / Constant nodes named in ``values`` hold them."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for tensor in out.graph.initializer:
        if tensor.name in values:
            tensor.CopyFrom(_tensor_to_proto(values[tensor.name], tensor))
    for node in out.graph.node:
        if node.op_type != "Constant" or node.output[0] not in values:
            continue
        for attribute in node.attribute:
            value = values[node.output[0]]
            if attribute.name == "value":
                attribute.t.CopyFrom(_tensor_to_proto(value, attribute.t))
            elif attribute.name == "value_float":
                attribute.f = float(value)
            elif attribute.name == "value_floats":
                attribute.floats[:] = value.detach().cpu().reshape(-1).tolist()
    return out


def write_back(module: OnnxModule, model: onnx.ModelProto) -> onnx.ModelProto:
    """Copy of ``model`` with every stored tensor replaced by ``module``'s current value.

    Names, element types and order are kept; BatchNormalization running stats are included.
    The input model is not modified.
    """
    return _with_values(model, module.onnx_state_dict())


def bind_state_dict(
    torch_module: nn.Module, model: onnx.ModelProto, *, atol: float = 0.0
) -> dict[str, str]:
    """Map ONNX float initializers to ``torch_module``'s state_dict by name, checking values.

    Our legacy export keeps state_dict names, so the map is the identity; it is checked rather
    than assumed. Raises ``BindingError`` listing every initializer with no entry of the same
    name and shape, or whose values differ by more than ``atol`` (defaults to 0.0: exact).
    Single-element initializers with no entry are exporter literals (dynamo's ``val_N``) and are
    skipped. Returns ONNX name -> state_dict name.
    """
    state = torch_module.state_dict()
    name_map: dict[str, str] = {}
    problems: list[str] = []
    for tensor in model.graph.initializer:
        if tensor.data_type not in _FLOAT_TYPES:
            continue
        value = _tensor_from_proto(tensor)
        theirs = state.get(tensor.name)
        if theirs is None:
            if value.numel() > 1:
                problems.append(f"'{tensor.name}' has no state_dict entry")
            continue
        if tuple(theirs.shape) != tuple(value.shape):
            problems.append(f"'{tensor.name}' is {tuple(value.shape)} in ONNX but "
                            f"{tuple(theirs.shape)} in the state_dict")
            continue
        diff = (theirs.detach().cpu().double() - value.double()).abs().max().item() if (
            value.numel()) else 0.0
        if diff > atol:
            problems.append(f"'{tensor.name}' differs by {diff:.3g} (atol {atol:g})")
            continue
        name_map[tensor.name] = tensor.name
    if problems:
        shown = "; ".join(problems[:5]) + ("; ..." if len(problems) > 5 else "")
        raise BindingError(f"cannot bind {type(torch_module).__name__} to the ONNX model: "
                           f"{len(problems)} initializer(s) do not match: {shown}")
    return name_map


def copy_to_onnx(
    torch_module: nn.Module, model: onnx.ModelProto, name_map: Mapping[str, str]
) -> onnx.ModelProto:
    """Copy of ``model`` with each mapped initializer set from ``torch_module``'s state_dict."""
    state = torch_module.state_dict()
    missing = [key for key in name_map.values() if key not in state]
    if missing:
        raise BindingError(f"state_dict has no entries {missing[:5]}")
    return _with_values(model, {name: state[key] for name, key in name_map.items()})
