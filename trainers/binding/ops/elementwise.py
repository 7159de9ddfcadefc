"""Kernels of elementwise ops: arithmetic, activations, comparisons (no gradient), casts."""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from trainers.binding.convert import optional_input, torch_dtype
from trainers.binding.registry import OnnxNode, OpFn, RunContext, op


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
    "Tan": torch.tan,
    "Atan": torch.atan,
    "Sinh": torch.sinh,
    "Cosh": torch.cosh,
    "Asinh": torch.asinh,
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


@op("Celu")
def _celu(ctx: RunContext, node: OnnxNode, inputs: list[Tensor | None]) -> list[Tensor]:
    return [F.celu(inputs[0], node.attr("alpha", 1.0))]


@op("ThresholdedRelu")
def _thresholded_relu(
    ctx: RunContext, node: OnnxNode, inputs: list[Tensor | None]
) -> list[Tensor]:
    x = inputs[0]
    return [torch.where(x > node.attr("alpha", 1.0), x, torch.zeros_like(x))]


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
    x, low, high = inputs[0], optional_input(inputs, 1), optional_input(inputs, 2)
    if "min" in node.attrs or "max" in node.attrs:  # opset < 11
        low, high = node.attr("min"), node.attr("max")
    if low is None and high is None:
        return [x]
    return [torch.clamp(x, low, high)]


@op("Cast")
def _cast(ctx: RunContext, node: OnnxNode, inputs: list[Tensor | None]) -> list[Tensor]:
    return [inputs[0].to(torch_dtype(node.attr("to"), f"node '{node.name}'"))]


@op("CastLike")
def _cast_like(ctx: RunContext, node: OnnxNode, inputs: list[Tensor | None]) -> list[Tensor]:
    return [inputs[0].to(inputs[1].dtype)]


@op("Dropout", static=(1, 2))
def _dropout(ctx: RunContext, node: OnnxNode, inputs: list[Tensor | None]) -> list[Tensor]:
    """Identity in train mode too: deterministic steps make pruning runs reproducible."""
    x = inputs[0]
    return [x, torch.ones_like(x, dtype=torch.bool)]
