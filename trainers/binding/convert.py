"""ONNX tensors and op arguments as torch values: element types, TensorProto <-> Tensor, and the
small argument readers (optional inputs, int lists, negative axes, pads) kernels share."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx
import torch
from onnx import TensorProto, numpy_helper
from torch import Tensor

from trainers.binding.registry import BindingError

TORCH_DTYPES: dict[int, torch.dtype] = {
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
FLOAT_TYPES = frozenset(
    {TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16}
)


def torch_dtype(data_type: int, what: str) -> torch.dtype:
    if data_type not in TORCH_DTYPES:
        name = TensorProto.DataType.Name(data_type)
        raise BindingError(f"{what}: ONNX type {name} has no torch equivalent here")
    return TORCH_DTYPES[data_type]


def tensor_from_proto(tensor: TensorProto) -> Tensor:
    dtype = torch_dtype(tensor.data_type, f"tensor '{tensor.name}'")
    array = numpy_helper.to_array(tensor)
    if dtype == torch.bfloat16:
        return torch.from_numpy(array.astype(np.float32)).to(dtype)
    return torch.from_numpy(np.array(array, copy=True))


def tensor_to_proto(value: Tensor, like: TensorProto) -> TensorProto:
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


def ints(value: Tensor | None) -> list[int] | None:
    return None if value is None else [int(v) for v in value.reshape(-1).tolist()]


def optional_input(inputs: Sequence[Tensor | None], index: int) -> Tensor | None:
    return inputs[index] if index < len(inputs) else None


def positive_axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def torch_pads(pads: Mapping[int, tuple[int, int]], rank: int) -> list[int]:
    """ONNX per-axis (begin, end) pads as F.pad's flat list, which starts at the last axis."""
    flat = [0] * (2 * rank)
    for axis, (begin, end) in pads.items():
        flat[2 * (rank - 1 - axis)] = begin
        flat[2 * (rank - 1 - axis) + 1] = end
    return flat
