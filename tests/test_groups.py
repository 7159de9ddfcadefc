"""The group model: IndexMap forward/inverse round trips, masks.npz and partition.json I/O."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from onnxoto.errors import OnnxotoError
from onnxoto.groups import (
    Group,
    IndexMap,
    Member,
    check_masks,
    groups_from_json,
    load_masks,
    partition_to_json,
    save_masks,
)
from onnxoto.partition import explain, partition
from tests.graphs import GraphBuilder


@st.composite
def layouts(draw):
    """An injective IndexMap (no index owned twice) and a channel count."""
    index_map = IndexMap(
        offset=draw(st.integers(0, 20)),
        block=draw(st.integers(1, 5)),
        stride=draw(st.integers(1, 6)),
        step=draw(st.one_of(st.none(), st.integers(1, 12))),
    )
    size = draw(st.integers(1, 8))
    owned = index_map.indices(np.arange(size))
    assume(len(set(owned.tolist())) == owned.size)
    return index_map, size


@settings(max_examples=200, deadline=None)
@given(layouts())
def test_channel_of_inverts_indices(layout):
    index_map, size = layout
    owned = set()
    for c in range(size):
        block = index_map.indices([c])
        assert block.shape == (index_map.block,)
        for index in block.tolist():
            assert index_map.channel_of(index, size) == c
            owned.add(index)
    for index in range(max(owned) + 3):
        if index not in owned:
            assert index_map.channel_of(index, size) is None, index


@settings(max_examples=200, deadline=None)
@given(layouts())
def test_fit_recovers_the_map(layout):
    index_map, size = layout
    rows = index_map.indices(np.arange(size)).reshape(size, index_map.block)
    fitted = IndexMap.fit(rows)
    assert fitted is not None
    assert np.array_equal(fitted.indices(np.arange(size)), rows.reshape(-1))
    if size > 1 and index_map.block > 1:
        assert fitted == index_map


def test_documented_layouts():
    """DESIGN section 3: plain, flattened H*W, concat offset, DepthToSpace (DCR)."""
    assert IndexMap().indices([0, 3]).tolist() == [0, 3]
    assert IndexMap(block=4).indices([1]).tolist() == [4, 5, 6, 7]
    assert IndexMap(offset=6).indices([0, 2]).tolist() == [6, 8]
    dcr = IndexMap(block=4, stride=3, step=1)  # C_out = 3, r = 2
    assert dcr.indices([1]).tolist() == [1, 4, 7, 10]
    assert dcr.channel_step == 1
    assert IndexMap(block=2, step=2) == IndexMap(block=2)


@pytest.mark.parametrize("rows", [
    [[0, 1], [2, 4]],        # stride changes between channels
    [[0], [2], [3]],         # step changes
    [[3], [2], [1]],         # descending
    [[0, 2, 3]],             # stride changes inside a block
    [[1, 0], [3, 2]],        # descending inside a block
    np.zeros((2, 0), dtype=np.int64),
])
def test_fit_rejects_non_affine_rows(rows):
    assert IndexMap.fit(np.asarray(rows, dtype=np.int64)) is None


# --- masks ---------------------------------------------------------------------------------
def _groups() -> list[Group]:
    conv = Member("c1.weight", 0, "producer", IndexMap(), "c1")
    fc = Member("fc.weight", 0, "consumer", IndexMap(block=4), "fc")
    return [
        Group(id=0, size=4, prunable=True, reason=None, members=[conv, fc]),
        Group(id=1, size=3, prunable=False, reason="channels reach graph output 'y'",
              members=[Member("fc.weight", 1, "producer", IndexMap(), "fc")]),
    ]


def test_masks_round_trip(tmp_path):
    path = tmp_path / "masks.npz"
    keep = np.array([True, False, True, False])
    save_masks(path, {0: keep, 1: np.ones(3, dtype=bool)})
    loaded = load_masks(path, _groups())
    assert list(loaded) == [0], "an all-keep mask is dropped, even on a non-prunable group"
    assert loaded[0].dtype == np.bool_
    assert np.array_equal(loaded[0], keep)


@pytest.mark.parametrize(("raw", "needle"), [
    ({"g7": np.ones(4, dtype=bool)}, "unknown group key 'g7'"),
    ({"layer1": np.ones(4, dtype=bool)}, "unknown group key 'layer1'"),
    ({"g0": np.ones(5, dtype=bool)}, "group 0 has 4 channels"),
    ({"g0": np.ones((2, 2), dtype=bool)}, "group 0 has 4 channels"),
    ({"g0": np.array([1, 0, 1, 1])}, "expected bool"),
    ({"g0": np.array([1.0, 0.0, 1.0, 1.0])}, "expected bool"),
    ({"g1": np.array([True, False, True])},
     "non-prunable group 1: channels reach graph output 'y'"),
    ({"g0": np.zeros(4, dtype=bool)}, "removes every channel of group 0"),
])
def test_bad_masks_raise_one_clear_error(raw, needle):
    with pytest.raises(OnnxotoError, match="masks.npz") as info:
        check_masks(raw, _groups(), source="masks.npz")
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


def test_load_masks_rejects_missing_and_unreadable_files(tmp_path):
    with pytest.raises(OnnxotoError, match="no such mask file"):
        load_masks(tmp_path / "absent.npz", _groups())
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip archive")
    with pytest.raises(OnnxotoError, match="not a readable .npz"):
        load_masks(junk, _groups())


# --- partition.json ------------------------------------------------------------------------
def _model():
    g = GraphBuilder(seed=90)
    x = g.input("x", [1, 3, 4, 4])
    a = g.op("Relu", [g.bn(g.conv(x, 4, k=3, pad=1, name="c1"), name="bn1")])
    b = g.op("Relu", [g.conv(x, 6, k=3, pad=1, name="c2")])
    y = g.op("Flatten", [g.op("Concat", [a, b], axis=1)])
    return g.build([g.gemm(y, 5, name="fc")])


def test_partition_json_round_trip():
    result = partition(_model())
    extra = Group(id=len(result.groups), size=3, prunable=True, reason=None,
                  members=[Member("d2s.weight", 1, "consumer",
                                  IndexMap(offset=2, block=4, stride=3, step=1), "d2s")])
    groups = [*result.groups, extra]
    info = {"path": "model.onnx", "sha256": "ab" * 32}
    text = partition_to_json(groups, info, result.summary)
    back, model = groups_from_json(text)
    assert back == groups
    assert model == info
    fc = {m.index_map for grp in back for m in grp.members if m.initializer == "fc.weight"
          and m.role == "consumer"}
    assert fc == {IndexMap(block=16), IndexMap(offset=64, block=16)}
    assert partition_to_json(back, model, result.summary) == text


def test_partition_json_is_readable_by_a_person():
    """Every member carries explicit offset/block/stride/step (DESIGN section 3)."""
    import json

    doc = json.loads(partition(_model()).to_json())
    assert doc["format"] == "onnxoto.partition/2"
    member = doc["groups"][0]["members"][0]
    assert {"initializer", "axis", "role", "offset", "block", "stride", "step"} <= set(member)
    assert doc["summary"]["groups"] == len(doc["groups"]) == 3
    assert doc["summary"]["prunable"] == 2


@pytest.mark.parametrize(("text", "needle"), [
    ("{not json", "not JSON"),
    ('{"format": "other/1", "groups": []}', "expected 'onnxoto.partition/2' (or version 1)"),
])
def test_bad_partition_json_raises(text, needle):
    with pytest.raises(OnnxotoError, match="p.json") as info:
        groups_from_json(text, source="p.json")
    assert needle in str(info.value)


# Written by the version-1 writer (`git show fe293d8:onnxoto/groups.py`): reasons joined by "; ".
V1_FILE = (
    '{"format":"onnxoto.partition/1","model":{"path":"m.onnx","sha256":"ab"},"groups":[{"id":0,'
    '"size":4,"prunable":true,"reason":null,"members":[{"initializer":"c1.weight","axis":0,'
    '"role":"producer","offset":0,"block":1,"stride":1,"step":1,"node":"c1"},{"initializer":'
    '"fc.weight","axis":0,"role":"consumer","offset":0,"block":4,"stride":1,"step":4,"node":'
    '"fc"}]},{"id":1,"size":3,"prunable":false,"reason":"channels reach graph output \'y\'; '
    'Gemm node \'fc\' has a bias C that is not one value per feature","members":[{"initializer":'
    '"fc.weight","axis":1,"role":"producer","offset":0,"block":1,"stride":1,"step":1,"node":'
    '"fc"}]}],"summary":{"groups":2,"prunable":1,"channels":7,"prunable_channels":4,"params":60,'
    '"params_in_groups":60,"params_in_groups_share":1.0,"top_reasons":[{"reason":"channels '
    'reach graph output \'y\'","groups":1}]}}')


def test_version_1_partition_json_reads_its_reasons_as_a_list():
    import json

    groups, model = groups_from_json(V1_FILE)
    assert model == {"path": "m.onnx", "sha256": "ab"}
    assert groups[0].reasons == [] and groups[0].reason is None
    assert groups[1].reasons == ["channels reach graph output 'y'",
                                 "Gemm node 'fc' has a bias C that is not one value per feature"]
    assert groups[1].members[0] == Member("fc.weight", 1, "producer", IndexMap(), "fc")
    doc = json.loads(partition_to_json(groups, model, {}))
    assert doc["format"] == "onnxoto.partition/2"
    assert doc["groups"][1]["reasons"] == groups[1].reasons and "reason" not in doc["groups"][1]


def test_reasons_are_a_list_one_per_kind():
    result = partition(_model())
    blocked = [g for g in result.groups if not g.prunable]
    assert blocked and all(isinstance(g.reasons, list) and g.reasons for g in blocked)
    assert all(g.reason == "; ".join(g.reasons) for g in blocked)
    assert all(g.reasons == [] and g.reason is None for g in result.prunable)


def test_explain_names_groups_members_and_reasons():
    result = partition(_model())
    text = explain(result, "bn1.running_var")
    assert "group 0 (4 channels): prunable" in text
    assert "* attached  bn1.running_var axis 0" in text
    last = explain(result, "fc")
    assert "NOT prunable: channels reach graph output 'fc_out'" in last
    with pytest.raises(OnnxotoError, match="is no node, initializer or tensor of the model"):
        explain(result, "nope")
