"""Loading ONNX models and the read-only graph facts every pass needs.

Loading is strict: anything that is not a well-formed ONNX model raises ``OnnxotoError`` with a
one-line message, because a compressor that guesses on broken input writes broken output.
"""

from __future__ import annotations

import functools
import hashlib
import os
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper, shape_inference

from onnxoto.errors import OnnxotoError, one_line

ModelLike = str | os.PathLike | onnx.ModelProto


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in chunks (models can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_model(model: ModelLike, *, check: bool = True) -> onnx.ModelProto:
    """Load a model from a path (external data included) or pass a proto through.

    Raises OnnxotoError for a missing file, bytes that are not ONNX, a truncated file, missing
    external data, an initializer whose data does not match its declared shape or that has no
    elements at all (read from a file: a proto built in memory is trusted, and checking every
    byte again on each of the several loads a command makes would cost more than it finds),
    or a model that fails ``onnx.checker`` or its type check (a Conv fed int64 weights is
    refused here rather than by onnxruntime half way through). Defaults to checking.
    """
    if isinstance(model, onnx.ModelProto):
        proto = model
        where = f"model '{proto.graph.name or 'in memory'}'"
    else:
        path = Path(model)
        where = f"'{path}'"
        if not path.exists():
            raise OnnxotoError(f"{where}: no such file")
        if path.is_dir():
            raise OnnxotoError(f"{where}: is a directory, expected an .onnx file")
        try:
            proto = onnx.load(str(path), load_external_data=False)
        except Exception as exc:  # protobuf raises DecodeError and friends
            raise OnnxotoError(f"{where}: not a readable ONNX model ({one_line(exc)})") from exc
        if not proto.graph.node and not proto.graph.output:
            raise OnnxotoError(f"{where}: not an ONNX model (no graph found in the file)")
        _load_external(proto, path)
        if check:
            for tensor in proto.graph.initializer:
                _check_tensor_data(tensor, where)
    if check:
        light = light_copy(proto)
        try:
            onnx.checker.check_model(light, full_check=False)
            # types only: strict shape checking would also refuse graphs onnxruntime runs
            shape_inference.infer_shapes(light, check_type=True, strict_mode=False)
        except Exception as exc:
            raise OnnxotoError(f"{where}: fails onnx.checker: {one_line(exc)}") from exc
    return proto


_PACKED_4BIT = {onnx.TensorProto.INT4, onnx.TensorProto.UINT4, onnx.TensorProto.FLOAT4E2M1}
_COMPLEX = {onnx.TensorProto.COMPLEX64, onnx.TensorProto.COMPLEX128}


def _check_tensor_data(tensor: onnx.TensorProto, where: str) -> None:
    """The data an initializer holds matches its declared dims, before anything reads it."""
    dims = list(tensor.dims)
    elements = 1
    for dim in dims:
        elements *= dim
    name = f"{where}: initializer '{tensor.name}'"
    if min(dims, default=1) < 0:
        raise OnnxotoError(f"{name} has negative dims {dims}; the file is damaged")
    if elements == 0 and len(dims) >= 2:
        raise OnnxotoError(f"{name} has shape {dims}, no elements: a layer with zero channels "
                           f"cannot run; remove the layer or give it channels")
    if tensor.data_type == onnx.TensorProto.STRING or tensor.data_type == 0:
        return
    if tensor.HasField("raw_data"):
        have = len(tensor.raw_data)
        itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
        need = (elements + 1) // 2 if tensor.data_type in _PACKED_4BIT else elements * itemsize
        unit = "bytes"
    else:
        have = len(getattr(tensor, onnx.helper.tensor_dtype_to_field(tensor.data_type)))
        need = ((elements + 1) // 2 if tensor.data_type in _PACKED_4BIT
                else 2 * elements if tensor.data_type in _COMPLEX else elements)
        unit = "values"
    if have != need:
        raise OnnxotoError(f"{name} declares shape {dims} ({need:,} {unit}) but holds "
                           f"{have:,}; the file is damaged or was written wrong")


def _load_external(proto: onnx.ModelProto, path: Path) -> None:
    for tensor in _external_tensors(proto):
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        data_path = path.parent / location
        if not data_path.is_file():
            raise OnnxotoError(
                f"'{path}': initializer '{tensor.name}' stores its data in '{location}', "
                f"which is missing; keep the data file beside the model"
            )
    try:
        onnx.external_data_helper.load_external_data_for_model(proto, str(path.parent))
    except Exception as exc:
        raise OnnxotoError(f"'{path}': cannot read external data ({one_line(exc)})") from exc


def _external_tensors(proto: onnx.ModelProto) -> Iterable[onnx.TensorProto]:
    return (t for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL)


class Constants(Mapping[str, np.ndarray]):
    """Values known before run time (initializers, Constant nodes, and Identity/Transpose/Cast
    views of them), decoded from their protos when read.

    Decoding every weight up front doubled the memory of each command on large models (the
    protos hold the bytes already). Shapes are known without decoding (``shape``); values of
    up to ``LIGHT_LIMIT`` elements (shape constants, per-channel vectors) are kept once
    decoded; a larger one is decoded again once nobody holds it any more (a weak reference),
    so a rule reading a weight twice in a row decodes it once.
    """

    def __init__(self) -> None:
        self._decode: dict[str, Callable[[], np.ndarray]] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._kept: dict[str, np.ndarray] = {}
        self._live: weakref.WeakValueDictionary[str, np.ndarray] = weakref.WeakValueDictionary()

    def add(self, name: str, shape: tuple[int, ...], decode: Callable[[], np.ndarray]) -> None:
        """Register a constant by its shape and how to compute its value."""
        self._decode[name] = decode
        self._shapes[name] = tuple(int(d) for d in shape)

    def shape(self, name: str) -> tuple[int, ...] | None:
        """The shape of a constant without decoding it; None if ``name`` is not one."""
        return self._shapes.get(name)

    def __getitem__(self, name: str) -> np.ndarray:
        value = self._kept.get(name)
        if value is None:
            value = self._live.get(name)
        if value is None:
            value = self._decode[name]()
            if value.size <= LIGHT_LIMIT:
                self._kept[name] = value
            else:
                self._live[name] = value
        return value

    def __contains__(self, name: object) -> bool:
        return name in self._decode

    def __iter__(self) -> Iterator[str]:
        return iter(self._decode)

    def __len__(self) -> int:
        return len(self._decode)


@dataclass
class GraphView:
    """Read-only facts about one graph: constants, shapes, producers and consumers.

    Initializers listed as graph inputs (``keep_initializers_as_inputs``) are treated as
    constants: deployment pipelines do not feed weights.
    """

    model: onnx.ModelProto
    constants: Constants = field(default_factory=Constants)
    shapes: dict[str, tuple[int | str | None, ...]] = field(default_factory=dict)
    producer: dict[str, onnx.NodeProto] = field(default_factory=dict)
    consumers: dict[str, list[onnx.NodeProto]] = field(default_factory=dict)
    initializers: set[str] = field(default_factory=set)
    constant_nodes: set[str] = field(default_factory=set)
    graph_inputs: list[str] = field(default_factory=list)
    graph_outputs: list[str] = field(default_factory=list)

    @property
    def nodes(self) -> list[onnx.NodeProto]:
        return list(self.model.graph.node)

    def const(self, name: str) -> np.ndarray | None:
        """The value of a tensor if it is known before run time (initializer or Constant)."""
        return self.constants.get(name) if name else None

    def shape(self, name: str) -> tuple[int | None, ...] | None:
        return self.shapes.get(name)

    def const_source(self, name: str) -> tuple[str, tuple[int, ...]] | None:
        """The initializer behind a constant tensor and how its axes map, through
        Identity/Transpose/Cast chains that only this path uses (so slicing is safe).

        Returns ``(initializer, perm)`` where tensor axis ``a`` is initializer axis ``perm[a]``.
        """
        perm: tuple[int, ...] | None = None
        current = name
        while current not in self.initializers and current not in self.constant_nodes:
            node = self.producer.get(current)
            if node is None or node.op_type not in ("Identity", "Transpose", "Cast"):
                return None
            if len(self.consumers.get(node.input[0], [])) != 1:
                return None
            if node.op_type == "Transpose":
                rank = self.rank(node.input[0])
                if rank is None:
                    return None
                attr = {a.name: a for a in node.attribute}.get("perm")
                step = tuple(attr.ints) if attr is not None else tuple(reversed(range(rank)))
                perm = step if perm is None else tuple(step[p] for p in perm)
            current = node.input[0]
        shape = self.constants.shape(current)
        if shape is None:
            return None
        return current, perm if perm is not None else tuple(range(len(shape)))

    def rank(self, name: str) -> int | None:
        shape = self.shapes.get(name)
        return None if shape is None else len(shape)


def reads(node: onnx.NodeProto) -> list[str]:
    """Names a node reads: its inputs, and names read inside its subgraphs (If/Loop/Scan
    bodies see the outer scope), recursively. Names a body defines itself are included too;
    callers look names up in the outer graph, where those do not exist."""
    names = [n for n in node.input if n]
    if not has_subgraph(node):
        return names
    for attr in node.attribute:
        for graph in [attr.g] if attr.HasField("g") else list(attr.graphs):
            for inner in graph.node:
                names.extend(reads(inner))
    return names


# The default-domain ops with graph attributes; any other default-domain node has none, which
# spares a walk over its attributes (a few ms per pass on ResNet-50, and passes are many).
_BODY_OPS = frozenset({"If", "Loop", "Scan", "SequenceMap"})


def has_subgraph(node: onnx.NodeProto) -> bool:
    if node.domain in ("", "ai.onnx") and node.op_type not in _BODY_OPS:
        return False
    return any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
               for a in node.attribute)


def build_view(model: onnx.ModelProto) -> GraphView:
    """Collect constants, inferred shapes and edge maps. Unknown dims become None."""
    graph = model.graph
    view = GraphView(model=model)
    view.initializers = {t.name for t in graph.initializer}
    for tensor in graph.initializer:
        view.constants.add(tensor.name, tuple(tensor.dims),
                           functools.partial(numpy_helper.to_array, tensor))
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            constant = _constant_node(node)
            if constant is not None:
                view.constants.add(node.output[0], *constant)
                view.constant_nodes.add(node.output[0])
    _fold_constant_views(view.constants, graph.node)
    view.graph_inputs = [i.name for i in graph.input if i.name not in view.initializers]
    view.graph_outputs = [o.name for o in graph.output]
    for node in graph.node:
        for out in node.output:
            if out:
                view.producer[out] = node
        for inp in node.input:
            if inp:
                view.consumers.setdefault(inp, []).append(node)
        if has_subgraph(node):  # an If/Loop/Scan body reading outer tensors consumes them too
            for inp in dict.fromkeys(reads(node)):
                if inp not in node.input:
                    view.consumers.setdefault(inp, []).append(node)
    view.shapes = shape_map(model, symbols=True)
    for name in view.constants:
        view.shapes[name] = view.constants.shape(name)
    return view


def _fold_constant_views(constants: Constants, nodes) -> None:
    """Give Identity/Transpose/Cast of a constant a value too (weights exported as W^T),
    computed from the source's when read."""
    for node in nodes:
        source = node.input[0] if node.input else ""
        if node.op_type not in ("Identity", "Transpose", "Cast") or source not in constants:
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        shape = constants.shape(source)
        if node.op_type == "Transpose":
            perm = attrs.get("perm") or list(reversed(range(len(shape))))
            shape = tuple(shape[p] for p in perm)
            decode = functools.partial(_transposed, constants, source, perm)
        elif node.op_type == "Cast":
            dtype = onnx.helper.tensor_dtype_to_np_dtype(attrs["to"])
            decode = functools.partial(_cast, constants, source, dtype)
        else:
            decode = functools.partial(constants.__getitem__, source)
        constants.add(node.output[0], shape, decode)


def _transposed(constants: Constants, source: str, perm: list[int]) -> np.ndarray:
    return np.transpose(constants[source], perm)


def _cast(constants: Constants, source: str, dtype: np.dtype) -> np.ndarray:
    return constants[source].astype(dtype)


def _dim(dim, symbols: bool) -> Dim:
    if dim.HasField("dim_value") and dim.dim_value > 0:
        return int(dim.dim_value)
    if symbols and dim.HasField("dim_param") and dim.dim_param:
        return dim.dim_param
    return None


def _constant_node(node: onnx.NodeProto,
                   ) -> tuple[tuple[int, ...], Callable[[], np.ndarray]] | None:
    """The shape of a Constant node's value and how to decode it (None: a sparse or string
    value, which no rule reads)."""
    for attr in node.attribute:
        if attr.name == "value":
            return tuple(attr.t.dims), functools.partial(numpy_helper.to_array, attr.t)
        if attr.name in ("value_float", "value_int"):
            return (), functools.partial(_attribute_array, attr)
        if attr.name in ("value_floats", "value_ints"):
            count = len(attr.floats) if attr.name == "value_floats" else len(attr.ints)
            return (count,), functools.partial(_attribute_array, attr)
    return None


def _attribute_array(attr: onnx.AttributeProto) -> np.ndarray:
    value = onnx.helper.get_attribute_value(attr)
    return np.array(list(value) if isinstance(value, Iterable) else value)


LIGHT_LIMIT = 4096


def light_copy(model: onnx.ModelProto, *, limit: int = LIGHT_LIMIT) -> onnx.ModelProto:
    """The model with large initializers turned into typed graph inputs.

    Checking and shape inference only need their types and shapes; not serializing the weights
    makes both fast and lets models over 2 GB through.
    """
    light = onnx.ModelProto()
    heavy_graph = model.graph
    light.CopyFrom(onnx.ModelProto(ir_version=model.ir_version, opset_import=model.opset_import,
                                   producer_name=model.producer_name, domain=model.domain,
                                   model_version=model.model_version, functions=model.functions,
                                   metadata_props=model.metadata_props))
    graph = light.graph
    graph.name = heavy_graph.name
    graph.node.extend(heavy_graph.node)
    graph.input.extend(heavy_graph.input)
    graph.output.extend(heavy_graph.output)
    graph.value_info.extend(heavy_graph.value_info)
    declared = {i.name for i in heavy_graph.input}
    for tensor in heavy_graph.initializer:
        if _elements(tensor) <= limit:
            graph.initializer.append(tensor)
        elif tensor.name not in declared:
            graph.input.append(onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type,
                                                                  list(tensor.dims)))
    return light


def _elements(tensor: onnx.TensorProto) -> int:
    count = 1
    for dim in tensor.dims:
        count *= dim
    return count


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Shape inference on the weightless copy; on failure the copy as it was (shapes unknown)."""
    light = light_copy(model)
    try:
        return shape_inference.infer_shapes(light, strict_mode=False, data_prop=True)
    except Exception:
        return light


Dim = int | str | None


def shape_map(model: onnx.ModelProto, *, symbols: bool = False) -> dict[str, tuple[Dim, ...]]:
    """Name -> inferred shape of every tensor, initializers included.

    Unknown dims are None; with ``symbols`` a named dynamic dim (batch "N") is kept as its
    name, so reshapes that carry it along can still be followed.
    """
    inferred = infer_shapes(model)
    shapes: dict[str, tuple[int | None, ...]] = {}
    graph = inferred.graph
    for info in list(graph.input) + list(graph.value_info) + list(graph.output):
        tensor_type = info.type.tensor_type
        if not tensor_type.HasField("shape"):
            continue
        dims = tuple(_dim(d, symbols) for d in tensor_type.shape.dim)
        shapes[info.name] = dims
    for tensor in graph.initializer:
        shapes[tensor.name] = tuple(int(d) for d in tensor.dims)
    return shapes
