"""``OnnxModule``: an ONNX graph executed node by node with the kernels in ``OPS``, every float
initializer that a gradient reaches an ``nn.Parameter`` keyed by its ONNX name."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import onnx
import torch
from torch import Tensor, nn

from onnxoto.graph import load_model
from trainers.binding.convert import tensor_from_proto
from trainers.binding.ops import OPS
from trainers.binding.registry import (
    STATIC_INPUTS,
    BindingError,
    OnnxNode,
    RunContext,
    UnsupportedOp,
)


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
        static = STATIC_INPUTS[node.op_type]
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
        values = {t.name: tensor_from_proto(t) for t in graph.initializer}
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
