"""One initializer read by several nodes (exporter or onnxsim dedup) gets one copy per use in
the canonical graph, so its groups stay prunable and every slice is its own."""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import pytest

from onnxoto.partition import partition
from onnxoto.shrink import shrink
from tests.graphs import GraphBuilder, assert_invariant, group_with, member
from tests.invariance import removal_mask


def _fresh_conv_bn_net():
    """Conv(no bias)-BN-ReLU x3 and a Linear, freshly initialized: BN folded into the Convs
    gives every Conv a zero bias, and the legacy exporter merges equal ones."""
    import torch
    from torch import nn

    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            widths = [(3, 8), (8, 8), (8, 16)]
            self.convs = nn.ModuleList(nn.Conv2d(i, o, 3, padding=1, bias=False)
                                       for i, o in widths)
            self.norms = nn.ModuleList(nn.BatchNorm2d(o) for _, o in widths)
            self.fc = nn.Linear(16, 10)

        def forward(self, x):
            for conv, norm in zip(self.convs, self.norms, strict=True):
                x = torch.relu(norm(conv(x)))
            return self.fc(x.mean((2, 3)))

    return Net().eval(), torch.randn(1, 3, 8, 8)


@pytest.fixture(scope="module")
def fresh_legacy() -> onnx.ModelProto:
    import torch

    net, x = _fresh_conv_bn_net()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (x,), buffer, dynamo=False)  # the exporter's defaults
    return onnx.load_from_string(buffer.getvalue())


def test_fresh_legacy_export_merges_biases(fresh_legacy):
    """The spelling this file is about: one zero bias reaches a second Conv via Identity."""
    ops = [n.op_type for n in fresh_legacy.graph.node]
    assert "Identity" in ops and ops.count("Conv") == 3


def test_fresh_legacy_export_shrinks(fresh_legacy):
    """Regression: shrink failed in onnxruntime ("bias must be a 1D tensor of size
    output_channels") because the Identity-fed bias was not a member of its group."""
    result = partition(fresh_legacy)
    assert [(g.size, g.prunable) for g in result.groups] == [
        (8, True), (8, True), (16, True), (10, False)]
    assert_invariant(result.model, result)
    masks = {g.id: removal_mask(g, 7 + g.id) for g in result.prunable}
    outcome = shrink(fresh_legacy, masks, result=result)
    assert outcome.passed, outcome.comparison.summary()
    sizes = {n.name: tuple(t.dims) for n in outcome.model.graph.node if n.op_type == "Conv"
             for t in outcome.model.graph.initializer if t.name == n.input[2]}
    assert sorted(sizes.values()) == sorted((int(k.sum()),) for k in masks.values())


def onnxsim_style_net() -> onnx.ModelProto:
    """onnxsim's dedup: two Convs read one bias initializer and two BatchNorms read the same
    four parameter tensors, directly (no Identity)."""
    g = GraphBuilder(seed=11)
    x = g.input("x", [1, 3, 8, 8])
    bias = g.weight("bias", [8])
    params = [g.weight("bn.scale", [8], low=0.5, high=1.5), g.weight("bn.shift", [8]),
              g.weight("bn.mean", [8]), g.weight("bn.var", [8], low=0.5, high=2.0)]
    y = x
    for name in ("a", "b"):
        w = g.weight(f"{name}.weight", [8, g.shape(y)[1], 3, 3])
        y = g.op("Conv", [y, w, bias], name=name, kernel_shape=[3, 3], pads=[1] * 4)
        y = g.op("Relu", [g.op("BatchNormalization", [y, *params], name=f"{name}_bn")])
    y = g.op("Flatten", [g.op("GlobalAveragePool", [y])])
    return g.build([g.gemm(y, 4, name="fc")])


def test_onnxsim_style_shared_initializers_are_split_per_use():
    model = onnxsim_style_net()
    result = partition(model)
    a, b = group_with(result, "a.weight", "producer"), group_with(result, "b.weight", "producer")
    assert a.prunable and b.prunable and a.id != b.id
    assert member(a, "bias").node == "a" and member(b, "bias.b").node == "b"
    assert member(a, "bn.scale").role == "producer" and member(b, "bn.scale.b_bn")
    assert {t.name for t in model.graph.initializer} >= {"bias", "bn.var"}  # input untouched
    assert "bias.b" not in {t.name for t in model.graph.initializer}
    assert_invariant(result.model, result)


def test_the_slices_differ_per_use():
    model = onnxsim_style_net()
    result = partition(model)
    a, b = group_with(result, "a.weight", "producer"), group_with(result, "b.weight", "producer")
    masks = {a.id: np.arange(8) < 5, b.id: np.arange(8) % 2 == 0}
    outcome = shrink(model, masks, result=result)
    assert outcome.passed, outcome.comparison.summary()
    dims = {t.name: tuple(t.dims) for t in outcome.model.graph.initializer}
    assert dims["bias"] == (5,) and dims["bias.b"] == (4,)


def test_a_weight_shared_by_two_convs_gives_each_its_own():
    g = GraphBuilder(seed=79)
    x = g.input("x", [1, 3, 4, 4])
    w = g.weight("shared.weight", [8, 3, 3, 3])
    a = g.op("Relu", [g.op("Conv", [x, w], name="ca", pads=[1, 1, 1, 1])])
    b = g.op("Relu", [g.op("Conv", [x, w], name="cb", pads=[1, 1, 1, 1])])
    y = g.op("Add", [g.conv(a, 4, name="c2"), g.conv(b, 4, name="c3")])
    model = g.build([y])
    result = partition(model)
    assert [(g.size, g.prunable) for g in result.groups] == [(8, True), (8, True), (4, False)]
    assert {m.initializer for m in result.groups[1].by_role("producer")} == {
        "shared.weight.cb"}
    assert_invariant(result.model, result)
