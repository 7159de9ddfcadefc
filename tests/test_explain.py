"""--explain: node names and tensor names (initializers, activations, node outputs, graph
inputs) all explain; a name the graph lacks is one line naming the closest ones."""

from __future__ import annotations

import onnx
import pytest
from click.testing import CliRunner

from onnxoto.cli import main
from onnxoto.errors import OnnxotoError
from onnxoto.partition import explain, partition
from tests.graphs import GraphBuilder


@pytest.fixture(scope="module")
def result():
    g = GraphBuilder()
    x = g.input("x", [1, 3, 8, 8])
    h = g.op("Relu", [g.conv(x, 6, bias=True, name="c1")], name="act")
    g.init("onnx::Conv_193", g.rng.standard_normal((4, 6, 1, 1)).astype("float32"))
    y = g.op("Conv", [h, "onnx::Conv_193"], name="/conv2/Conv", kernel_shape=[1, 1])
    return partition(g.build([y]))


def _group_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("group ")]


def test_initializer_node_and_activation_name_the_same_group(result):
    by_weight = explain(result, "c1.weight")
    assert _group_lines(by_weight) == ["group 0 (6 channels): prunable"]
    assert " * producer  c1.weight axis 0" in by_weight
    assert _group_lines(explain(result, "c1")) == _group_lines(by_weight)
    by_activation = explain(result, "act_out")  # a Relu output: no initializer, no node name
    assert _group_lines(by_activation) == _group_lines(by_weight)
    assert "consumer  onnx::Conv_193 axis 1" in by_activation
    legacy = explain(result, "onnx::Conv_193")  # consumer of group 0, producer of group 1
    assert _group_lines(legacy) == [
        "group 0 (6 channels): prunable",
        "group 1 (4 channels): NOT prunable: channels reach graph output '/conv2/Conv_out'"]
    assert explain(result, "/conv2/Conv") == legacy


def test_known_name_outside_every_group(result):
    assert explain(result, "x") == "'x' is in no group: no channel space passes through it."


@pytest.mark.parametrize(("typo", "closest"), [
    ("c1.weigth", "c1.weight"),
    ("onnx::Conv_139", "onnx::Conv_193"),
    ("act_output", "act_out"),
])
def test_unknown_name_suggests_the_closest(result, typo, closest):
    with pytest.raises(OnnxotoError) as caught:
        explain(result, typo)
    message = str(caught.value)
    assert f"'{typo}' is no node, initializer or tensor" in message
    assert closest in message.split("closest: ")[1].split(" (")[0].split(", ")
    assert "\n" not in message


def test_nothing_close_says_so_without_a_list(result):
    with pytest.raises(OnnxotoError, match="is no node") as caught:
        explain(result, "zzzzzzzzzzzzzzzz")
    assert "closest" not in str(caught.value)


def test_cli_exit_2_one_line(tmp_path, result):
    path = tmp_path / "net.onnx"
    onnx.save(result.model, path)
    outcome = CliRunner().invoke(main, ["partition", str(path), "--explain", "c1.wieght"])
    assert outcome.exit_code == 2, outcome.output
    lines = [line for line in outcome.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "closest: c1.weight" in lines[0]
    ok = CliRunner().invoke(main, ["partition", str(path), "--explain", "act_out"])
    assert ok.exit_code == 0 and ok.output.startswith("group 0 (6 channels)")
