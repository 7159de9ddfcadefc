"""The coverage summary: the removable-MACs ceiling, reasons grouped by kind, and one line per
kind in a group's reason (a residual stream under five LayerNorms is one line, not five)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from onnxoto.cli import main
from onnxoto.partition import partition
from tests.graphs import GraphBuilder, assert_invariant, group_with


def two_convs() -> onnx.ModelProto:
    """c1: 3->8, 3x3 on 8x8; c2: 8->4, 1x1, whose channels are the graph output."""
    g = GraphBuilder(seed=31)
    x = g.input("x", [1, 3, 8, 8])
    y = g.op("Relu", [g.conv(x, 8, k=3, pad=1, name="c1")])
    return g.build([g.conv(y, 4, name="c2")])


def test_ceiling_is_what_one_channel_per_group_leaves():
    """c1 keeps 1 of 8 channels: its MACs drop from 64*8*27 to 64*1*27 and c2's from
    64*4*8 to 64*4*1 (c2's own channels reach the output and stay)."""
    s = partition(two_convs()).summary
    full = 64 * 8 * 27 + 64 * 4 * 8
    removed = 64 * 7 * 27 + 64 * 4 * 7
    assert s["macs"] == full
    assert s["removable_macs"] == removed
    assert s["removable_macs_share"] == pytest.approx(removed / full)


def test_ceiling_follows_weights_behind_a_transpose():
    """The legacy exporter's MatMul by W^T: the MACs read the Transpose's output, the group
    slices the initializer; the ceiling must see through the view."""
    g = GraphBuilder(seed=32)
    x = g.input("x", [1, 16])
    h = g.op("Relu", [g.matmul(x, 32, transposed=True, name="fc1")])
    model = g.build([g.matmul(h, 10, transposed=True, name="fc2")])
    s = partition(model).summary
    assert s["macs"] == 16 * 32 + 32 * 10
    assert s["removable_macs"] == 16 * 31 + 31 * 10


def layernorm_stream(*, custom: bool = True) -> onnx.ModelProto:
    """A residual stream (tokens x 16) read by three LayerNorms, two residual Adds, and (with
    ``custom``) an op onnxoto does not know on a side branch."""
    g = GraphBuilder(seed=33)
    x = g.input("x", [1, 6, 8])
    stream = g.matmul(x, 16, name="embed")
    for i in range(2):
        scale, shift = g.weight(f"ln{i}.w", [16], low=0.5, high=1.5), g.weight(f"ln{i}.b", [16])
        normed = g.op("LayerNormalization", [stream, scale, shift], name=f"ln{i}", axis=-1)
        hidden = g.op("Relu", [g.matmul(normed, 32, name=f"up{i}")])
        stream = g.op("Add", [stream, g.matmul(hidden, 16, name=f"down{i}")], name=f"res{i}")
    scale, shift = g.weight("ln_f.w", [16], low=0.5, high=1.5), g.weight("ln_f.b", [16])
    normed = g.op("LayerNormalization", [stream, scale, shift], name="ln_f", axis=-1)
    if not custom:
        return g.build([g.matmul(normed, 10, name="head")])
    side = g.op("Mystery", [g.matmul(x, 4, name="side")], name="odd", domain="com.example")
    g.declare(side, [1, 6, 4])
    return g.build([g.matmul(normed, 10, name="head"), side])


def test_one_line_per_kind_names_the_first_layernorm():
    result = partition(layernorm_stream())
    stream = group_with(result, "embed.weight")
    assert not stream.prunable
    assert stream.reason.count("LayerNormalization node") == 1
    assert stream.reason.startswith("LayerNormalization node 'ln0' normalizes over the channel")
    assert "(and 2 more LayerNormalization)" in stream.reason
    assert [g.size for g in result.prunable] == [32, 32]


def test_fixtures_are_zero_invariant_and_shrink():
    for model in (two_convs(), layernorm_stream(custom=False)):
        result = partition(model)
        assert_invariant(result.model, result)


def test_reasons_by_kind_counts_groups_and_channels():
    rows = {r["kind"]: r for r in partition(layernorm_stream()).summary["reasons_by_kind"]}
    assert rows["LayerNormalization"]["groups"] == 1
    assert rows["LayerNormalization"]["channels"] == 16
    assert rows["unknown op Mystery"]["groups"] == 1
    assert "Mystery node 'odd' has no onnxoto rule" in rows["unknown op Mystery"]["example"]
    assert rows["graph output"]["channels"] == 10


def test_cli_prints_and_records_the_coverage(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(layernorm_stream(), str(path))
    text = CliRunner().invoke(main, ["partition", str(path)])
    assert text.exit_code == 0, text.output
    assert "removable MACs (ceiling: each group keeps 1)" in text.output
    assert "unknown op Mystery" in text.output
    out = CliRunner().invoke(main, ["partition", str(path), "--json",
                                    "-o", str(tmp_path / "p.json")])
    summary = json.loads(out.output)
    saved = json.loads((tmp_path / "p.json").read_text())["summary"]
    assert summary["removable_macs_share"] == saved["removable_macs_share"]
    assert 0 < summary["removable_macs_share"] < 1
    assert {r["kind"] for r in saved["reasons_by_kind"]} == {
        "LayerNormalization", "unknown op Mystery", "graph output"}
    assert np.isclose(summary["removable_macs"] / summary["macs"],
                      summary["removable_macs_share"])
