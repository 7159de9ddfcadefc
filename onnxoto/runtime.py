"""onnxruntime sessions, seeded random inputs and runs, shared by validate and metrics.

CPU is the default everywhere: onnxruntime-gpu lists CUDA and TensorRT providers even on machines
without a GPU, and a comparison must not depend on which machine ran it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from onnxoto.errors import OnnxotoError

DEFAULT_PROVIDERS = ("CPUExecutionProvider",)
# protobuf refuses to serialize messages of 2 GiB or more; leave headroom for the graph itself.
_MAX_PROTO_BYTES = int(1.9 * 1024**3)
_FLOAT_TYPES = {onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE}
_INT_TYPES = {
    onnx.TensorProto.INT8,
    onnx.TensorProto.INT16,
    onnx.TensorProto.INT32,
    onnx.TensorProto.INT64,
    onnx.TensorProto.UINT8,
    onnx.TensorProto.UINT16,
    onnx.TensorProto.UINT32,
    onnx.TensorProto.UINT64,
}


def session(
    model: onnx.ModelProto | str | os.PathLike,
    *,
    providers: Sequence[str] | None = None,
) -> ort.InferenceSession:
    """An onnxruntime session with quiet logs. Defaults to ``["CPUExecutionProvider"]``.

    Protos too large for protobuf serialization (about 1.9 GB and up) go through a temporary
    folder with external data, so big models work the same way as small ones.
    """
    options = ort.SessionOptions()
    options.log_severity_level = 3
    chosen = list(providers) if providers is not None else list(DEFAULT_PROVIDERS)
    if not isinstance(model, onnx.ModelProto):
        return _open(str(model), options, chosen, _describe(model))
    if model.ByteSize() < _MAX_PROTO_BYTES:
        return _open(model.SerializeToString(), options, chosen, _describe(model))
    with tempfile.TemporaryDirectory(prefix="onnxoto-") as folder:
        path = _save_with_external_data(model, Path(folder))
        return _open(str(path), options, chosen, _describe(model))


def _open(
    source: str | bytes, options: ort.SessionOptions, providers: list[str], what: str
) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(source, options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
        raise OnnxotoError(f"onnxruntime cannot load {what}: {_first_line(exc)}") from exc


def _save_with_external_data(model: onnx.ModelProto, folder: Path) -> Path:
    """Write the model with every initializer's bytes in one side file; the proto is untouched.

    ``onnx.save_model(save_as_external_data=True)`` rewrites the proto in place, and copying a
    2 GB proto first doubles memory, so the small graph is rebuilt around external references.
    """
    light = onnx.ModelProto()
    _copy_fields(model, light, skip="graph")
    _copy_fields(model.graph, light.graph, skip="initializer")
    data_name = "weights.bin"
    offset = 0
    with open(folder / data_name, "wb") as handle:
        for tensor in model.graph.initializer:
            ref = light.graph.initializer.add()
            if tensor.data_type == onnx.TensorProto.STRING:
                ref.CopyFrom(tensor)  # strings cannot live in external data
                continue
            raw = _raw_bytes(tensor)
            handle.write(raw)
            ref.name = tensor.name
            ref.data_type = tensor.data_type
            ref.dims.extend(tensor.dims)
            ref.data_location = onnx.TensorProto.EXTERNAL
            for key, value in (("location", data_name), ("offset", offset), ("length", len(raw))):
                entry = ref.external_data.add()
                entry.key, entry.value = key, str(value)
            offset += len(raw)
    path = folder / "model.onnx"
    path.write_bytes(light.SerializeToString())
    return path


def _copy_fields(source, target, *, skip: str) -> None:
    for field, value in source.ListFields():
        if field.name == skip:
            continue
        if field.is_repeated:
            getattr(target, field.name).extend(value)
        elif field.message_type is not None:
            getattr(target, field.name).CopyFrom(value)
        else:
            setattr(target, field.name, value)


def _raw_bytes(tensor: onnx.TensorProto) -> bytes:
    if tensor.HasField("raw_data"):
        return tensor.raw_data
    array = numpy_helper.to_array(tensor)
    return array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()


def random_inputs(
    model: onnx.ModelProto,
    *,
    seed: int = 0,
    batch: int = 1,
    dynamic_dim: int = 1,
) -> dict[str, np.ndarray]:
    """One seeded array per real graph input (initializers listed as inputs are skipped).

    Floats are standard normal, integers are 0..9 (safe as indices and sizes), bools are fair
    coin flips. A dynamic first dim becomes ``batch``, any other dynamic dim ``dynamic_dim``.
    Defaults to seed 0, batch 1, dynamic_dim 1.
    """
    rng = np.random.default_rng(seed)
    initializers = {t.name for t in model.graph.initializer}
    arrays: dict[str, np.ndarray] = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        elem_type, shape = _tensor_spec(value, batch=batch, dynamic_dim=dynamic_dim)
        arrays[value.name] = _random_array(rng, elem_type, shape, value.name)
    return arrays


def _tensor_spec(
    value: onnx.ValueInfoProto, *, batch: int, dynamic_dim: int
) -> tuple[int, tuple[int, ...]]:
    if value.type.WhichOneof("value") != "tensor_type":
        raise OnnxotoError(f"input '{value.name}': only tensor inputs can be generated")
    tensor_type = value.type.tensor_type
    if not tensor_type.HasField("shape"):
        raise OnnxotoError(f"input '{value.name}': has no declared rank, cannot make data for it")
    dims = tuple(
        dim.dim_value if dim.HasField("dim_value") else (batch if axis == 0 else dynamic_dim)
        for axis, dim in enumerate(tensor_type.shape.dim)
    )
    return tensor_type.elem_type, dims


def _random_array(
    rng: np.random.Generator, elem_type: int, shape: tuple[int, ...], name: str
) -> np.ndarray:
    dtype = onnx.helper.tensor_dtype_to_np_dtype(elem_type) if elem_type else None
    if elem_type in _FLOAT_TYPES:
        return rng.standard_normal(shape).astype(dtype)
    if elem_type in _INT_TYPES:
        return rng.integers(0, 10, size=shape).astype(dtype)
    if elem_type == onnx.TensorProto.BOOL:
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    type_name = onnx.TensorProto.DataType.Name(elem_type)
    raise OnnxotoError(f"input '{name}': cannot generate random data of type {type_name}")


def run(
    model_or_session: onnx.ModelProto | str | os.PathLike | ort.InferenceSession,
    inputs: Mapping[str, np.ndarray],
) -> dict[str, np.ndarray]:
    """Run once on CPU (or the session's providers); returns output name -> array."""
    sess = (
        model_or_session
        if isinstance(model_or_session, ort.InferenceSession)
        else session(model_or_session)
    )
    names = [o.name for o in sess.get_outputs()]
    try:
        values = sess.run(names, dict(inputs))
    except Exception as exc:
        raise OnnxotoError(f"onnxruntime run failed: {_first_line(exc)}") from exc
    return dict(zip(names, values, strict=True))


def _describe(model: onnx.ModelProto | str | os.PathLike) -> str:
    if isinstance(model, onnx.ModelProto):
        return f"model '{model.graph.name or 'in memory'}'"
    return f"'{model}'"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
