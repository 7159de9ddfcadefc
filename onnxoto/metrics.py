"""Model size and cost: params, bytes, MACs (FLOPs = 2 x MACs, labelled), latency.

Everything is counted over the nodes that graph outputs depend on, because that is what
onnxruntime executes: dead nodes and unused initializers cost nothing at run time. Results are
data; ``compare_metrics`` turns two of them into rows and ``render_table`` turns rows into text.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx

from onnxoto import runtime
from onnxoto.canonical import folded, static_shapes
from onnxoto.errors import OnnxotoError
from onnxoto.files import model_files
from onnxoto.graph import ModelLike, load_model, reads

# Dims as inferred: an int for a static dim, None for a dynamic one; the shape is None if unknown.
Shape = tuple[int | None, ...]

_FLOAT_BITS = {
    onnx.TensorProto.FLOAT: 32,
    onnx.TensorProto.DOUBLE: 64,
    onnx.TensorProto.FLOAT16: 16,
    onnx.TensorProto.BFLOAT16: 16,
    onnx.TensorProto.FLOAT8E4M3FN: 8,
    onnx.TensorProto.FLOAT8E4M3FNUZ: 8,
    onnx.TensorProto.FLOAT8E5M2: 8,
    onnx.TensorProto.FLOAT8E5M2FNUZ: 8,
    onnx.TensorProto.FLOAT4E2M1: 4,
}

# Ops whose cost is about one operation per output element; listed apart from MACs.
ELEMENTWISE_OPS = frozenset(
    {
        "Abs", "Add", "BatchNormalization", "Ceil", "Clip", "Cos", "Div", "Elu", "Equal", "Erf",
        "Exp", "Floor", "Gelu", "Greater", "HardSigmoid", "HardSwish", "InstanceNormalization",
        "LayerNormalization", "LeakyRelu", "Less", "Log", "Max", "Mean", "Min", "Mish", "Mul",
        "Neg", "Not", "PRelu", "Pow", "Reciprocal", "Relu", "Round", "Selu", "Sigmoid", "Sign",
        "Sin", "Softplus", "Softsign", "Sqrt", "Sub", "Sum", "Tanh", "Where",
    }
)  # fmt: skip


@dataclass
class ModelMetrics:
    """Size and cost of one model. MACs are multiply-accumulates; FLOPs are 2 x MACs."""

    params: int
    param_bytes: int
    file_bytes: int | None
    macs: int
    macs_by_op: dict[str, int] = field(default_factory=dict)
    macs_by_node: dict[str, int] = field(default_factory=dict)
    elementwise_ops: int = 0
    op_counts: dict[str, int] = field(default_factory=dict)
    unknown_macs_nodes: list[str] = field(default_factory=list)
    unknown_elementwise_nodes: list[str] = field(default_factory=list)

    @property
    def flops(self) -> int:
        """FLOPs (2 x MACs): one multiply and one add per MAC."""
        return 2 * self.macs

    @property
    def nodes(self) -> int:
        return sum(self.op_counts.values())

    def to_dict(self) -> dict:
        return {**asdict(self), "flops": self.flops, "nodes": self.nodes}


def measure(model: ModelLike) -> ModelMetrics:
    """Params, bytes, MACs and op counts of the part of the graph the outputs depend on.

    MACs come from shapes inferred with a dynamic batch at 1 and the shape computations built
    from it folded (canonical.static_shapes), so a model with a symbolic batch reports MACs per
    sample, also where the batch is folded into another axis; other dynamic dims count as 1.
    Nodes whose needed shapes stay unknown are skipped and named in ``unknown_macs_nodes``.
    ``file_bytes`` is the size on disk including external data for a path, else the serialized
    size of the proto.
    """
    on_disk = not isinstance(model, onnx.ModelProto)
    disk_bytes = _disk_bytes(Path(model)) if on_disk else 0  # reads the file: before it is held
    proto = folded(load_model(model), in_place=on_disk)
    nodes = live_nodes(proto)
    params, param_bits = _count_params(proto, nodes)
    cost = _compute_cost(nodes, static_shapes(proto))
    return ModelMetrics(
        params=params,
        param_bytes=(param_bits + 7) // 8,
        file_bytes=disk_bytes if on_disk else proto.ByteSize(),
        macs=sum(cost.macs_by_op.values()),
        macs_by_op=dict(sorted(cost.macs_by_op.items())),
        macs_by_node=cost.macs_by_node,
        elementwise_ops=cost.elementwise,
        op_counts=dict(sorted(Counter(n.op_type for n in nodes).items())),
        unknown_macs_nodes=cost.unknown_macs,
        unknown_elementwise_nodes=cost.unknown_elementwise,
    )


@dataclass
class _Cost:
    macs_by_op: Counter[str] = field(default_factory=Counter)
    macs_by_node: dict[str, int] = field(default_factory=dict)
    elementwise: int = 0
    unknown_macs: list[str] = field(default_factory=list)
    unknown_elementwise: list[str] = field(default_factory=list)


def _compute_cost(nodes: list[onnx.NodeProto], shapes: dict[str, Shape]) -> _Cost:
    """MACs per op type from ``MAC_RULES``; output elements of ``ELEMENTWISE_OPS`` apart."""
    cost = _Cost()
    for index, node in enumerate(nodes):
        label = node.name or f"{node.op_type}_{index}"
        rule = MAC_RULES.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        if rule is not None:
            macs = _node_macs(rule, node, shapes)
            if macs is None:
                cost.unknown_macs.append(label)
            else:
                cost.macs_by_op[node.op_type] += macs
                cost.macs_by_node[label] = macs
        elif node.op_type in ELEMENTWISE_OPS:
            out = shapes.get(node.output[0]) if node.output else None
            if out is None:
                cost.unknown_elementwise.append(label)
            else:
                cost.elementwise += _numel(out)
    return cost


def live_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Top-level nodes that some graph output depends on, in graph order.

    Names read inside a node's subgraphs (If/Loop/Scan bodies reading outer tensors) count as
    that node's inputs.
    """
    producer = {out: i for i, node in enumerate(model.graph.node) for out in node.output if out}
    live: set[int] = set()
    stack = [o.name for o in model.graph.output]
    seen: set[str] = set()
    while stack:
        name = stack.pop()
        if name in seen or name not in producer:
            continue
        seen.add(name)
        index = producer[name]
        if index in live:
            continue
        live.add(index)
        stack.extend(reads(model.graph.node[index]))
    return [node for i, node in enumerate(model.graph.node) if i in live]


def _count_params(model: onnx.ModelProto, nodes: list[onnx.NodeProto]) -> tuple[int, int]:
    """Elements and bits of float initializers and Constant tensors the live nodes read."""
    read = {name for node in nodes for name in reads(node)}
    read.update(o.name for o in model.graph.output)  # an initializer can itself be an output
    sizes = [_tensor_size(t) for t in model.graph.initializer if t.name in read]
    for node in nodes:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            sizes.extend(_constant_size(attr) for attr in node.attribute)
    return sum(n for n, _ in sizes), sum(b for _, b in sizes)


def _tensor_size(tensor: onnx.TensorProto) -> tuple[int, int]:
    width = _FLOAT_BITS.get(tensor.data_type)
    if width is None:
        return 0, 0
    count = math.prod(tensor.dims)
    return count, count * width


def _constant_size(attr: onnx.AttributeProto) -> tuple[int, int]:
    if attr.name == "value":
        return _tensor_size(attr.t)
    if attr.name == "value_float":
        return 1, 32
    if attr.name == "value_floats":
        return len(attr.floats), 32 * len(attr.floats)
    return 0, 0


def _disk_bytes(path: Path) -> int:
    """Model file plus every external data file it names, each counted once (a missing one is
    left to load_model, which says which)."""
    return sum(os.path.getsize(f) for f in dict.fromkeys(model_files(path)) if f.is_file())


# --- MACs: one small function per op; each gets the node and returns MACs or None (unknown).

MacRule = Callable[[onnx.NodeProto, list[Shape | None], list[Shape | None]], int | None]


def _node_macs(rule: MacRule, node: onnx.NodeProto, shapes: dict[str, Shape]) -> int | None:
    inputs = [shapes.get(name) if name else None for name in node.input]
    outputs = [shapes.get(name) if name else None for name in node.output]
    return rule(node, inputs, outputs)


def _at(shapes: list[Shape | None], index: int) -> Shape | None:
    return shapes[index] if index < len(shapes) else None


def _conv_macs(node: onnx.NodeProto, inputs: list, outputs: list) -> int | None:
    """N * C_out * prod(out spatial) * (C_in / group) * prod(kernel) = numel(Y) * prod(W[1:])."""
    weight, out = _at(inputs, 1), _at(outputs, 0)
    if weight is None or out is None:
        return None
    return _numel(out) * _numel(weight[1:])


def _conv_transpose_macs(node: onnx.NodeProto, inputs: list, outputs: list) -> int | None:
    """N * C_in * prod(in spatial) * (C_out / group) * prod(kernel) = numel(X) * prod(W[1:])."""
    data, weight = _at(inputs, 0), _at(inputs, 1)
    if data is None or weight is None:
        return None
    return _numel(data) * _numel(weight[1:])


def _gemm_macs(node: onnx.NodeProto, inputs: list, outputs: list) -> int | None:
    """M * N * K, reading transA / transB."""
    a, b = _at(inputs, 0), _at(inputs, 1)
    if a is None or b is None or len(a) != 2 or len(b) != 2:
        return None
    attrs = {attr.name: attr.i for attr in node.attribute}
    m, k = (a[1], a[0]) if attrs.get("transA", 0) else (a[0], a[1])
    n = b[0] if attrs.get("transB", 0) else b[1]
    return _numel((m, n, k))


def _matmul_macs(node: onnx.NodeProto, inputs: list, outputs: list) -> int | None:
    """prod(broadcast batch dims) * M * N * K with numpy semantics (1-D operands included)."""
    a, b = _at(inputs, 0), _at(inputs, 1)
    if not a or not b:
        return None
    a_dims = [_dim(d) for d in a] if len(a) > 1 else [1, _dim(a[0])]
    b_dims = [_dim(d) for d in b] if len(b) > 1 else [_dim(b[0]), 1]
    try:
        batch = np.broadcast_shapes(tuple(a_dims[:-2]), tuple(b_dims[:-2]))
    except ValueError:
        return None
    m, k, n = a_dims[-2], a_dims[-1], b_dims[-1]
    return math.prod(batch) * m * n * k


MAC_RULES: dict[str, MacRule] = {
    "Conv": _conv_macs,
    "ConvTranspose": _conv_transpose_macs,
    "Gemm": _gemm_macs,
    "MatMul": _matmul_macs,
}


def _dim(value: int | None) -> int:
    return 1 if value is None else int(value)


def _numel(shape: Sequence[int | None]) -> int:
    return math.prod(_dim(d) for d in shape)


# --- Latency


@dataclass
class Latency:
    """Wall time of one ``session.run`` on seeded random inputs, in milliseconds."""

    median_ms: float
    p90_ms: float
    mean_ms: float
    runs: int
    warmup: int
    provider: str
    threads: int = 0
    inputs: dict[str, list[int]] = field(default_factory=dict)

    def describe(self) -> str:
        """What was timed, e.g. "CPUExecutionProvider, threads onnxruntime default, input
        1x3x224x224, 50 runs after 5 warmup"."""
        threads = self.threads or "onnxruntime default"
        shapes = ", ".join(f"{name} {'x'.join(map(str, dims)) or 'scalar'}"
                           for name, dims in self.inputs.items()) or "no inputs"
        return (f"{self.provider}, threads {threads}, {shapes}, {self.runs} runs after "
                f"{self.warmup} warmup")

    def to_dict(self) -> dict:
        return asdict(self)


def measure_latency(
    model: ModelLike,
    *,
    runs: int = 50,
    warmup: int = 5,
    provider: str = "cpu",
    threads: int = 0,
    seed: int = 0,
    dynamic_dim: int = 1,
    shapes: Mapping[str, Sequence[int]] | None = None,
) -> Latency:
    """Time ``runs`` inferences after ``warmup`` untimed ones (first runs allocate and tune).

    Defaults to 50 runs, 5 warmup, CPU (``provider`` as in runtime.providers_for), onnxruntime's
    own thread count (``threads`` 0), seed 0; dynamic dims ``dynamic_dim`` (1) and the declared
    shapes unless ``shapes`` gives them, as in ``random_inputs``. The result says which
    provider, threads and input shapes it timed.
    """
    if runs < 1 or warmup < 0:
        raise OnnxotoError(f"latency needs runs >= 1 and warmup >= 0, got {runs} and {warmup}")
    proto = load_model(model)
    inputs = runtime.random_inputs(proto, seed=seed, batch=dynamic_dim, dynamic_dim=dynamic_dim,
                                   shapes=shapes)
    sess = runtime.session(proto, providers=runtime.providers_for(provider), threads=threads)
    for _ in range(warmup):
        runtime.run(sess, inputs)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        runtime.run(sess, inputs)
        times.append((time.perf_counter() - start) * 1e3)
    return Latency(
        median_ms=statistics.median(times),
        p90_ms=float(np.percentile(times, 90)),
        mean_ms=statistics.fmean(times),
        runs=runs,
        warmup=warmup,
        provider=sess.get_providers()[0],
        threads=threads,
        inputs={name: list(array.shape) for name, array in inputs.items()},
    )


# --- Before/after rows and their plain-text rendering


class Percent(float):
    """A ratio that renders as a percentage (0.25 -> '25.0%')."""


@dataclass
class Row:
    """One line of a before/after table; ``ratio`` is after / before, None when before is 0."""

    name: str
    before: int | float | None
    after: int | float | None
    ratio: float | None

    def cells(self) -> list[object]:
        ratio = None if self.ratio is None else Percent(self.ratio)
        return [self.name, self.before, self.after, ratio]

    def to_dict(self) -> dict:
        return asdict(self)


ROW_HEADERS = ("metric", "before", "after", "after/before")


def compare_metrics(before: ModelMetrics, after: ModelMetrics) -> list[Row]:
    """Rows for params, bytes, MACs, FLOPs (2 x MACs), elementwise ops and node count."""
    pairs = [
        ("params", before.params, after.params),
        ("param bytes", before.param_bytes, after.param_bytes),
        ("file bytes", before.file_bytes, after.file_bytes),
        ("MACs", before.macs, after.macs),
        ("FLOPs (2 x MACs)", before.flops, after.flops),
        ("elementwise ops", before.elementwise_ops, after.elementwise_ops),
        ("nodes", before.nodes, after.nodes),
    ]
    return [_row(name, old, new) for name, old, new in pairs]


def compare_latency(before: Latency, after: Latency) -> list[Row]:
    """Rows for median, p90 and mean latency in milliseconds."""
    return [
        _row(f"{label} ms", getattr(before, attr), getattr(after, attr))
        for label, attr in (("median", "median_ms"), ("p90", "p90_ms"), ("mean", "mean_ms"))
    ]


def _row(name: str, before: int | float | None, after: int | float | None) -> Row:
    ratio = None if before is None or after is None or before == 0 else after / before
    return Row(name=name, before=before, after=after, ratio=ratio)


def render_table(
    rows: Sequence[Row | Sequence[object]], headers: Sequence[str] = ROW_HEADERS
) -> str:
    """Aligned plain text: first column left, the rest right; ints get thousands separators,
    floats two decimals, ``Percent`` one decimal with '%', None '-'."""
    body = [[_format(c) for c in (r.cells() if isinstance(r, Row) else r)] for r in rows]
    table = [list(headers), *body]
    widths = [max(len(line[i]) for line in table if i < len(line)) for i in range(len(headers))]
    lines = []
    for line in table:
        cells = [
            cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i])
            for i, cell in enumerate(line)
        ]
        lines.append("  ".join(cells).rstrip())
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _format(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, Percent):
        return f"{value * 100:.1f}%"
    if isinstance(value, bool) or isinstance(value, str):
        return str(value)
    if isinstance(value, int | np.integer):
        return f"{int(value):,}"
    if isinstance(value, float | np.floating):
        return f"{float(value):,.2f}"
    return str(value)
