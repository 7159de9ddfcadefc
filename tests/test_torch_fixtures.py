"""Real exports by another torch (tests/fixtures/torch-2.14.1, made by make_torch_fixtures.py in
a throwaway venv): its dynamo exporter with and without its ONNX optimizer and its legacy one,
some with a dynamic batch. Partition must find what it finds in our torch's exports of the same
zoo models, and every prunable group must be zero-invariant and shrink."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from onnxoto.partition import partition
from tests.graphs import assert_invariant
from tests.zoo_expectations import CEILINGS, GROUP_COUNTS

FIXTURES = sorted((Path(__file__).parent / "fixtures").glob("torch-*/*.onnx"))


def test_fixtures_are_there_and_small():
    assert len(FIXTURES) >= 8
    assert all(path.stat().st_size < 1_000_000 for path in FIXTURES)


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_another_torch_export_partitions_like_ours(path: Path):
    model = onnx.load(path)
    version = path.parent.name.removeprefix("torch-")
    assert model.producer_version.startswith(version) or version in model.producer_version
    name, export = path.name.split(".")[:2]
    ops = {node.op_type for node in model.graph.node}
    if export == "dynamo-unoptimized":  # what the canonical pass must fold
        assert {"Shape", "Expand", "CastLike"} <= ops
    result = partition(path)
    expected = GROUP_COUNTS[(name, "legacy" if export == "legacy" else "dynamo")]
    summary = result.summary
    assert (summary["prunable"], summary["prunable_channels"]) == (
        expected["prunable"], expected["prunable_channels"])
    assert summary["removable_macs_share"] == pytest.approx(CEILINGS[name], abs=1e-4)
    assert_invariant(result.model, result)
