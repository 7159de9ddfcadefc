"""Trained values back into the ONNX model (same names, types and order), and binding a user's
own torch module to an ONNX model by state_dict name."""

from __future__ import annotations

from collections.abc import Mapping

import onnx
from torch import Tensor, nn

from trainers.binding.convert import FLOAT_TYPES, tensor_from_proto, tensor_to_proto
from trainers.binding.module import OnnxModule
from trainers.binding.registry import BindingError


def _with_values(model: onnx.ModelProto, values: Mapping[str, Tensor]) -> onnx.ModelProto:
    """A copy of ``model`` whose initializers / Constant nodes named in ``values`` hold them."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for tensor in out.graph.initializer:
        if tensor.name in values:
            tensor.CopyFrom(tensor_to_proto(values[tensor.name], tensor))
    for node in out.graph.node:
        if node.op_type != "Constant" or node.output[0] not in values:
            continue
        for attribute in node.attribute:
            value = values[node.output[0]]
            if attribute.name == "value":
                attribute.t.CopyFrom(tensor_to_proto(value, attribute.t))
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
        if tensor.data_type not in FLOAT_TYPES:
            continue
        value = tensor_from_proto(tensor)
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
