"""The canonical graph every command works on: computed constants folded, shared weights split.

Exporters differ by version in how they spell the same network. torch 2.14's dynamo exporter
computes a missing Conv bias at run time (``Expand(CastLike(0, x), Shape(W)[0:1])``); the legacy
exporter merges equal parameters into one initializer fed through ``Identity`` nodes; onnxsim
merges them into one initializer read directly by several nodes. A computed tensor has no
initializer to slice and a shared one cannot be sliced per use, so either would bar its groups.
``canonicalize`` turns all of these into plain per-use initializers, in memory (the input file is
never touched), so the groups partition finds are the groups shrink can slice. Partition, shrink
and the written slim model all use the canonical graph.

Only the part of the graph that is computable before run time is evaluated, by one onnxruntime
run of that part alone: importing the whole graph into onnx-graphsurgeon copies every weight and
costs seconds on ResNet-50, and even on the small part graphsurgeon's import, copy and
``fold_constants`` cost several times the run itself. The folded values are spliced back into
the proto, and nodes and initializers nothing reads any more are dropped there (what
graphsurgeon's ``cleanup`` would do; the order stays topological). The pass is skipped when a
cheap scan finds nothing to fold or split (most exports).
Shapes of activations are not folded: an export's batch size is usually its example's, and
baking it into Reshape targets would fix the slim model's batch.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxoto.errors import OnnxotoError
from onnxoto.graph import has_subgraph, infer_shapes, light_copy, reads, shape_map

# Folded tensors over this many bytes stay computed (a Tile to a huge shape is not a weight).
FOLD_LIMIT_BYTES = 1 << 24

# Ops that compute with quantized integers or convert to and from them.
QUANTIZED_OPS = frozenset({
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "ConvInteger",
    "MatMulInteger", "QGemm", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QAttention",
    "MatMulNBits", "QOrderedMatMul",
})

# Ops whose output is not a function of their inputs: folding would freeze one draw.
RANDOM_OPS = frozenset({"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike",
                        "Multinomial", "Bernoulli"})

# A single-use view of a weight: rules already look through it to the initializer, and folding
# it would only rename the weight (state_dict names would be lost).
WEIGHT_VIEWS = ("Identity", "Transpose", "Cast")

_FLOAT_TYPES = frozenset({onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE,
                          onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16})


@dataclass(frozen=True)
class Scan:
    """What the cheap scan found: top-level nodes (indices) computable before run time, and
    float weights read by more than one node."""

    foldable: tuple[int, ...]
    shared: tuple[str, ...]
    batch_reshapes: bool = False

    def __bool__(self) -> bool:
        return bool(self.foldable or self.shared or self.batch_reshapes)


def refuse_quantized(model: onnx.ModelProto, where: str) -> None:
    """Quantized graphs are refused: their channels live in scale/zero-point tensors no rule
    follows yet. Raises OnnxotoError naming the first quantized node."""
    for node in model.graph.node:
        if node.op_type in QUANTIZED_OPS or node.op_type.startswith("QLinear"):
            raise OnnxotoError(f"{where}: quantized (QDQ) model ({node.op_type} node "
                               f"'{node.name}'): prune the float model, then quantize; "
                               f"see README")


def scan(model: onnx.ModelProto) -> Scan:
    """One pass over the top-level nodes: which would fold, which float weights are shared."""
    graph = model.graph
    readers = Counter(name for node in graph.node for name in set(node.input) if name)
    initializers = {t.name: t for t in graph.initializer}
    known = set(initializers)
    foldable = []
    for index, node in enumerate(graph.node):
        if node.op_type == "Constant":
            known.update(node.output)
            continue
        inputs = [name for name in node.input if name]
        if node.op_type == "CastLike":  # only its first input's value matters
            inputs = inputs[:1]
        if inputs and all(name in known for name in inputs) and _foldable_op(node):
            known.update(node.output)
            if not _is_weight_view(node, initializers, readers):
                foldable.append(index)
    shared = tuple(name for name, t in initializers.items()
                   if readers[name] > 1 and _splittable(t))
    batch_reshapes = _batch_only(graph) and any(
        node.op_type == "Reshape" and len(node.input) > 1 and node.input[1] not in known
        for node in graph.node)
    return Scan(tuple(foldable), shared, batch_reshapes)


def canonicalize(model: onnx.ModelProto, *, where: str = "model",
                 in_place: bool = False) -> onnx.ModelProto:
    """The canonical graph of ``model``: ``model`` itself when there is nothing to do.

    Folds every node computable from initializers and constants (a CastLike of a constant
    becomes a Cast to its other input's type first), then gives every further node that reads
    a shared float weight its own copy. Deterministic: the canonical graph of one model always
    has the same tensor names. ``in_place`` edits ``model`` itself (when the caller owns it,
    e.g. just loaded it); otherwise a changed graph is a copy. Defaults to a copy.
    Raises OnnxotoError for a quantized model.
    """
    refuse_quantized(model, where)
    found = scan(model)
    if not found:
        return model
    if not in_place:
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        model = copy
    if found.foldable:
        fold(model, found.foldable, where=where)
    if found.batch_reshapes:
        fix_batch_reshapes(model)
    split_shared(model)
    return model


def folded(model: onnx.ModelProto, *, in_place: bool = False) -> onnx.ModelProto:
    """``model`` with its computed constants folded, for counting: a Slice bound behind
    Unsqueeze(Constant) would otherwise leave the shapes after it unknown and their MACs
    uncounted. Shared weights are not split (each is stored once) and quantized graphs are
    left as they are (folding DequantizeLinear would count int8 weights as floats).
    ``in_place`` as in ``canonicalize``. Defaults to a copy when anything folds.
    """
    found = scan(model)
    if not found.foldable or any(n.op_type in QUANTIZED_OPS for n in model.graph.node):
        return model
    if not in_place:
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        model = copy
    fold(model, found.foldable)
    return model


def fold(model: onnx.ModelProto, foldable: tuple[int, ...], *, where: str = "model") -> None:
    """Replace the ``foldable`` nodes by initializers of the values they compute, in place.

    The constant part of the graph is cut out as a small model (a weight only measured by
    Shape is not copied into it), evaluated by onnxruntime, and spliced back. If folding
    fails, the model stays as it was, with a warning: computed tensors then stay barriers,
    which is safe.
    """
    small, boundary = _constant_part(model, foldable)
    try:
        values = _evaluate(small, boundary)
    except Exception as exc:  # onnxruntime raises many types
        warnings.warn(f"{where}: constant folding failed ({str(exc).splitlines()[0]}); "
                      f"computed tensors are kept as they are", stacklevel=3)
        return
    _splice(model.graph, set(_fold_sources(model, foldable)), values)


def _fold_sources(model: onnx.ModelProto, foldable: tuple[int, ...]) -> list[int]:
    """The foldable nodes and the Constant/weight-view nodes whose values they read (a
    CastLike reads only its first input's value: the node behind its second input, an
    activation, is not part of the constant graph)."""
    graph = model.graph
    chosen = set(foldable)
    producer = {out: i for i, node in enumerate(graph.node) for out in node.output if out}
    for index in foldable:
        node = graph.node[index]
        for name in node.input[:1] if node.op_type == "CastLike" else node.input:
            source = producer.get(name)
            if source is not None and source not in chosen:
                chosen.add(source)
    return sorted(chosen)


def _constant_part(model: onnx.ModelProto,
                   foldable: tuple[int, ...]) -> tuple[onnx.ModelProto, list[str]]:
    """The foldable nodes as a model of their own, and the tensors the rest of the graph reads
    from them (its outputs). A CastLike whose target type is unknown is left out, and so is
    every node that needs its output."""
    graph = model.graph
    indices = _fold_sources(model, foldable)
    nodes = [graph.node[i] for i in indices]
    inside = set(indices)
    outside = {name for i, node in enumerate(graph.node) if i not in inside
               for name in reads(node)} | {o.name for o in graph.output}
    initializers = {t.name: t for t in graph.initializer}
    targets = _elem_types(model, {n.input[1] for n in nodes if n.op_type == "CastLike"})
    available = set(initializers)
    small_nodes = []
    for node in nodes:
        values_read = node.input[:1] if node.op_type == "CastLike" else node.input
        if not all(name in available for name in values_read if name):
            continue
        if node.op_type == "Shape" and node.input[0] in initializers:
            node = _weight_shape(node, initializers[node.input[0]])
        elif node.op_type == "CastLike":
            if not targets.get(node.input[1]):
                continue
            node = helper.make_node("Cast", [node.input[0]], list(node.output), name=node.name,
                                    to=int(targets[node.input[1]]))
        available.update(node.output)
        small_nodes.append(node)
    boundary = [out for node in small_nodes for out in node.output if out in outside]
    read = sorted({name for node in small_nodes for name in node.input if name in initializers})
    small = helper.make_model(
        helper.make_graph(small_nodes, "constant_part", [], [onnx.ValueInfoProto(name=name)
                                                             for name in boundary],
                          initializer=[initializers[name] for name in read]),
        opset_imports=model.opset_import, ir_version=model.ir_version)
    return small, boundary


def _weight_shape(node: onnx.NodeProto, weight: onnx.TensorProto) -> onnx.NodeProto:
    """Shape(W)[start:end] of an initializer as a Constant node: the weight itself need not be
    copied into the constant part (ONNX's start/end are Python slice bounds)."""
    bounds = {a.name: a.i for a in node.attribute}
    dims = list(weight.dims)[bounds.get("start", 0):bounds.get("end", len(weight.dims))]
    value = numpy_helper.from_array(np.array(dims, dtype=np.int64))
    return helper.make_node("Constant", [], list(node.output), name=node.name, value=value)


def _evaluate(small: onnx.ModelProto, boundary: list[str]) -> dict[str, np.ndarray]:
    """name -> value of every boundary tensor of at most FOLD_LIMIT_BYTES.

    The constant part has no inputs, so one onnxruntime run computes every boundary tensor
    (its graph outputs). graphsurgeon's ``fold_constants`` ran the same part through
    onnxruntime after importing and copying it, at several times the cost."""
    if not boundary:
        return {}
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(small.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    values = session.run(boundary, {})
    return {name: value for name, value in zip(boundary, values, strict=True)
            if value.nbytes <= FOLD_LIMIT_BYTES}


def _splice(graph: onnx.GraphProto, candidates: set[int], values: dict[str, np.ndarray]) -> None:
    """Drop the candidate nodes (indices) whose outputs are all folded or no longer read, give
    the folded outputs still read an initializer each, then drop initializers (and their
    graph-input declarations) nothing reads any more. A node with one output that could not
    be folded stays whole, so no tensor is ever defined twice."""
    needed = {o.name for o in graph.output}
    dropped = []
    for index in reversed(range(len(graph.node))):
        node = graph.node[index]
        if index in candidates and all(o in values or o not in needed for o in node.output if o):
            dropped.append(index)
            continue
        needed.update(reads(node))
    provided = {o for i in dropped for o in graph.node[i].output if o in values and o in needed}
    for index in dropped:  # descending, so earlier indices stay valid
        del graph.node[index]
    graph.initializer.extend(numpy_helper.from_array(value, name)
                             for name, value in values.items() if name in provided)
    unused = [i for i, t in enumerate(graph.initializer) if t.name not in needed]
    gone = {graph.initializer[i].name for i in unused}
    for index in reversed(unused):
        del graph.initializer[index]
    stale = [i for i, v in enumerate(graph.input) if v.name in gone]  # weights listed as inputs
    for index in reversed(stale):
        del graph.input[index]


def fix_batch_reshapes(model: onnx.ModelProto) -> None:
    """Give each Reshape whose target is computed from a dynamic batch a constant target, in
    place: the output shape it has at batch 1, with 0 or -1 where it differs at batch 2.

    Exporters build ``x.view(x.size(0), R, C // R, ...)`` from Shape(x) when the batch is
    dynamic; rules cannot tell which computed entry carries the channel count, so the
    channels were barred, while the same export with a static batch has a constant target
    that shrink rewrites. The constant is exact for every batch: the other dims do not depend
    on it, and the moving one is 0 (the input's own dim, where it is that) or -1 (what is
    left). Targets with more than one batch-dependent dim, or whose shapes stay unknown, are
    left as they are (their groups stay barred, which is safe).
    """
    graph = model.graph
    known = {t.name for t in graph.initializer} | {
        o for n in graph.node if n.op_type == "Constant" for o in n.output}
    computed = [node for node in graph.node if node.op_type == "Reshape"
                and len(node.input) > 1 and node.input[1] not in known]
    at_one, at_two = static_shapes(model, batch=1), static_shapes(model, batch=2)
    taken = {t.name for t in graph.initializer} | {o for n in graph.node for o in n.output}
    for node in computed:
        one, two = at_one.get(node.output[0]), at_two.get(node.output[0])
        if not _static_dims(one) or not _static_dims(two) or len(one) != len(two):
            continue
        moving = [axis for axis, (a, b) in enumerate(zip(one, two, strict=True)) if a != b]
        if len(moving) > 1:
            continue
        target = np.array(one, dtype=np.int64)
        target[moving] = -1
        if moving and _copies_input_dim(node, moving[0], at_one, at_two):
            target[moving] = 0  # the input's own dim: inference keeps its symbol (batch)
        name = _fresh(f"{node.output[0]}.target", taken)
        graph.initializer.append(numpy_helper.from_array(target, name))
        node.input[1] = name
    _transpose_without_batch_merge(graph, (at_one, at_two))
    _splice(graph, set(range(len(graph.node))), {})


def _transpose_without_batch_merge(graph: onnx.GraphProto, sizes: tuple[dict, dict]) -> None:
    """Reshape (merge the leading dims) -> Transpose (axis 0 stays) -> Reshape (split them back)
    becomes one Transpose of the unmerged tensor, in place.

    The dynamo exporter's attention transposes K this way (B*heads, N, d); with a dynamic batch
    the merged axis mixes the batch into the heads, which no rule can slice, while the single
    Transpose keeps the heads an axis of their own. Exact: the merged axis is never split
    differently than it was merged.
    """
    readers = Counter(name for node in graph.node for name in reads(node))
    readers.update(o.name for o in graph.output)  # a graph output is read by the caller
    producer = {out: node for node in graph.node for out in node.output}
    reader = {name: node for node in graph.node for name in node.input if readers[name] == 1}
    gone = []
    for transpose in graph.node:
        if transpose.op_type != "Transpose":
            continue
        merge, split = producer.get(transpose.input[0]), reader.get(transpose.output[0])
        if merge is None or split is None or merge.op_type != "Reshape" or \
                split.op_type != "Reshape" or readers[merge.output[0]] != 1:
            continue
        perm = next((list(a.ints) for a in transpose.attribute if a.name == "perm"), None)
        lead = _merged_lead(merge, transpose, split, perm, sizes)
        if lead is None:
            continue
        new_perm = list(range(lead)) + [p + lead - 1 for p in perm[1:]]
        transpose.input[0] = merge.input[0]
        del transpose.attribute[:]
        transpose.attribute.append(helper.make_attribute("perm", new_perm))
        transpose.output[0] = split.output[0]
        gone.append(split)
    for node in gone:
        graph.node.remove(node)


def _merged_lead(merge: onnx.NodeProto, transpose: onnx.NodeProto, split: onnx.NodeProto,
                 perm: list[int] | None, sizes: tuple[dict, dict]) -> int | None:
    """How many leading dims ``merge`` folds into axis 0 when ``split`` restores exactly them
    around a ``transpose`` that keeps axis 0, at both batch sizes; None otherwise."""
    if perm is None or not perm or perm[0] != 0:
        return None
    found = set()
    for shapes in sizes:
        x, merged = shapes.get(merge.input[0]), shapes.get(merge.output[0])
        moved, out = shapes.get(transpose.output[0]), shapes.get(split.output[0])
        if not all(_static_dims(s) for s in (x, merged, moved, out)):
            return None
        lead = len(x) - len(merged) + 1
        if lead < 2 or math.prod(x[:lead]) != merged[0] or tuple(x[lead:]) != tuple(merged[1:]) \
                or tuple(out) != tuple(x[:lead]) + tuple(moved[1:]):
            return None
        found.add(lead)
    return found.pop() if len(found) == 1 else None


def _copies_input_dim(node: onnx.NodeProto, axis: int, at_one: dict, at_two: dict) -> bool:
    """Is output dim ``axis`` the input's dim ``axis`` at both batch sizes, so a 0 entry (copy
    the input's dim, unless allowzero) gives it? Rules then see the same symbol on both sides."""
    if any(a.name == "allowzero" and a.i for a in node.attribute):
        return False
    ins = at_one.get(node.input[0]), at_two.get(node.input[0])
    outs = at_one.get(node.output[0]), at_two.get(node.output[0])
    return all(i is not None and axis < len(i) and i[axis] == o[axis]
               for i, o in zip(ins, outs, strict=True))


def static_shapes(model: onnx.ModelProto, *, batch: int = 1) -> dict[str, tuple]:
    """Name -> shape of every tensor with a dynamic batch set to ``batch`` (see _set_batch),
    the shape computations built from it folded at that size.

    ONNX shape inference propagates Shape -> Gather -> Concat values but stops at Div or Cast,
    so a batch folded into another axis (patches, heads) would stay unknown. Here each Shape of
    a tensor whose shape is known becomes a Constant and the constant part is folded (on the
    weightless copy), until no Shape changes. Unknown dims are None.
    """
    light = light_copy(model)
    _set_batch(light.graph, batch)
    shapes = shape_map(light)
    for _ in range(8):  # each round reaches one more Shape -> ... -> Reshape step
        if not _shapes_to_constants(light.graph, shapes):
            break
        found = scan(light)
        if found.foldable:
            fold(light, found.foldable)
        shapes = shape_map(light)
    return shapes


def _shapes_to_constants(graph: onnx.GraphProto, shapes: dict[str, tuple]) -> bool:
    changed = False
    for index, node in enumerate(graph.node):
        dims = shapes.get(node.input[0]) if node.op_type == "Shape" else None
        if _static_dims(dims, allow_zero=True):
            bounds = {a.name: a.i for a in node.attribute}
            value = np.array(dims, dtype=np.int64)[bounds.get("start", 0):
                                                   bounds.get("end", len(dims))]
            graph.node[index].CopyFrom(helper.make_node(
                "Constant", [], list(node.output), name=node.name,
                value=numpy_helper.from_array(value)))
            changed = True
    return changed


def _static_dims(dims: tuple | None, *, allow_zero: bool = False) -> bool:
    return dims is not None and all(isinstance(d, int) and (d > 0 or allow_zero and d == 0)
                                    for d in dims)


def _data_inputs(graph: onnx.GraphProto) -> list[onnx.ValueInfoProto]:
    """The graph's inputs that are not weights listed as inputs."""
    weights = {t.name for t in graph.initializer}
    return [info for info in graph.input if info.name not in weights]


def _is_dynamic(dim: onnx.TensorShapeProto.Dimension) -> bool:
    return not (dim.HasField("dim_value") and dim.dim_value > 0)


def _batch_only(graph: onnx.GraphProto) -> bool:
    """Some input has a dynamic batch (see _set_batch), and no other input dim is dynamic."""
    batch = False
    for info in _data_inputs(graph):
        dims = info.type.tensor_type.shape.dim
        for axis, dim in enumerate(dims):
            if _is_dynamic(dim):
                if axis > 0 or len(dims) < 2:
                    return False
                batch = True
    return batch


def _set_batch(graph: onnx.GraphProto, value: int) -> None:
    """A dynamic batch (the first dim of an input of rank 2 or more) becomes ``value``; other
    dynamic dims stay symbolic (a 1-D input's length is not a batch). Declared intermediate
    and output shapes (which name the symbols) are forgotten so inference starts afresh."""
    for info in _data_inputs(graph):
        dims = info.type.tensor_type.shape.dim
        if len(dims) >= 2 and _is_dynamic(dims[0]):
            dims[0].dim_value = value
    for info in graph.output:
        info.type.tensor_type.ClearField("shape")
    del graph.value_info[:]


def split_shared(model: onnx.ModelProto) -> None:
    """Give each further node that reads a shared float weight its own copy, in place.

    The first reader keeps the name. Reads from inside If/Loop/Scan bodies keep the original
    too, so partition still sees those as a second user (a barrier).
    """
    graph = model.graph
    protos = {t.name: t for t in graph.initializer if _splittable(t)}
    readers = Counter(name for node in graph.node for name in set(node.input) if name in protos)
    shared = {name for name, count in readers.items() if count > 1}
    if not shared:
        return
    taken = {t.name for t in graph.initializer} | {o for n in graph.node for o in n.output}
    first_reader: dict[str, int] = {}
    for position, node in enumerate(graph.node):
        copies: dict[str, str] = {}
        for index, name in enumerate(node.input):
            if name not in shared or first_reader.setdefault(name, position) == position:
                continue
            if name not in copies:
                copy = graph.initializer.add()
                copy.CopyFrom(protos[name])
                copy.name = copies[name] = _fresh(f"{name}.{node.name or node.op_type}", taken)
            node.input[index] = copies[name]


def _fresh(base: str, taken: set[str]) -> str:
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}.{n}"
    taken.add(name)
    return name


def _foldable_op(node: onnx.NodeProto) -> bool:
    """Default-domain ops without randomness or bodies: onnxruntime computes them exactly."""
    return (node.domain in ("", "ai.onnx") and node.op_type not in RANDOM_OPS
            and not has_subgraph(node))


def _splittable(tensor: onnx.TensorProto) -> bool:
    return tensor.data_type in _FLOAT_TYPES and math.prod(tensor.dims) > 1


def _is_weight_view(node: onnx.NodeProto, initializers: dict, readers: Counter) -> bool:
    source = initializers.get(node.input[0]) if node.input else None
    return (node.op_type in WEIGHT_VIEWS and source is not None and readers[source.name] == 1
            and _splittable(source))


def _elem_types(model: onnx.ModelProto, names: set[str]) -> dict[str, int]:
    """The element type of each of ``names`` that has one: declared (initializers, graph
    inputs, value_info) or inferred. Inference runs only when the declarations do not say."""
    types = {t.name: t.data_type for t in model.graph.initializer if t.name in names}
    for graph in (model.graph, None):
        if not names - types.keys():
            break
        if graph is None:
            graph = infer_shapes(model).graph
        for info in [*graph.input, *graph.value_info, *graph.output]:
            if info.name in names and info.name not in types and info.type.tensor_type.elem_type:
                types[info.name] = info.type.tensor_type.elem_type
    return types
