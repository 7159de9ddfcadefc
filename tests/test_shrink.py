"""shrink(model, masks) == model with those channels zeroed, for the whole zoo and random masks."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from models.zoo import ZOO
from onnxoto.errors import OnnxotoError
from onnxoto.graph import light_copy
from onnxoto.groups import Group
from onnxoto.metrics import measure
from onnxoto.partition import Partition, partition
from onnxoto.shrink import ShrinkOptions, save_model, shrink
from tests.conftest import EXPORTERS
from tests.invariance import stable_seed

CASES = [(name, exporter) for name in ZOO for exporter in EXPORTERS]
MASKS_PER_MODEL = 20
MASKS_PER_HEAVY_MODEL = 1  # ResNet-50: ~5 s per shrink on 2 cores
KEEP_CHOICES = ("one", "all", "random")


def random_masks(result: Partition, rng: np.random.Generator) -> dict[int, np.ndarray]:
    """A keep fraction drawn per group; keep-one and keep-all included on purpose."""
    masks = {}
    for group in result.prunable:
        kind = rng.choice(KEEP_CHOICES)
        if kind == "all":
            keep = np.ones(group.size, dtype=bool)
        elif kind == "one":
            keep = np.zeros(group.size, dtype=bool)
            keep[rng.integers(group.size)] = True
        else:
            keep = rng.random(group.size) < rng.uniform(0.1, 0.9)
            if not keep.any():
                keep[rng.integers(group.size)] = True
        masks[group.id] = keep
    return masks


def expected_params(full_params: int, result: Partition, masks) -> int:
    """Full params minus what slicing every member along its axis must remove."""
    removed: dict[str, dict[int, set[int]]] = {}
    for gid, keep in masks.items():
        gone = np.nonzero(~keep)[0]
        for m in result.groups[gid].members:
            axes = removed.setdefault(m.initializer, {})
            axes.setdefault(m.axis, set()).update(m.index_map.indices(gone).tolist())
    delta = 0
    for name, axes in removed.items():
        shape = result.view.constants[name].shape
        new = [dim - len(axes.get(axis, ())) for axis, dim in enumerate(shape)]
        delta += int(np.prod(shape)) - int(np.prod(new))
    return full_params - delta


def expected_macs(full: onnx.ModelProto, macs_by_node: dict[str, int], result: Partition,
                  masks) -> int:
    """Each MAC node scales with its kept output share, and input share per conv group (a
    grouped conv losing whole conv groups keeps its inputs per group; one losing channels
    aligned across conv groups keeps its groups)."""
    slot_keep = result.slot_keep(masks)

    def share(tensor: str) -> float:
        space = result.spaces.get(tensor)
        return 1.0 if space is None else float(slot_keep[space.slots].mean())

    def kept_groups(tensor: str, group: int) -> int:
        space = result.spaces.get(tensor)
        return group if space is None else int(
            slot_keep[space.slots].reshape(group, -1).any(axis=1).sum())

    total = 0.0
    for node in full.graph.node:
        if node.name not in macs_by_node:
            continue
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        batched = result.view.const(node.input[1]) is None  # q @ k^T: heads on a batch axis
        factor = share(node.output[0])
        if not batched:
            factor *= share(node.input[0]) * group / kept_groups(node.input[0], group)
        total += macs_by_node[node.name] * factor
    return int(round(total))


def _group_shape(groups: list[Group]) -> list[tuple[bool, int]]:
    return [(g.prunable, g.size) for g in groups]


@pytest.mark.parametrize(("name", "exporter"), CASES)
def test_random_masks_shrink_to_the_same_function(zoo_cache, name, exporter):
    path = zoo_cache(name, exporter)
    result = partition(path)
    full = result.model  # the canonical graph, which shrink slices
    before = measure(full)
    for trial in range(MASKS_PER_HEAVY_MODEL if ZOO[name].heavy else MASKS_PER_MODEL):
        seed = stable_seed(name, exporter, trial)
        case = f"{name} {exporter} trial {trial} (seed {seed})"
        masks = random_masks(result, np.random.default_rng(seed))
        if trial < 2:  # a 1-channel depthwise conv is also a plain conv: keep 2 to compare groups
            for keep in masks.values():
                keep[:2] = True
        outcome = shrink(full, masks, result=result)
        assert outcome.passed, f"{case}: {outcome.comparison.summary()}"
        try:
            onnx.checker.check_model(light_copy(outcome.model))
        except onnx.checker.ValidationError as err:
            pytest.fail(f"{case}: {err}")
        after = measure(outcome.model)
        applied = {g: k for g, k in masks.items() if not k.all()}
        assert after.params == expected_params(before.params, result, applied), case
        assert after.macs == pytest.approx(
            expected_macs(full, before.macs_by_node, result, applied), abs=1), case
        if trial < 2:
            again = partition(outcome.model)
            kept = {g.id: int(masks[g.id].sum()) if g.id in masks else g.size
                    for g in result.groups}
            assert _group_shape(again.groups) == [(g.prunable, kept[g.id])
                                                  for g in result.groups], case
            half = {g.id: np.arange(g.size) % 2 == 0 for g in again.prunable if g.size > 1}
            assert shrink(outcome.model, half, result=again).passed, f"{case}, then half"


def test_round_to_keeps_multiples_of_8(zoo_cache):
    path = zoo_cache("demonet")
    result = partition(path)
    rng = np.random.default_rng(0)
    masks = {g.id: rng.random(g.size) < 0.37 for g in result.prunable}
    outcome = shrink(path, masks, options=ShrinkOptions(round_to=8), result=result)
    assert outcome.passed
    for gid, keep in outcome.masks.items():
        assert keep.sum() % 8 == 0 or keep.sum() == result.groups[gid].size
        assert np.all(keep[masks[gid]]), "rounding must only add channels back"


def test_external_data_round_trip(zoo_cache, tmp_path):
    path = zoo_cache("resnet_basic")
    external = tmp_path / "big.onnx"
    model = onnx.load(path)
    save_model(model, external, external=True)
    assert len(list(tmp_path.glob("big.onnx.*.data"))) == 1
    result = partition(external)
    masks = {g.id: np.arange(g.size) % 2 == 0 for g in result.prunable}
    outcome = shrink(external, masks, result=result)
    assert outcome.passed
    slim = tmp_path / "slim.onnx"
    save_model(outcome.model, slim, external=True)
    assert len(list(tmp_path.glob("slim.onnx.*.data"))) == 1
    reloaded = onnx.load(str(slim))
    assert measure(reloaded).params == measure(outcome.model).params


def test_input_file_is_untouched(zoo_cache, tmp_path):
    path = zoo_cache("se_net")
    before = path.read_bytes()
    result = partition(path)
    outcome = shrink(path, {g.id: np.arange(g.size) < 2 for g in result.prunable})
    save_model(outcome.model, tmp_path / "slim.onnx")
    assert path.read_bytes() == before


@pytest.mark.parametrize(("masks", "message"), [
    ({"g99": np.ones(3, bool)}, "unknown group key 'g99'"),
    ({"g0": np.ones(3, bool)}, "has shape (3,)"),
    ({"g0": np.ones(40, np.int8)}, "expected bool"),
    ({"g2": np.zeros(10, bool)}, "non-prunable group 2"),
    ({"g0": np.zeros(40, bool)}, "removes every channel of group 0"),
])
def test_bad_masks_are_refused(zoo_cache, masks, message):
    with pytest.raises(OnnxotoError, match=message.replace("(", r"\(").replace(")", r"\)")):
        shrink(zoo_cache("mlpnet"), masks)


def test_initializers_listed_as_inputs_are_handled(zoo_cache):
    """keep_initializers_as_inputs exports: weights are constants, the slim model drops them
    from its inputs (their declared shapes would be stale)."""
    model = onnx.load(zoo_cache("mlpnet"))
    model.graph.input.extend(onnx.helper.make_tensor_value_info(t.name, t.data_type, t.dims)
                             for t in model.graph.initializer)
    result = partition(model)
    assert [g.size for g in result.prunable] == [40, 20]
    outcome = shrink(model, {0: np.arange(40) < 10}, result=result)
    assert outcome.passed
    assert [i.name for i in outcome.model.graph.input] == ["input"]


@pytest.mark.parametrize("name", ["vgg_bn", "resnet_bottleneck", "densenet", "mlpnet"])
def test_dynamic_batch_exports_partition_and_shrink(zoo_cache, tmp_path, name):
    """Deployment models usually have a symbolic batch: Flatten over (N, C, H, W) still maps."""
    import torch

    from models.zoo import ZOO, build

    path = tmp_path / f"{name}.dyn.onnx"
    torch.onnx.export(build(name), (torch.randn(ZOO[name].input_shape),), str(path),
                      dynamo=False, do_constant_folding=False, input_names=["input"],
                      output_names=["output"], opset_version=17,
                      dynamic_axes={"input": {0: "N"}, "output": {0: "N"}})
    dynamic, static = partition(path), partition(zoo_cache(name))
    assert _group_shape(dynamic.groups) == _group_shape(static.groups)
    masks = {g.id: np.arange(g.size) % 3 != 0 for g in dynamic.prunable if g.size > 2}
    outcome = shrink(path, masks, result=dynamic, options=ShrinkOptions(samples=2))
    assert outcome.passed
    from onnxoto.masking import zero_channels
    from onnxoto.validate import compare

    reference = zero_channels(onnx.load(path), dynamic.groups, masks)
    assert compare(reference, outcome.model, dynamic_dim=5).passed
