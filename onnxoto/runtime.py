"""onnxruntime sessions, seeded random inputs and runs, shared by validate and metrics.

CPU is the default everywhere: onnxruntime-gpu lists CUDA and TensorRT providers even on machines
without a GPU, and a comparison must not depend on which machine ran it.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from onnxoto.errors import OnnxotoError, one_line
from onnxoto.files import without_initializers
from onnxoto.masking import PLAIN_TYPES, edited

DEFAULT_PROVIDERS = ("CPUExecutionProvider",)
# --provider names -> the execution providers asked for, best first. CPU stays last in every
# list: GPU providers hand it the ops they lack, as onnxruntime itself expects.
PROVIDERS: dict[str, tuple[str, ...]] = {
    "cpu": ("CPUExecutionProvider",),
    "cuda": ("CUDAExecutionProvider", "CPUExecutionProvider"),
    "tensorrt": ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
}
# onnxruntime's own warnings (colored, on stderr) would break our one-line error contract.
ort.set_default_logger_severity(3)
# Models with more tensor bytes than this reach onnxruntime as a file with external data, which
# it maps instead of parsing a serialized copy into tensors of its own: on a 553 MB model the
# session holds 0.2 GB instead of 1.25 GB and the build peaks 1 GB lower. Smaller models go as
# bytes (no disk write). protobuf cannot serialize 2 GiB or more anyway.
_MAP_BYTES = 64 * 1024**2
# Tensors below this stay inside the handed-over model; larger ones start at a page boundary of
# the data file, where onnxruntime can map them.
_INLINE_BYTES = 1024
_PAGE = 4096
# Element types an edit can change in the data file through a numpy memory map (bfloat16 and
# packed types go through numpy_helper instead).
_MAPPABLE = PLAIN_TYPES - {onnx.TensorProto.BFLOAT16}
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


def providers_for(provider: str) -> list[str]:
    """The execution providers behind a --provider name ("cpu", "cuda", "tensorrt", or an
    onnxruntime name such as "CUDAExecutionProvider"), checked against what this onnxruntime
    build offers; OnnxotoError names the ones it does offer otherwise."""
    chosen = PROVIDERS.get(provider.lower())
    if chosen is None:
        known = {p.lower(): p for p in ort.get_available_providers()}
        full = known.get(provider.lower())
        if full is None:
            raise OnnxotoError(f"unknown provider '{provider}'; use one of "
                               f"{', '.join(PROVIDERS)} or an onnxruntime provider name")
        chosen = (full,) if full in DEFAULT_PROVIDERS else (full, *DEFAULT_PROVIDERS)
    available = ort.get_available_providers()
    if chosen[0] not in available:
        raise OnnxotoError(f"provider '{provider}' needs {chosen[0]}, which this onnxruntime "
                           f"({ort.__version__}) does not have; it has {', '.join(available)}")
    return list(chosen)


class TensorEdit(Protocol):
    """Changes some tensors' data in place: ``name in edit`` says whether it changes the tensor
    of that name (an initializer, or a Constant named by its output), ``edit(name, array)``
    changes a writable array of its data (masking.Zeroing is one)."""

    def __contains__(self, name: object) -> bool: ...

    def __call__(self, name: str, array: np.ndarray) -> None: ...


@dataclass(frozen=True)
class WithTensors:
    """``model`` as onnxruntime should run it: with ``edit`` applied to its tensors.

    The reference of a shrink is the full model with channels zeroed; handing it over this way
    zeroes each tensor in the file onnxruntime reads, instead of first building a zeroed copy
    of the whole model (on a VGG-16-sized model nearly every byte is a producer weight).
    """

    model: onnx.ModelProto
    edit: TensorEdit


class HandedOver:
    """A model written out as onnxruntime reads it: a header proto (the graph, small tensors)
    and a data file with every larger tensor, in a temporary folder that ``close`` (or leaving
    a ``with`` block) removes. The proto it was made from is not kept, so a caller that owns
    that proto can drop it before a session maps the file: the bytes are then held once, not
    twice (``onnxoto shrink`` validates this way). ``model`` is the header: inputs, outputs
    and shapes, without the tensors' bytes.
    """

    def __init__(self, model: onnx.ModelProto | WithTensors) -> None:
        proto, edit = (model.model, model.edit) if isinstance(model, WithTensors) else (model, None)
        self._folder = tempfile.TemporaryDirectory(prefix="onnxoto-",
                                                   dir=_scratch(_tensor_bytes(proto)))
        self.path = Path(self._folder.name) / "model.onnx"
        try:
            self.model = _handover(proto, edit, self.path.with_suffix(".data"))
            self.path.write_bytes(self.model.SerializeToString())
        except BaseException:
            self._folder.cleanup()
            raise

    def close(self) -> None:
        self._folder.cleanup()

    def __enter__(self) -> HandedOver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def session(
    model: onnx.ModelProto | WithTensors | HandedOver | str | os.PathLike,
    *,
    providers: Sequence[str] | None = None,
    threads: int = 0,
    weight_copies: bool = True,
) -> ort.InferenceSession:
    """An onnxruntime session with quiet logs. Defaults to ``["CPUExecutionProvider"]``,
    onnxruntime's own thread count (``threads`` 0) and every graph optimization.

    ``weight_copies=False`` keeps onnxruntime from copying weights into faster layouts: the
    packed Gemm/MatMul layout (prepacking) and the blocked NCHWc Conv layout of its
    highest optimization level (which copies every Conv weight: on ResNet-50 the session
    holds 2.6x the model's bytes instead of 1.6x). A session that runs a few samples
    (validation) does not earn the copies back; latency measurements keep them.

    A session whose first provider did not start (onnxruntime-gpu lists CUDA on machines
    without a GPU, then quietly runs on CPU) raises OnnxotoError rather than measuring CPU
    under another name. Protos with over 64 MiB of tensors go through a HandedOver folder,
    whose data file onnxruntime maps rather than copies (and which protobuf needs from 2 GiB
    on); /dev/shm holds it when it has room (no disk writes).
    """
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    if not weight_copies:
        options.add_session_config_entry("session.disable_prepacking", "1")
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    chosen = list(providers) if providers is not None else list(DEFAULT_PROVIDERS)
    if isinstance(model, HandedOver):
        return _open(str(model.path), options, chosen, _describe(model.model))
    if not isinstance(model, (onnx.ModelProto, WithTensors)):
        return _open(str(model), options, chosen, _describe(model))
    proto, edit = (model.model, model.edit) if isinstance(model, WithTensors) else (model, None)
    if _tensor_bytes(proto) < _MAP_BYTES:
        handed = proto if edit is None else _handover(proto, edit, None)
        return _open(handed.SerializeToString(), options, chosen, _describe(proto))
    with HandedOver(model) as handed:
        return _open(str(handed.path), options, chosen, _describe(proto))


def _scratch(size: int) -> str | None:
    """/dev/shm when it has room for ``size`` bytes and a margin, else the default temp dir."""
    with contextlib.suppress(OSError):
        if shutil.disk_usage("/dev/shm").free > 2 * size:
            return "/dev/shm"
    return None


def _handover(proto: onnx.ModelProto, edit: TensorEdit | None,
              data: Path | None) -> onnx.ModelProto:
    """The model onnxruntime gets: ``proto`` with ``edit`` applied; with a ``data`` file, every
    initializer of ``_INLINE_BYTES`` or more is written there, page-aligned, and referenced.
    One tensor's bytes are in memory at a time: an edited one is changed in the file, through a
    memory map (nothing is fsynced or hashed: the file lives for one session build)."""
    edit = edit if edit is not None else frozenset()
    header = without_initializers(proto)
    with contextlib.ExitStack() as stack:
        sink = None if data is None else stack.enter_context(open(data, "w+b"))
        for tensor in proto.graph.initializer:
            target = header.graph.initializer.add()
            raw = _raw(tensor) if sink is not None else None
            if raw is None or len(raw) < _INLINE_BYTES:
                target.CopyFrom(tensor if tensor.name not in edit else
                                _tensor(tensor, edited(edit, tensor.name, tensor)))
                continue
            in_place = tensor.name in edit and tensor.data_type in _MAPPABLE
            if tensor.name in edit and not in_place:  # packed types: through numpy_helper
                raw = _tensor(tensor, edited(edit, tensor.name, tensor)).raw_data
            end = sink.seek(0, os.SEEK_END)
            offset = sink.seek(end + -end % _PAGE)
            sink.write(raw)
            _reference(target, tensor, data.name, offset, len(raw))
            del raw
            if in_place:
                sink.flush()
                edit(tensor.name, np.memmap(sink, dtype=_file_dtype(tensor), mode="r+",
                                            offset=offset, shape=tuple(tensor.dims)))
    for node in header.graph.node:
        for attr in node.attribute if node.op_type == "Constant" else ():
            if attr.name == "value" and node.output[0] in edit:
                attr.t.CopyFrom(_tensor(attr.t, edited(edit, node.output[0], attr.t)))
    return header


def _reference(target: onnx.TensorProto, tensor: onnx.TensorProto, location: str,
               offset: int, length: int) -> None:
    target.name, target.data_type = tensor.name, tensor.data_type
    target.dims.extend(tensor.dims)
    target.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", offset), ("length", length)):
        entry = target.external_data.add()
        entry.key, entry.value = key, str(value)


def _tensor(like: onnx.TensorProto, array: np.ndarray) -> onnx.TensorProto:
    dtype = onnx.helper.tensor_dtype_to_np_dtype(like.data_type)
    return numpy_helper.from_array(np.asarray(array).astype(dtype, copy=False), like.name)


def _file_dtype(tensor: onnx.TensorProto) -> np.dtype:
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).newbyteorder("<")


def _raw(tensor: onnx.TensorProto) -> bytes | None:
    """The tensor's bytes as an external-data file holds them, or None for tensors that stay
    inline (strings and typed-field data)."""
    if tensor.data_location == onnx.TensorProto.EXTERNAL or not tensor.HasField("raw_data"):
        return None
    return tensor.raw_data


def _tensor_bytes(model: onnx.ModelProto) -> int:
    """Bytes of the initializers and Constant tensors, from their dims (``ByteSize`` walks
    every byte: 3.4 s on a 553 MB model)."""
    tensors = list(model.graph.initializer) + [
        attr.t for node in model.graph.node if node.op_type == "Constant"
        for attr in node.attribute if attr.name == "value"]
    return sum(math.prod(t.dims) * _itemsize(t.data_type) for t in tensors)


def _itemsize(data_type: int) -> int:
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(data_type)).itemsize
    except (KeyError, TypeError, ValueError):
        return 8


@contextlib.contextmanager
def _logger_severity(level: int):
    ort.set_default_logger_severity(level)
    try:
        yield
    finally:
        ort.set_default_logger_severity(3)


def _open(
    source: str | bytes, options: ort.SessionOptions, providers: list[str], what: str
) -> ort.InferenceSession:
    quiet = providers[0] != DEFAULT_PROVIDERS[0]
    try:  # a provider that fails to start prints to stdout and logs errors: keep one line
        with contextlib.redirect_stdout(io.StringIO()), _logger_severity(4 if quiet else 3):
            sess = ort.InferenceSession(source, options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
        raise OnnxotoError(f"onnxruntime cannot load {what}: {one_line(exc)}") from exc
    if sess.get_providers()[0] != providers[0]:
        raise OnnxotoError(f"onnxruntime lists {providers[0]} but could not start it for {what} "
                           f"(no GPU, or its CUDA/TensorRT libraries are missing); it fell back "
                           f"to {sess.get_providers()[0]}: use --provider cpu")
    return sess


# Random inputs larger than this (1 GiB of float32) are refused before anything is allocated:
# a declared dim of 2^33 is a broken model or a placeholder, not a shape to test with.
MAX_INPUT_ELEMENTS = 1 << 28


def random_inputs(
    model: onnx.ModelProto,
    *,
    seed: int = 0,
    batch: int = 1,
    dynamic_dim: int = 1,
    shapes: Mapping[str, Sequence[int]] | None = None,
) -> dict[str, np.ndarray]:
    """One seeded array per real graph input (initializers listed as inputs are skipped).

    Floats are standard normal, integers are 0..9 (safe as indices and sizes), bools are fair
    coin flips. A dynamic first dim becomes ``batch``, any other dynamic dim ``dynamic_dim``;
    ``shapes`` gives whole shapes by input name instead. An input over ``MAX_INPUT_ELEMENTS``
    raises OnnxotoError before anything is allocated. Defaults to seed 0, batch 1,
    dynamic_dim 1, the declared shapes.
    """
    rng = np.random.default_rng(seed)
    initializers = {t.name for t in model.graph.initializer}
    shapes = dict(shapes or {})
    real = [v for v in model.graph.input if v.name not in initializers]
    unknown = sorted(set(shapes) - {v.name for v in real})
    if unknown:
        raise OnnxotoError(f"--input-shape names {unknown}, not inputs of the model (its inputs: "
                           f"{[v.name for v in real]})")
    specs = {v.name: _tensor_spec(v, batch=batch, dynamic_dim=dynamic_dim,
                                  given=shapes.get(v.name)) for v in real}
    return {name: _random_array(rng, elem_type, shape, name)
            for name, (elem_type, shape) in specs.items()}


def given_inputs(
    model: onnx.ModelProto,
    data: Mapping[str, np.ndarray] | str | os.PathLike,
) -> dict[str, np.ndarray]:
    """Real inputs for ``model`` from an .npz file (keys = input names) or a mapping, checked
    against the declared inputs: every real input present and no other, the declared dtype,
    rank and static dims. OnnxotoError names the input and what differs."""
    where = f"'{data}'" if isinstance(data, (str, os.PathLike)) else "the inputs given"
    arrays = _read_npz(data) if isinstance(data, (str, os.PathLike)) else dict(data)
    initializers = {t.name for t in model.graph.initializer}
    real = [v for v in model.graph.input if v.name not in initializers]
    names = [v.name for v in real]
    missing = [n for n in names if n not in arrays]
    extra = sorted(set(arrays) - set(names))
    if missing or extra:
        raise OnnxotoError(f"{where}: the model's inputs are {names}; missing {missing or 'none'}"
                           f", not inputs {extra or 'none'}")
    return {value.name: _checked(value, np.asarray(arrays[value.name]), where)
            for value in real}


def _checked(value: onnx.ValueInfoProto, array: np.ndarray, where: str) -> np.ndarray:
    if value.type.WhichOneof("value") != "tensor_type":
        raise OnnxotoError(f"input '{value.name}': only tensor inputs can be given")
    tensor_type = value.type.tensor_type
    want = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
    if array.dtype != want:
        raise OnnxotoError(f"{where}: input '{value.name}' is {array.dtype}, the model takes "
                           f"{want}; convert it (e.g. array.astype(numpy.{want}))")
    if not tensor_type.HasField("shape"):
        return array
    declared = [d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim]
    fits = len(declared) == array.ndim and all(
        d is None or d == n for d, n in zip(declared, array.shape, strict=False))
    if not fits:
        shown = ["?" if d is None else d for d in declared]
        raise OnnxotoError(f"{where}: input '{value.name}' has shape {list(array.shape)}, the "
                           f"model declares {shown} (? = any size)")
    return array


def _read_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except (OSError, ValueError) as exc:
        raise OnnxotoError(f"cannot read inputs from '{path}': {one_line(exc)}; save them with "
                           f"numpy.savez(path, **{{input_name: array}})") from exc


def _tensor_spec(
    value: onnx.ValueInfoProto, *, batch: int, dynamic_dim: int,
    given: Sequence[int] | None = None,
) -> tuple[int, tuple[int, ...]]:
    if value.type.WhichOneof("value") != "tensor_type":
        raise OnnxotoError(f"input '{value.name}': only tensor inputs can be generated")
    tensor_type = value.type.tensor_type
    if not tensor_type.HasField("shape"):
        raise OnnxotoError(f"input '{value.name}': has no declared rank, cannot make data for "
                           f"it; give one with --input-shape {value.name}:1x3x224x224")
    declared = tensor_type.shape.dim
    if given is not None:
        if len(given) != len(declared):
            raise OnnxotoError(f"--input-shape {value.name}: {len(given)} dims given, the input "
                               f"has rank {len(declared)}")
        dims = tuple(int(d) for d in given)
        fixed = [d.dim_value if d.HasField("dim_value") else None for d in declared]
        if any(f is not None and f != n for f, n in zip(fixed, dims, strict=True)):
            shown = "x".join("?" if f is None else str(f) for f in fixed)
            raise OnnxotoError(f"--input-shape {value.name}: {'x'.join(map(str, dims))} does "
                               f"not fit the declared {shown} (only ? dims are free)")
    else:
        dims = tuple(
            dim.dim_value if dim.HasField("dim_value") else (batch if axis == 0 else dynamic_dim)
            for axis, dim in enumerate(declared)
        )
    elements = math.prod(dims)
    if elements > MAX_INPUT_ELEMENTS or any(d < 0 for d in dims):
        dynamic = any(not d.HasField("dim_value") for d in declared)
        hint = " or --dynamic-dim" if dynamic else ""
        raise OnnxotoError(f"input '{value.name}': shape {list(dims)} has {elements:,} elements, "
                           f"over the limit of {MAX_INPUT_ELEMENTS:,}; give a smaller one with "
                           f"--input-shape {value.name}:DIMS{hint}")
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
        raise OnnxotoError(f"onnxruntime run failed: {one_line(exc)}") from exc
    return dict(zip(names, values, strict=True))


def _describe(model: onnx.ModelProto | str | os.PathLike) -> str:
    if isinstance(model, onnx.ModelProto):
        return f"model '{model.graph.name or 'in memory'}'"
    return f"'{model}'"
