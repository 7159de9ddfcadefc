"""Zoo models, their ONNX exports (legacy and dynamo) and the synthetic graph builders."""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from models.export import export_zoo, main
from models.synthetic import mlp_chain, residual_chain
from models.zoo import ZOO, build, light_names
from tests.conftest import EXPORTERS
from tests.zoo_expectations import CEILINGS, GROUP_COUNTS

EXPECTED_NAMES = {
    "demonet",
    "mlpnet",
    "vgg_bn",
    "resnet_basic",
    "resnet_bottleneck",
    "resnet50",
    "densenet",
    "mobilenetv2",
    "se_net",
    "convnext",
    "stacked_unets",
    "carn",
    "vit",
    "resnext",
    "regnet",
    "ghostnet",
    "groupnorm_net",
    "bert",
    "ifnet",
    "resnest",
    "mobilevit",
}
LIGHT = light_names()
TABLE = "tests/zoo_expectations.py"


@pytest.fixture(scope="module")
def zoo_pair(zoo_cache):
    """(torch model, exported path): the model is rebuilt with the seed the export used."""
    models: dict[str, torch.nn.Module] = {}

    def get(name: str, exporter: str | None = None):
        if name not in models:
            models[name] = build(name)
        return models[name], None if exporter is None else zoo_cache(name, exporter)

    return get


def _run_both(model: torch.nn.Module, path: Path, shape: tuple[int, ...]):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(123))
    with torch.no_grad():
        expected = model(x).numpy()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    return expected, got


def _assert_close(expected: np.ndarray, got: np.ndarray) -> None:
    assert got.shape == expected.shape
    tol = 1e-4 * max(1.0, float(np.abs(expected).max()))
    assert float(np.abs(got - expected).max()) <= tol


def _op_counts(model: onnx.ModelProto) -> collections.Counter:
    return collections.Counter(n.op_type for n in model.graph.node)


# --------------------------------------------------------------------------- zoo


def test_zoo_names_present():
    assert set(ZOO) == EXPECTED_NAMES
    assert [n for n, e in ZOO.items() if e.heavy] == ["resnet50"]
    assert set(LIGHT) == EXPECTED_NAMES - {"resnet50"}


@pytest.mark.parametrize(("name", "exporter"), [(n, e) for n in ZOO for e in EXPORTERS])
def test_partition_counts_are_pinned(zoo_cache, name, exporter):
    """Every zoo model and exporter: a rule change that moves a count must update the table."""
    from onnxoto.partition import partition

    expected = GROUP_COUNTS.get((name, exporter))
    assert expected is not None, f"pin the counts of ({name!r}, {exporter!r}) in {TABLE}"
    summary = partition(zoo_cache(name, exporter)).summary
    got = {key: summary[key] for key in expected}
    assert got == expected, f"{name} {exporter}: counts changed; if intended, update {TABLE}"
    assert summary["removable_macs_share"] == pytest.approx(CEILINGS[name], abs=1e-4), \
        f"{name} {exporter}: removable-MACs ceiling changed; if intended, update {TABLE}"


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_measure_counts_the_folded_graph(zoo_cache, exporter):
    """The legacy ghostnet export bounds its ghost Slices by Unsqueeze(Constant): before
    folding, the shapes after them are unknown and their MACs were dropped (109,088 of 160,160)."""
    from onnxoto.metrics import measure
    from onnxoto.partition import partition

    path = zoo_cache("ghostnet", exporter)
    raw = measure(path)
    assert raw.macs == measure(partition(path).model).macs == 160_160
    assert raw.unknown_macs_nodes == []


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_ifnet_exports_an_if_that_takes_both_branches(zoo_pair, exporter):
    model, path = zoo_pair("ifnet", exporter)
    assert _op_counts(onnx.load(str(path)))["If"] == 1
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.rand(ZOO["ifnet"].input_shape, generator=torch.Generator().manual_seed(5))
    for sign in (1.0, -1.0):  # input mean > 0 doubles, < 0 negates
        with torch.no_grad():
            expected = model(sign * x).numpy()
        (got,) = sess.run(None, {sess.get_inputs()[0].name: (sign * x).numpy()})
        _assert_close(expected, got)


def test_build_is_deterministic_and_seeded():
    a, b, c = build("resnet_basic", 0), build("resnet_basic", 0), build("resnet_basic", 1)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["conv1.weight"], sc["conv1.weight"])
    assert not a.training


@pytest.mark.parametrize("name", LIGHT)
def test_norm_params_are_randomized(name: str, zoo_pair):
    model, _ = zoo_pair(name)
    norms = [m for m in model.modules()
             if isinstance(m, torch.nn.BatchNorm2d | torch.nn.LayerNorm | torch.nn.GroupNorm)]
    for m in norms:
        assert not torch.all(m.weight == 1)
        assert not torch.all(m.bias == 0)
        if isinstance(m, torch.nn.BatchNorm2d):
            assert torch.all(m.running_var > 0)
            assert not torch.all(m.running_mean == 0)
    assert norms or name in {"mlpnet", "carn"}


def test_demonet_layout(zoo_pair):
    model, _ = zoo_pair("demonet")
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes["conv1.weight"] == (64, 3, 3, 3)
    assert shapes["conv2.weight"] == shapes["conv3.weight"] == (128, 64, 3, 3)
    assert shapes["bn4.weight"] == (192,)
    assert shapes["conv5.weight"] == (256, 192, 3, 3)
    assert shapes["gemm1.weight"] == (128, 256)
    assert shapes["gemm2.weight"] == (10, 128)


# --------------------------------------------------------------------------- legacy export


@pytest.mark.parametrize("name", LIGHT)
def test_legacy_export_keeps_state_dict_names_and_values(name: str, zoo_pair):
    model, path = zoo_pair(name, "legacy")
    proto = onnx.load(str(path))
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    state = {
        k: v.numpy() for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")
    }
    assert set(inits) == set(state)
    for key, value in state.items():
        assert np.array_equal(inits[key], value), key
    assert [i.name for i in proto.graph.input] == ["input"]
    assert [o.name for o in proto.graph.output] == ["output"]
    assert proto.opset_import[0].version == 17


@pytest.mark.parametrize("name", LIGHT)
def test_legacy_export_matches_torch(name: str, zoo_pair):
    model, path = zoo_pair(name, "legacy")
    onnx.checker.check_model(str(path))
    _assert_close(*_run_both(model, path, ZOO[name].input_shape))


def test_legacy_keeps_batchnorm_unfolded(zoo_pair):
    model, path = zoo_pair("resnet_basic", "legacy")
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert _op_counts(onnx.load(str(path)))["BatchNormalization"] == n_bn == 10


def test_resnet50_legacy_topology(zoo_cache):
    model = build("resnet50")
    counts = _op_counts(onnx.load(str(zoo_cache("resnet50")), load_external_data=False))
    # stem 1 + 16 bottlenecks x 3 + 4 downsample convs
    assert counts["Conv"] == 53
    assert counts["BatchNormalization"] == 53
    assert counts["Gemm"] == 1
    assert counts["Add"] == 16
    assert sum(p.numel() for p in model.parameters()) == 25_557_032  # torchvision's ResNet-50


# --------------------------------------------------------------------------- dynamo export


@pytest.mark.parametrize("name", LIGHT)
def test_dynamo_export_matches_torch(name: str, zoo_pair):
    model, path = zoo_pair(name, "dynamo")
    assert not list(path.parent.glob(path.name + "*.data"))
    proto = onnx.load(str(path), load_external_data=False)
    assert not any(onnx.external_data_helper.uses_external_data(t) for t in proto.graph.initializer)
    onnx.checker.check_model(proto)
    assert [i.name for i in proto.graph.input] == ["input"]
    _assert_close(*_run_both(model, path, ZOO[name].input_shape))


def test_export_zoo_and_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    written = export_zoo(tmp_path / "a", ["mlpnet"])
    assert [p.name for p in written] == ["mlpnet.onnx", "mlpnet.dynamo.onnx"]
    assert main(["--only", "mlpnet", "--exporter", "legacy", "--out", str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out == [str(tmp_path / "b" / "mlpnet.onnx")]
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["mlpnet.onnx"]
    with pytest.raises(ValueError, match="unknown exporter"):
        export_zoo(tmp_path / "c", ["mlpnet"], exporters=("jit",))


# --------------------------------------------------------------------------- synthetic


@pytest.mark.parametrize("n_blocks", [0, 1, 5, 40])
def test_residual_chain_shape_and_runs(n_blocks: int):
    model = residual_chain(n_blocks, channels=4)
    assert len(model.graph.node) == 7 * n_blocks + 4
    onnx.checker.check_model(model, full_check=True)
    counts = _op_counts(model)
    assert counts["Conv"] == 2 * n_blocks + 1
    assert counts["BatchNormalization"] == 2 * n_blocks
    assert counts["Add"] == n_blocks
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((1, 4, 4, 4), dtype=np.float32)
    (y,) = sess.run(None, {"input": x})
    assert y.shape == (1, 10)
    assert np.all(np.isfinite(y))


def test_residual_chain_is_seeded_and_bn_valid():
    a, b = residual_chain(3, seed=1), residual_chain(3, seed=1)
    assert a.SerializeToString() == b.SerializeToString()
    assert a.SerializeToString() != residual_chain(3, seed=2).SerializeToString()
    var = [
        onnx.numpy_helper.to_array(t) for t in a.graph.initializer if t.name.endswith("running_var")
    ]
    assert len(var) == 6
    assert all(np.all(v > 0) for v in var)


def test_residual_chain_scales_to_many_nodes():
    model = residual_chain(2000)
    assert len(model.graph.node) == 14_004
    onnx.checker.check_model(model)


@pytest.mark.parametrize("n_layers", [1, 3, 1702])
def test_mlp_chain(n_layers: int):
    model = mlp_chain(n_layers, width=8)
    assert len(model.graph.node) == 2 * n_layers
    assert _op_counts(model) == {"Gemm": n_layers, "Relu": n_layers}
    onnx.checker.check_model(model)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (y,) = sess.run(None, {"input": np.ones((1, 8), np.float32)})
    assert y.shape == (1, 8)
    assert np.all(y >= 0)
