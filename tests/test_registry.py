"""The rule registry is open: a rule registered for a custom op turns a barrier into a prunable,
shrinkable group; duplicates are refused; the ops partition knows and the ops the torch binding
runs are compared, every difference named with its reason."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import onnxoto
from onnxoto import rules
from onnxoto.errors import OnnxotoError
from onnxoto.masking import zero_channels
from onnxoto.partition import partition
from onnxoto.rules.base import Rule, pass_through
from onnxoto.shrink import ShrinkOptions, shrink
from onnxoto.validate import compare
from tests.graphs import GraphBuilder, group_with

SCALE = 2.0


class MyScaleRule(Rule):
    """com.example MyScale: y = 2 * x, elementwise, so channels pass through and 0 stays 0."""

    op_types = ("MyScale",)

    def follow(self, node, ctx, space, rank) -> None:
        pass_through(node, ctx, space)


@pytest.fixture
def registry(monkeypatch):
    """A private copy of the registry, so a test's registrations end with the test."""
    monkeypatch.setattr(rules, "REGISTRY", dict(rules.REGISTRY))
    return rules.REGISTRY


def custom_model() -> onnx.ModelProto:
    """c1 (3->8) -> MyScale (com.example) -> Relu -> c2 (8->4): c1's channels pass MyScale."""
    g = GraphBuilder(seed=7)
    x = g.input("x", [1, 3, 8, 8])
    scaled = g.op("MyScale", [g.conv(x, 8, k=3, pad=1, bias=True, name="c1")], name="scale",
                  domain="com.example")
    g.declare(scaled, [1, 8, 8, 8])
    return g.build([g.conv(g.op("Relu", [scaled]), 4, name="c2")])


def standard_equivalent(model: onnx.ModelProto) -> onnx.ModelProto:
    """MyScale replaced by Mul with 2.0: what onnxruntime can run, computing the same thing."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    out.graph.initializer.append(numpy_helper.from_array(np.float32(SCALE), "my_scale_factor"))
    for node in out.graph.node:
        if node.domain == "com.example" and node.op_type == "MyScale":
            node.op_type, node.domain = "Mul", ""
            node.input.append("my_scale_factor")
    kept = [o for o in out.opset_import if o.domain != "com.example"]
    del out.opset_import[:]
    out.opset_import.extend(kept)
    return out


def test_custom_op_is_a_barrier_until_registered(registry):
    before = group_with(partition(custom_model()), "c1.weight")
    assert not before.prunable
    assert "MyScale node 'scale' has no onnxoto rule" in before.reason

    onnxoto.register_rule(MyScaleRule(), domain="com.example")
    result = partition(custom_model())
    group = group_with(result, "c1.weight")
    assert group.prunable and group.size == 8 and group.reasons == []
    assert {m.initializer for m in group.members} >= {"c1.weight", "c1.bias", "c2.weight"}

    keep = np.array([True, False, True, True, False, True, False, True])
    slim = shrink(custom_model(), {group.id: keep}, options=ShrinkOptions(validate=False),
                  result=result).model
    dims = {t.name: tuple(t.dims) for t in slim.graph.initializer}
    assert dims["c1.weight"][0] == 5 and dims["c1.bias"] == (5,) and dims["c2.weight"][1] == 5
    assert any(n.domain == "com.example" for n in slim.graph.node)
    # onnxruntime cannot run com.example: validate both sides with MyScale as its standard Mul
    reference = zero_channels(result.model, result.groups, {group.id: keep})
    comparison = compare(standard_equivalent(reference), standard_equivalent(slim))
    assert comparison.passed, comparison.summary()
    original = compare(standard_equivalent(custom_model()), standard_equivalent(slim))
    assert not original.passed  # the removed channels mattered: the check can fail


def test_same_op_name_in_another_domain_stays_a_barrier(registry):
    onnxoto.register_rule(MyScaleRule(), domain="com.other")
    assert not group_with(partition(custom_model()), "c1.weight").prunable


def test_duplicates_are_refused_unless_replacing(registry):
    rule = MyScaleRule()
    onnxoto.register_rule(rule, domain="com.example")
    onnxoto.register_rule(rule, domain="com.example")  # the same rule again changes nothing
    with pytest.raises(OnnxotoError, match="MyScale of domain 'com.example' already has rule "
                                           "MyScaleRule; pass replace=True"):
        onnxoto.register_rule(MyScaleRule(), domain="com.example")
    with pytest.raises(OnnxotoError, match="op Relu of domain 'ai.onnx' already has rule"):
        onnxoto.register_rule(type("MyRelu", (MyScaleRule,), {"op_types": ("Relu",)})(),
                              domain="ai.onnx")
    replacement = MyScaleRule()
    onnxoto.register_rule(replacement, domain="com.example", replace=True)
    assert registry[("com.example", "MyScale")] is replacement


def test_register_rule_refuses_what_is_not_a_rule(registry):
    with pytest.raises(OnnxotoError, match="is not an onnxoto Rule with op_types"):
        onnxoto.register_rule(Rule())
    with pytest.raises(OnnxotoError, match="is not an onnxoto Rule"):
        onnxoto.register_rule(lambda node, ctx: None)  # type: ignore[arg-type]


def test_default_domain_is_spelled_either_way():
    node = helper.make_node("Relu", ["x"], ["y"], domain="ai.onnx")
    assert rules.rule_for(node, 17) is rules.rule_for(helper.make_node("Relu", ["x"], ["y"]), 17)
    assert rules.rule_for(helper.make_node("Relu", ["x"], ["y"], domain="com.x"), 17) is None


# Ops partition follows that the torch binding cannot run, each with why it stays so.
NOT_TRAINABLE = {
    "Attention": "the opset-23 fused op (masks, KV caches, GQA); exporters of the supported "
                 "torch spell attention as MatMul/Softmax, which the binding runs",
    "LpPool": "torch's lp_pool has no padding; no exporter of the zoo emits it",
}
# Ops the binding runs that partition does not follow: a channel space reaching them is a
# barrier, which is safe; why no rule is worth writing (yet).
BARRIERS = {
    **dict.fromkeys(
        ["And", "Or", "Xor", "Not", "Equal", "Less", "LessOrEqual", "Greater",
         "GreaterOrEqual", "ArgMax", "ArgMin"],
        "bool/index results (masks, argmax): no weight channel survives them"),
    "Where": "selects between two tensors by a run-time mask: needs a join rule with the "
             "condition checked; seen only in attention masks, off channel paths",
    "Pow": "0^p moves zero for p <= 0: needs the exponent checked (no rule yet)",
    "Mod": "Mod(x, b) keeps 0 only for constant b != 0 (no rule yet)",
    "Expand": "broadcasts to a run-time shape: the channel extent is not static",
    "Tile": "repeats channels: a channel would own several blocks (no rule yet)",
    "GatherElements": "run-time indices along any axis: which channel lands where is unknown",
    "Einsum": "an equation string: channels need a parser of the subscripts (no rule yet)",
    "Range": "makes index tensors from scalars; never carries channels",
    "ReduceProd": "the product over channels is 0 when one channel is 0: not zero-invariant",
    "ReduceLogSum": "log of a sum over channels: a removed channel moves log(0)",
    "ReduceLogSumExp": "exp(0) = 1: a zeroed channel still adds to the sum",
}


def test_partition_ops_and_binding_ops_differ_only_by_listed_exceptions():
    pytest.importorskip("torch")
    from trainers.binding import OPS

    partitionable = {op for domain, op in rules.REGISTRY if domain == ""}
    trainable = set(OPS)
    assert partitionable - trainable == set(NOT_TRAINABLE)
    assert trainable - partitionable == set(BARRIERS)


NEW_BINDING_OPS = {
    "Tan": ("Tan", {}), "Atan": ("Atan", {}), "Sinh": ("Sinh", {}), "Cosh": ("Cosh", {}),
    "Asinh": ("Asinh", {}), "Celu": ("Celu", {"alpha": 0.7}),
    "ThresholdedRelu": ("ThresholdedRelu", {"alpha": 0.3}),
    "GlobalLpPool": ("GlobalLpPool", {"p": 3}),
    "LpNormalization": ("LpNormalization", {"axis": 1, "p": 1}),
    "MeanVarianceNormalization": ("MeanVarianceNormalization", {}),
    "Hardmax": ("Hardmax", {"axis": 1}),
}


@pytest.mark.parametrize("case", list(NEW_BINDING_OPS))
def test_binding_ops_added_for_partitionable_ops_match_onnxruntime(case):
    torch = pytest.importorskip("torch")
    from tests.test_binding import _assert_close, _graph, _n, _run_ort
    from trainers.binding import OnnxModule

    op_type, attrs = NEW_BINDING_OPS[case]
    proto = _graph([_n(op_type, ["x"], **attrs)], {"x": (2, 3, 4, 5)}, {}, opset=18)
    x = np.random.default_rng(5).uniform(-1.2, 1.2, (2, 3, 4, 5)).astype(np.float32)
    got = OnnxModule(proto).eval()(torch.from_numpy(x))
    _assert_close(got, _run_ort(proto, x)[0])
