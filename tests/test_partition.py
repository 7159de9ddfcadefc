"""Partition of the whole zoo: every prunable group is zero-invariant, in onnxruntime."""

from __future__ import annotations

import dataclasses

import onnx
import pytest

from models.zoo import ZOO, light_names
from onnxoto import runtime
from onnxoto.errors import OnnxotoError
from onnxoto.partition import explain, partition
from tests.conftest import EXPORTERS
from tests.invariance import invariance_gap, joint_invariance_gap, removal_mask, stable_seed

CASES = [(name, exporter) for name in light_names() for exporter in EXPORTERS]
HEAVY_CASES = [(name, exporter) for name, entry in ZOO.items() if entry.heavy
               for exporter in EXPORTERS]


@pytest.mark.parametrize(("name", "exporter"), CASES)
def test_every_prunable_group_is_zero_invariant(zoo_cache, name, exporter):
    path = zoo_cache(name, exporter)
    result = partition(path)
    model = result.model  # the canonical graph: member names refer to it
    inputs = runtime.random_inputs(model, seed=1)
    assert result.prunable, f"{name}: no prunable group"
    for group in result.prunable:
        gap, change = invariance_gap(model, group, removal_mask(group, group.id), inputs)
        assert gap <= 1e-5, f"{name} group {group.id}: consumers matter (gap {gap:.2e})"
        assert change > 0, f"{name} group {group.id}: zeroing its producers changes nothing"


@pytest.mark.parametrize(("name", "exporter"), HEAVY_CASES)
def test_heavy_models_are_zero_invariant_jointly(zoo_cache, name, exporter):
    """Models too large for three runs per group: every prunable group loses channels at once."""
    path = zoo_cache(name, exporter)
    result = partition(path)
    model = result.model
    seed = stable_seed(name, exporter)
    masks = {g.id: removal_mask(g, seed + g.id) for g in result.prunable}
    gap, change = joint_invariance_gap(model, result.prunable, masks,
                                       runtime.random_inputs(model, seed=1))
    assert gap <= 1e-5, f"{name} {exporter} (seed {seed}): consumers matter (gap {gap:.2e})"
    assert change > 0, f"{name} {exporter} (seed {seed}): zeroing producers changes nothing"


def test_a_missed_add_branch_is_caught(zoo_cache):
    """Drop the producers of one branch of a residual Add: the invariance check must fail."""
    path = zoo_cache("resnet_basic")
    model = onnx.load(path)
    result = partition(path)
    nodes = {n.name: n for n in model.graph.node}
    producer_of = {out: n for n in model.graph.node for out in n.output}

    def bn_nodes(group):
        return [nodes[m.node] for m in group.by_role("producer")
                if nodes[m.node].op_type == "BatchNormalization"]

    joined = next(g for g in result.prunable if len({n.name for n in bn_nodes(g)}) > 1)
    bn = bn_nodes(joined)[0]
    branch = {bn.name, producer_of[bn.input[0]].name}
    broken = dataclasses.replace(joined, members=[m for m in joined.members
                                                  if m.node not in branch])
    gap, _ = invariance_gap(model, broken, removal_mask(broken, 0),
                            runtime.random_inputs(model, seed=1))
    assert gap > 1e-3


def _sizes(result, prunable):
    return [g.size for g in result.groups if g.prunable == prunable]


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_mlpnet_groups_are_exact(zoo_cache, exporter):
    result = partition(zoo_cache("mlpnet", exporter))
    assert _sizes(result, True) == [40, 20]
    assert _sizes(result, False) == [10]
    logits = next(g for g in result.groups if not g.prunable)
    assert "graph output" in logits.reason


def test_demonet_groups_are_exact(zoo_cache):
    result = partition(zoo_cache("demonet"))
    assert _sizes(result, True) == [64, 128, 256, 128]
    assert _sizes(result, False) == [10]
    joined = result.groups[1]
    producers = {m.initializer for m in joined.by_role("producer")}
    assert {"conv2.weight", "conv3.weight", "bn2.weight", "bn3.weight"} <= producers
    bn4 = {(m.group_offset if hasattr(m, "group_offset") else m.index_map.offset)
           for g in result.groups for m in g.members if m.initializer == "bn4.weight"}
    assert bn4 == {0, 64}


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_convnext_layernorm_space_is_not_prunable(zoo_cache, exporter):
    result = partition(zoo_cache("convnext", exporter))
    stem = next(g for g in result.groups if any(m.initializer.startswith("stem")
                                                for m in g.by_role("producer")))
    assert not stem.prunable
    assert "LayerNormalization" in stem.reason
    assert "normalizes over the channel axis" in stem.reason
    hidden = [g.size for g in result.prunable]
    assert hidden == [128, 128]


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_vit_heads_and_mlp_hidden_are_groups_residual_stream_not(zoo_cache, exporter):
    """Each block: one group of 4 heads (q, k, v columns and out-projection rows of a head are
    one channel) and the 128-wide MLP hidden (ratio 4); the LayerNorm residual stream stays
    whole."""
    result = partition(zoo_cache("vit", exporter))
    assert [g.size for g in result.prunable] == [4, 128, 4, 128]
    heads = result.prunable[0]
    assert {m.role for m in heads.members} == {"producer", "consumer"}
    assert {m.index_map.block for m in heads.members} == {8}  # head_dim columns per head
    reasons = " ".join(g.reason for g in result.groups if not g.prunable)
    assert "normalizes over the channel axis" in reasons


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_post_ln_bert_residual_stream_is_one_kept_group(zoo_cache, exporter):
    """Post-LN: the embedding LayerNorm starts the stream, both layers' residual Adds join it:
    one kept group, one line naming the LayerNorm; heads, FFN hidden and pooler stay groups."""
    result = partition(zoo_cache("bert", exporter))
    kept = [g for g in result.groups if not g.prunable]
    stream = [g for g in kept if "LayerNormalization" in g.reason]
    assert len(stream) == 1 and stream[0].size == 24
    assert "residual stream" in stream[0].reason and "(and 4 more LayerNormalization)" in \
        stream[0].reason
    assert not any("does not follow" in g.reason for g in kept)
    assert [g.size for g in result.prunable] == [3, 48, 3, 48, 24]


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_ifnet_bars_the_channels_its_branches_read(zoo_cache, exporter):
    """The If bodies read conv2's channels from the outer scope: that group is kept, naming
    the If; conv1's (read by conv2 only) and conv3's (after the If) stay prunable."""
    result = partition(zoo_cache("ifnet", exporter))
    assert [(g.size, g.prunable) for g in result.groups] == [(8, True), (16, False),
                                                            (16, True), (10, False)]
    read = result.groups[1]
    assert read.reason.startswith("If node '")  # the If is the only reason
    assert read.reason.endswith("inside its subgraph; its channels are kept")


def test_resnet50_partition(zoo_cache):
    result = partition(zoo_cache("resnet50"))
    # 1 stem + 16 blocks x 2 inner groups + 4 stage outputs (joined by the residual Adds) + fc
    assert result.summary["groups"] == 1 + 32 + 4 + 1
    assert result.summary["prunable"] == 37


def test_explain_names_group_and_reason(zoo_cache):
    result = partition(zoo_cache("mlpnet"))
    text = explain(result, "3.weight")
    assert "group 0 (40 channels): prunable" in text
    assert "group 1 (20 channels): prunable" in text
    text = explain(result, "5.bias")
    assert "NOT prunable" in text and "graph output" in text
    with pytest.raises(OnnxotoError, match="is no node, initializer or tensor"):
        explain(result, "no_such_thing")


def test_partition_json_round_trip(zoo_cache, tmp_path):
    from onnxoto.groups import groups_from_json

    result = partition(zoo_cache("densenet"))
    out = tmp_path / "partition.json"
    result.save(out)
    groups, model_info = groups_from_json(out.read_text())
    assert groups == result.groups
    assert model_info["sha256"] == result.model_info["sha256"]


def test_partition_does_not_modify_input(zoo_cache):
    path = zoo_cache("se_net")
    before = path.read_bytes()
    partition(path)
    assert path.read_bytes() == before


def test_a_failing_rule_costs_prunability_not_correctness(zoo_cache, monkeypatch):
    from onnxoto.rules.elementwise import ZeroPreservingRule

    def broken(self, node, ctx):
        raise ValueError("boom")

    monkeypatch.setattr(ZeroPreservingRule, "trace", broken)
    result = partition(zoo_cache("mlpnet"))
    assert [g.size for g in result.prunable] == []
    assert any("rule failed here (ValueError: boom)" in (g.reason or "") for g in result.groups)
