"""A tiny fluent builder of opset-17 float32 test graphs, and the checks the rule tests share.

    g = GraphBuilder(seed=0)
    x = g.input("x", [1, 3, 8, 8])
    y = g.op("Relu", [g.bn(g.conv(x, 8, k=3, pad=1, name="c1"))])
    model = g.build(outputs=[g.conv(y, 4, name="c2")])

Random weights are seeded and never trivial (BatchNorm variances positive, scales away from 1),
so zeroing a channel always shows in the outputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper, shape_inference

from onnxoto import runtime
from onnxoto.groups import Group, Member
from onnxoto.partition import Partition
from tests.invariance import invariance_gap, removal_mask

OPSET = 17
IR_VERSION = 8


class GraphBuilder:
    """Collects nodes, initializers and inputs; every helper returns its output tensor name.

    Args:
        seed: seeds every random initializer. Defaults to 0.
        opset: the default-domain opset. Defaults to 17.
    """

    def __init__(self, seed: int = 0, opset: int = OPSET) -> None:
        self.rng = np.random.default_rng(seed)
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.domains: set[str] = set()
        self.value_info: list[onnx.ValueInfoProto] = []
        self._count = 0

    # --- tensors ------------------------------------------------------------------------
    def _fresh(self, stem: str) -> str:
        self._count += 1
        return f"{stem}_{self._count}"

    def input(self, name: str, shape: Sequence[int | str | None],
              elem_type: int = TensorProto.FLOAT) -> str:
        """A graph input (strings or None are dynamic dims)."""
        self.inputs.append(helper.make_tensor_value_info(name, elem_type, list(shape)))
        return name

    def declare(self, name: str, shape: Sequence[int]) -> str:
        """State a float tensor's shape where onnx cannot infer it (function ops)."""
        self.value_info.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape)))
        return name

    def init(self, name: str, array) -> str:
        """An initializer holding ``array`` as given (ints stay ints)."""
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def const(self, name: str, array) -> str:
        """A Constant node whose output is named ``name``."""
        tensor = numpy_helper.from_array(np.asarray(array), name)
        self.nodes.append(helper.make_node("Constant", [], [name], value=tensor,
                                           name=f"const_{name}"))
        return name

    def weight(self, name: str, shape: Sequence[int], *, low: float | None = None,
               high: float | None = None) -> str:
        """A seeded float32 initializer: standard normal, or uniform in [low, high)."""
        if low is None:
            array = self.rng.standard_normal(list(shape))
        else:
            array = self.rng.uniform(low, high, size=list(shape))
        return self.init(name, np.asarray(array, dtype=np.float32))

    def shape(self, name: str) -> tuple[int, ...]:
        """The inferred static shape of ``name`` in the graph built so far."""
        if name in {t.name for t in self.inits}:
            return tuple(next(t.dims for t in self.inits if t.name == name))
        model = self._model([], check=False)
        inferred = shape_inference.infer_shapes(model, strict_mode=True)
        for info in [*inferred.graph.input, *inferred.graph.value_info]:
            if info.name == name:
                return tuple(d.dim_value for d in info.type.tensor_type.shape.dim)
        raise KeyError(f"no shape inferred for '{name}'")

    # --- nodes --------------------------------------------------------------------------
    def op(self, op_type: str, inputs: Sequence[str], *, name: str | None = None,
           outputs: int = 1, domain: str = "", **attrs) -> str | list[str]:
        """Any node; returns its output name (a list when ``outputs`` > 1)."""
        name = name or self._fresh(op_type.lower())
        outs = [f"{name}_out"] if outputs == 1 else [f"{name}_out{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=name,
                                           domain=domain or None, **attrs))
        if domain:
            self.domains.add(domain)
        return outs[0] if outputs == 1 else outs

    def conv(self, x: str, c_out: int, *, k: int = 1, pad: int = 0, stride: int = 1,
             group: int = 1, bias: bool = False, name: str | None = None) -> str:
        """Conv with weight ``<name>.weight`` (and ``<name>.bias``)."""
        name = name or self._fresh("conv")
        c_in = self.shape(x)[1]
        inputs = [x, self.weight(f"{name}.weight", [c_out, c_in // group, k, k])]
        if bias:
            inputs.append(self.weight(f"{name}.bias", [c_out]))
        return self.op("Conv", inputs, name=name, kernel_shape=[k, k], pads=[pad] * 4,
                       strides=[stride, stride], group=group)

    def conv_transpose(self, x: str, c_out: int, *, k: int = 2, stride: int = 2,
                       bias: bool = False, name: str | None = None) -> str:
        name = name or self._fresh("deconv")
        c_in = self.shape(x)[1]
        inputs = [x, self.weight(f"{name}.weight", [c_in, c_out, k, k])]
        if bias:
            inputs.append(self.weight(f"{name}.bias", [c_out]))
        return self.op("ConvTranspose", inputs, name=name, kernel_shape=[k, k],
                       strides=[stride, stride])

    def gemm(self, x: str, n_out: int, *, trans_b: bool = False, bias: bool = True,
             name: str | None = None) -> str:
        """Gemm with B ``<name>.weight`` of shape (in, out), or (out, in) with transB=1."""
        name = name or self._fresh("gemm")
        n_in = self.shape(x)[1]
        shape = [n_out, n_in] if trans_b else [n_in, n_out]
        inputs = [x, self.weight(f"{name}.weight", shape)]
        if bias:
            inputs.append(self.weight(f"{name}.bias", [n_out]))
        return self.op("Gemm", inputs, name=name, transB=int(trans_b))

    def matmul(self, x: str, n_out: int, *, transposed: bool = False,
               name: str | None = None) -> str:
        """MatMul by ``<name>.weight`` (in, out); ``transposed`` stores it as (out, in) behind a
        Transpose node, as the legacy torch exporter does."""
        name = name or self._fresh("matmul")
        n_in = self.shape(x)[-1]
        if transposed:
            stored = self.weight(f"{name}.weight", [n_out, n_in])
            w = self.op("Transpose", [stored], name=f"{name}_wt", perm=[1, 0])
        else:
            w = self.weight(f"{name}.weight", [n_in, n_out])
        return self.op("MatMul", [x, w], name=name)

    def bn(self, x: str, *, name: str | None = None) -> str:
        """BatchNormalization with non-trivial scale, bias, mean and positive variance."""
        name = name or self._fresh("bn")
        c = self.shape(x)[1]
        params = [
            self.weight(f"{name}.weight", [c], low=0.5, high=1.5),
            self.weight(f"{name}.bias", [c]),
            self.weight(f"{name}.running_mean", [c]),
            self.weight(f"{name}.running_var", [c], low=0.5, high=2.0),
        ]
        return self.op("BatchNormalization", [x, *params], name=name)

    # --- model --------------------------------------------------------------------------
    def _model(self, outputs: Sequence[str], *, check: bool) -> onnx.ModelProto:
        outs = [helper.make_tensor_value_info(o, TensorProto.UNDEFINED, None) for o in outputs]
        graph = helper.make_graph(self.nodes, "test", self.inputs, outs, initializer=self.inits,
                                  value_info=self.value_info)
        opsets = [helper.make_opsetid("", self.opset)]
        opsets += [helper.make_opsetid(d, 1) for d in sorted(self.domains)]
        model = helper.make_model(graph, opset_imports=opsets)
        model.ir_version = max(IR_VERSION, helper.find_min_ir_version_for(opsets[:1]))
        if check:
            onnx.checker.check_model(model)
        return model

    def build(self, outputs: Sequence[str]) -> onnx.ModelProto:
        """The model with typed outputs; runs shape inference (strict unless a custom domain
        is used) and ``onnx.checker``."""
        model = self._model(outputs, check=False)
        inferred = shape_inference.infer_shapes(model, strict_mode=not self.domains)
        graph = inferred.graph
        known = {v.name: v for v in [*graph.value_info, *graph.input, *graph.output]
                 if v.type.tensor_type.elem_type}
        del model.graph.output[:]
        for name in outputs:
            info = known.get(name)
            if info is None:
                info = helper.make_tensor_value_info(name, TensorProto.FLOAT, None)
            model.graph.output.append(info)
        onnx.checker.check_model(model, full_check=not self.domains)
        return model


# --- checks shared by the rule tests ---------------------------------------------------------
def group_with(result: Partition, initializer: str, role: str | None = None) -> Group:
    """The one group having a member on ``initializer`` (with ``role`` if given)."""
    hits = [g for g in result.groups
            if any(m.initializer == initializer and role in (None, m.role) for m in g.members)]
    assert len(hits) == 1, f"'{initializer}' is in {len(hits)} groups: {result.groups}"
    return hits[0]


def member(group: Group, initializer: str) -> Member:
    """The one member of ``group`` on ``initializer``."""
    hits = [m for m in group.members if m.initializer == initializer]
    assert len(hits) == 1, f"'{initializer}' has {len(hits)} members in group {group.id}"
    return hits[0]


def roles(group: Group) -> dict[str, str]:
    """initializer -> role, for asserting a group's full membership at once."""
    return {m.initializer: m.role for m in group.members}


def assert_invariant(model: onnx.ModelProto, result: Partition, *, seeds=(0, 1),
                     dead_ok: bool = False) -> None:
    """Every prunable group is zero-invariant, and zeroing it changes the outputs.

    ``dead_ok`` skips the change check, for graphs whose unread channels are legitimately dead.
    Defaults to seeds (0, 1) for the removal masks and ``dead_ok=False``.
    """
    inputs = runtime.random_inputs(model, seed=3)
    assert result.prunable, "no prunable group to check"
    for group in result.prunable:
        for seed in seeds:
            gap, change = invariance_gap(model, group, removal_mask(group, seed), inputs)
            assert gap <= 1e-5, f"group {group.id}: consumers matter (gap {gap:.2e})"
            assert dead_ok or change > 0, \
                f"group {group.id}: zeroing its producers changes nothing"
    assert_shrinks(model, result, seeds=seeds)


def assert_shrinks(model: onnx.ModelProto, result: Partition, *, seeds=(0, 1)) -> None:
    """Shrinking every prunable group at once (random masks) validates in onnxruntime."""
    from onnxoto.shrink import shrink

    for seed in seeds:
        masks = {g.id: removal_mask(g, seed + g.id) for g in result.prunable}
        masks = {gid: keep for gid, keep in masks.items() if keep.any()}
        outcome = shrink(model, masks, result=result)
        assert outcome.passed, outcome.comparison.summary()


def gap_of(model: onnx.ModelProto, group: Group, seed: int = 0) -> float:
    """The invariance gap of one group (prunable or not), for tests that show a barrier's why."""
    inputs = runtime.random_inputs(model, seed=3)
    return invariance_gap(model, group, removal_mask(group, seed), inputs)[0]


# --- exporter spellings that the canonical pass must undo ------------------------------------
def computed_bias(g: GraphBuilder, data: str, weight: str) -> str:
    """torch 2.14's dynamo spelling of a missing Conv bias: zeros of ``data``'s dtype, expanded
    to ``weight``'s first dim at run time (``data`` is a graph input, so not constant)."""
    zero = g.const(g._fresh("zero"), np.array(0.0, dtype=np.float32))
    cast = g.op("CastLike", [zero, data])
    size = g.op("Shape", [weight], start=0, end=1)
    return g.op("Expand", [cast, size])


def with_computed_biases(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` where every bias-less Conv gets ``computed_bias`` of the first graph
    input, as torch 2.14's dynamo exporter writes it (opset >= 15)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    data = out.graph.input[0].name
    nodes = []
    for index, node in enumerate(out.graph.node):
        if node.op_type == "Conv" and len(node.input) == 2:
            stem = f"bias{index}"
            nodes += [
                helper.make_node("Constant", [], [f"{stem}_zero"], name=f"{stem}_zero",
                                 value=numpy_helper.from_array(np.array(0.0, np.float32))),
                helper.make_node("CastLike", [f"{stem}_zero", data], [f"{stem}_cast"],
                                 name=f"{stem}_cast"),
                helper.make_node("Shape", [node.input[1]], [f"{stem}_size"], name=f"{stem}_size",
                                 start=0, end=1),
                helper.make_node("Expand", [f"{stem}_cast", f"{stem}_size"], [stem], name=stem),
            ]
            node.input.append(stem)
        nodes.append(node)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out
