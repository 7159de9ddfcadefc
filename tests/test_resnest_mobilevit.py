"""ResNeSt split attention and MobileViT blocks: channels aligned across radix slices and conv
groups, rSoftMax's (card, radix, C/card) view, and the channel axis carried through MobileViT's
patch unfold/fold. The zoo models run the zoo-wide checks (test_partition, test_shrink,
test_models_zoo); these tests pin what the rules decide on them and on tiny graphs."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnxoto.groups import IndexMap
from onnxoto.partition import partition
from onnxoto.rules.layout import reshape_merge
from onnxoto.shrink import shrink
from tests.conftest import EXPORTERS
from tests.graphs import GraphBuilder, assert_invariant, group_with, member


def _ints(g: GraphBuilder, name: str, values) -> str:
    return g.init(name, np.array(values, dtype=np.int64))


def split_attention(*, radix: int = 2, card: int = 1, c: int = 4) -> onnx.ModelProto:
    """One split-attention conv as timm writes it, on a (1, 4, 5, 5) input: grouped 3x3 conv
    to radix*c channels, view (radix, c), sum over radix, pool, fc1 (Tanh: a ReLU of one
    pooled value per channel is often dead), fc2 to radix*c
    logits, rSoftMax (view (card, radix, c/card), transpose, softmax over radix, flatten),
    view (radix, c), multiply, sum over radix, 1x1 conv."""
    g = GraphBuilder(seed=71)
    x = g.op("Relu", [g.conv(g.input("x", [1, 4, 5, 5]), 16, name="c1")])
    y = g.op("Relu", [g.bn(g.conv(x, radix * c, k=3, pad=1, group=radix * card, name="conv"))])
    y = g.op("Reshape", [y, _ints(g, "x_view", [1, radix, c, 5, 5])], name="radix_view")
    gap = g.op("ReduceSum", [y, _ints(g, "radix_axis", [1])], keepdims=0)
    gap = g.op("ReduceMean", [gap], axes=[2, 3], keepdims=1)
    hidden = g.op("Tanh", [g.conv(gap, 4 * card, group=card, bias=True, name="fc1")])
    logits = g.conv(hidden, radix * c, group=card, bias=True, name="fc2")
    attn = g.op("Reshape", [logits, _ints(g, "rsoftmax_view", [1, card, radix, -1])],
                name="rsoftmax_view")
    attn = g.op("Softmax", [g.op("Transpose", [attn], perm=[0, 2, 1, 3])], axis=1)
    attn = g.op("Reshape", [attn, _ints(g, "flat", [1, -1])], name="flatten")
    attn = g.op("Reshape", [attn, _ints(g, "attn_view", [1, radix, c, 1, 1])])
    out = g.op("ReduceSum", [g.op("Mul", [y, attn]), _ints(g, "radix_axis2", [1])], keepdims=0)
    return g.build([g.conv(out, 3, name="c3")])


@pytest.mark.parametrize(("radix", "card"), [(2, 1), (4, 2)])
def test_split_attention_channels_are_aligned_across_radix_and_conv_groups(radix, card):
    """Channel j of the block is conv output j of every conv group, fc2's logit j of every
    (card, radix) slice and c3's input j: one group, exact, and shrinking keeps both
    ``group`` attributes and rewrites the views' channel counts."""
    model = split_attention(radix=radix, card=card)
    result = partition(model)
    c = 4
    assert [(g.size, g.prunable) for g in result.groups] == [
        (16 // (radix * card), True), (c // card, True), (4, True), (3, False)]
    block = group_with(result, "fc2.weight", "producer")
    spread = [1 + k * (c // card) for k in range(radix * card)]  # channel 1's indices
    for name, indices in (("conv.weight", spread), ("fc2.weight", spread),
                          ("c3.weight", spread[:card])):
        assert list(member(block, name).index_map.indices([1])) == indices, name
    assert member(group_with(result, "c1.weight"), "conv.weight").axis == 1
    assert_invariant(model, result)
    keep = np.arange(block.size) != 0
    outcome = shrink(model, {block.id: keep}, result=result)
    assert outcome.passed
    nodes = {n.name: n for n in outcome.model.graph.node}
    for name, group in (("conv", radix * card), ("fc1", card), ("fc2", card)):
        assert next(a.i for a in nodes[name].attribute if a.name == "group") == group
    kept = int(keep.sum()) * card
    consts = {t.name: onnx.numpy_helper.to_array(t) for t in outcome.model.graph.initializer}
    assert consts[nodes["radix_view"].input[1]].tolist() == [1, radix, kept, 5, 5]


def test_softmax_over_radix_of_a_tensor_with_space_keeps_heads():
    """The pooled-vector rule is what picks alignment for rSoftMax: the same split of a
    tensor that still has space ties each of the 2 leading slices instead (heads), and the
    softmax over them is then a barrier, never a wrong group."""
    g = GraphBuilder(seed=72)
    y = g.op("Relu", [g.conv(g.input("x", [1, 3, 5, 5]), 8, name="c1")])
    y = g.op("Reshape", [y, _ints(g, "view", [1, 2, 4, 25])])
    y = g.op("Reshape", [g.op("Softmax", [y], axis=1), _ints(g, "back", [1, 8, 5, 5])])
    model = g.build([g.conv(y, 3, name="c2")])
    result = partition(model)
    stem = group_with(result, "c1.weight")
    assert (stem.size, stem.prunable) == (2, False)
    assert "normalizes over the channel axis" in stem.reason


@pytest.mark.parametrize(("in_shape", "out_shape", "axis", "expected"), [
    ((1, 2, 4), (1, 8), 2, (1, 2, 1)),             # rSoftMax's flatten of (radix, C)
    ((1, 2, 1, 4), (1, 8), 3, (1, 2, 1)),          # a unit axis between
    ((1, 2, 4, 3), (1, 24), 2, (1, 2, 3)),         # and the axis after it merged too
    ((1, 3, 2, 4), (1, 3, 8), 3, (2, 2, 1)),       # only the nearest axis merged
    (("N", 2, 4), ("N", 8), 2, (1, 2, 1)),         # a dynamic batch before
    ((1, "R", 4), (1, -1), 2, None),               # a dynamic axis cannot be merged
    ((1, 2, 4), (1, 4, 2), 2, None),               # not a merge
])
def test_reshape_merge(in_shape, out_shape, axis, expected):
    out_shape = tuple("M" if d == -1 else d for d in out_shape)
    assert reshape_merge(in_shape, out_shape, axis) == expected


# --------------------------------------------------------------------------- zoo models


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_resnest_radix_convs_keep_their_conv_groups(zoo_cache, exporter):
    """Every prunable group but the logits, and the radix convs lose channels aligned across
    their conv groups: after keeping one channel of every group, each conv keeps ``group``."""
    result = partition(zoo_cache("resnest", exporter))
    assert [g.prunable for g in result.groups].count(False) == 1
    grouped = {n.name: next(a.i for a in n.attribute if a.name == "group")
               for n in result.model.graph.node if n.op_type == "Conv" and
               any(a.name == "group" and a.i > 1 for a in n.attribute)}
    assert sorted(grouped.values()) == [2, 2, 2, 8]
    masks = {g.id: np.arange(g.size) == 0 for g in result.prunable}
    outcome = shrink(result.model, masks, result=result)
    assert outcome.passed, outcome.comparison.summary()
    after = {n.name: next(a.i for a in n.attribute if a.name == "group")
             for n in outcome.model.graph.node if n.name in grouped}
    assert after == grouped


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_mobilevit_fold_returns_the_stream_to_conv_proj(zoo_cache, exporter):
    """The unfold/fold Reshape/Transpose chain carries the channel axis: the transformer's
    stream (kept: LayerNorm counts its channels) reaches conv_proj's input rows one to one,
    and every other group but the logits is prunable (heads, MLP hidden, convs)."""
    result = partition(zoo_cache("mobilevit", exporter))
    kept = [g for g in result.groups if not g.prunable]
    assert len(kept) == 2
    stream = next(g for g in kept if any("LayerNormalization" in r for r in g.reasons))
    assert len(stream.reasons) == 1 and stream.size == 32
    proj = [m for m in stream.members if m.role == "consumer" and m.axis == 1 and
            result.view.constants[m.initializer].ndim == 4]
    assert len(proj) == 1 and proj[0].index_map == IndexMap()
    assert sorted(g.size for g in result.prunable if g.size == 4) == [4]  # the 4 heads


def mobilevit_unfold_fold(*, patch: int = 2) -> onnx.ModelProto:
    """MobileViT's patch unfold and fold (timm's Reshape/Transpose chain) of a conv's 6
    channels on 4x4, with a per-token op between instead of the LayerNorm'd transformer, so
    the channels stay prunable and shrinking must rewrite every view's channel count."""
    g = GraphBuilder(seed=73)
    c, n = 6, 4 // patch
    y = g.op("Relu", [g.conv(g.input("x", [1, 3, 4, 4]), c, name="c1")])
    y = g.op("Reshape", [y, _ints(g, "u1", [c * n, patch, n, patch])], name="unfold1")
    y = g.op("Transpose", [y], perm=[0, 2, 1, 3])
    y = g.op("Reshape", [y, _ints(g, "u2", [1, c, n * n, patch * patch])], name="unfold2")
    y = g.op("Transpose", [y], perm=[0, 3, 2, 1])
    y = g.op("Reshape", [y, _ints(g, "u3", [patch * patch, n * n, -1])], name="unfold3")
    y = g.op("Tanh", [y])
    y = g.op("Reshape", [y, _ints(g, "f1", [1, patch * patch, n * n, -1])], name="fold1")
    y = g.op("Transpose", [y], perm=[0, 3, 2, 1])
    y = g.op("Reshape", [y, _ints(g, "f2", [c * n, n, patch, patch])], name="fold2")
    y = g.op("Transpose", [y], perm=[0, 2, 1, 3])
    y = g.op("Reshape", [y, _ints(g, "f3", [1, c, 4, 4])], name="fold3")
    return g.build([g.conv(y, 3, name="c2")])


def test_mobilevit_unfold_and_fold_carry_the_channel_axis_exactly():
    """Channel c owns rows [c*n_h, (c+1)*n_h) of the (C*n_h, p, n_w, p) views and is one
    index of the token features: one prunable group whose consumer is c2's input c, and
    shrinking rewrites the C*n_h and C entries of the views."""
    model = mobilevit_unfold_fold()
    result = partition(model)
    assert [(g.size, g.prunable) for g in result.groups] == [(6, True), (3, False)]
    assert member(result.groups[0], "c2.weight").index_map == IndexMap()
    assert_invariant(model, result)
    keep = np.array([True, False, True, True, False, True])
    outcome = shrink(model, {0: keep}, result=result)
    assert outcome.passed
    nodes = {n.name: n for n in outcome.model.graph.node}
    consts = {t.name: onnx.numpy_helper.to_array(t).tolist()
              for t in outcome.model.graph.initializer}
    targets = {name: consts[nodes[name].input[1]] for name in
               ("unfold1", "unfold2", "unfold3", "fold1", "fold2", "fold3")}
    assert targets == {"unfold1": [8, 2, 2, 2], "unfold2": [1, 4, 4, 4], "unfold3": [4, 4, -1],
                       "fold1": [1, 4, 4, -1], "fold2": [8, 2, 2, 2], "fold3": [1, 4, 4, 4]}
