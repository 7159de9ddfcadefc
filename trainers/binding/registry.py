"""The op table of the torch binding: ``OPS`` maps an ONNX op_type to a kernel
``(ctx, node, inputs) -> outputs``; ``@op`` registers one and declares which inputs are
configuration (shapes, scales, running statistics) rather than trainable data. Duplicates are
refused, so one op has one kernel."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from onnxoto.errors import OnnxotoError


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
STATIC_INPUTS: dict[str, frozenset[int] | None] = {}


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
            STATIC_INPUTS[op_type] = None if static is None else frozenset(static)
        return fn

    return register
