"""trainers.attach: a user's own module or an ONNX file, the user's own loop (AMP, schedulers,
gradient accumulation, DDP), job.save's files, and the one-line errors."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

import trainers  # noqa: E402
from onnxoto.errors import OnnxotoError  # noqa: E402
from onnxoto.runtime import session  # noqa: E402
from trainers.api import FILES  # noqa: E402
from trainers.dhspg import DHSPGOptions  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
README_MARKERS = ("<!-- own-loop -->", "<!-- /own-loop -->")
# Prunes within a few steps: a strong push, projected early.
FAST = DHSPGOptions(epsilon=0.9, lam=1.0)


def _own_loop_code() -> str:
    readme = (ROOT / "README.md").read_text()
    start, end = README_MARKERS
    assert start in readme and end in readme, "README.md lost its own-loop markers"
    text = readme[readme.index(start):readme.index(end)]
    return re.search(r"```python\n(.*?)```", text, re.S).group(1)


def test_readme_own_loop_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the README saves to "out/"
    namespace: dict = {}
    torch.manual_seed(0)
    exec(compile(_own_loop_code(), "README own-loop", "exec"), namespace)
    for name in FILES.values():
        assert (tmp_path / "out" / name).is_file(), name
    metrics = namespace["metrics"]
    assert metrics["validation"]["passed"]
    assert metrics["params"]["slim"] < metrics["params"]["input"]


# --------------------------------------------------------------------------- module vs ONNX


def _group_signature(parts) -> list[tuple]:
    return sorted((g.size, g.prunable, tuple(sorted((m.initializer, m.axis, m.role)
                                                    for m in g.members)))
                  for g in parts.groups)


def _train(job, steps: int, seed: int) -> None:
    opt = job.dhspg(lr=0.05, target=0.5, options=FAST)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(4, 3, 16, 16, generator=generator)
        loss = (job.module(x) - torch.nn.functional.interpolate(x, scale_factor=2)).abs().mean()
        loss.backward()
        opt.step()
        opt.zero_grad()


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    runner = session(model)
    return runner.run(None, {runner.get_inputs()[0].name: x})[0]


def test_module_and_its_onnx_export_train_to_the_same_slim_model(zoo_cache, tmp_path):
    from models.zoo import ZOO, build

    shape = ZOO["carn"].input_shape
    module = build("carn", seed=0)
    from_module = trainers.attach(copy.deepcopy(module), example_inputs=torch.zeros(shape))
    from_onnx = trainers.attach(zoo_cache("carn"))
    assert _group_signature(from_module.parts) == _group_signature(from_onnx.parts)
    assert from_module.parts.prunable
    for job in (from_module, from_onnx):
        torch.manual_seed(0)
        _train(job, steps=8, seed=1)
    a = from_module.save(tmp_path / "module")
    b = from_onnx.save(tmp_path / "onnx")
    assert a["channels"]["removed"] > 0
    assert a["channels"] == b["channels"] and a["params"] == b["params"]
    slim_a = onnx.load(tmp_path / "module" / FILES["slim"])
    slim_b = onnx.load(tmp_path / "onnx" / FILES["slim"])
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    np.testing.assert_allclose(_run(slim_a, x), _run(slim_b, x), atol=1e-5, rtol=0)
    assert a["module_vs_slim_max_abs"] <= 1e-4


# --------------------------------------------------------------------------- the user's loop


class Small(nn.Module):
    """conv-BN-ReLU twice, pooled, then a Linear: BN producers, a Gemm consumer."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.head(x.mean(dim=(2, 3)))


def _small_job(seed: int = 0):
    torch.manual_seed(seed)
    return trainers.attach(Small(), example_inputs=torch.zeros(1, 1, 6, 6))


def _batches(n: int, size: int = 8):
    generator = torch.Generator().manual_seed(3)
    return [(torch.randn(size, 1, 6, 6, generator=generator),
             torch.randint(0, 4, (size,), generator=generator)) for _ in range(n)]


def _loss(job, x, y):
    return torch.nn.functional.cross_entropy(job.module(x), y)


def _params(job):
    return {k: v.detach().clone() for k, v in job.module.state_dict().items()}


def _plain_run(steps: int = 6, *, train_mode: bool = True):
    job = _small_job()
    job.module.train(train_mode)
    opt = job.dhspg(lr=0.1, target=0.5, options=FAST)
    for x, y in _batches(steps):
        _loss(job, x, y).backward()
        opt.step()
        opt.zero_grad()
    return job


def _assert_same(a, b, atol: float = 0.0):
    pa, pb = _params(a), _params(b)
    for name in pa:
        torch.testing.assert_close(pa[name], pb[name], atol=atol, rtol=0, msg=name)


def test_grad_scaler_unscales_before_the_dhspg_step():
    """A power-of-two loss scale is exact in float32: a GradScaler loop must step exactly as the
    plain loop does; stepping on scaled gradients would move by 2**16 times more."""
    plain = _plain_run()
    job = _small_job()
    opt = job.dhspg(lr=0.1, target=0.5, options=FAST)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)
    for x, y in _batches(6):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=False):
            loss = _loss(job, x, y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad()
    assert scaler.get_scale() == 2.0 ** 16  # no step skipped
    _assert_same(plain, job)
    assert job.zig.zero_fraction() > 0


def test_grad_scaler_under_bf16_autocast_trains_and_saves(tmp_path):
    job = _small_job()
    opt = job.dhspg(lr=0.1, target=0.5, options=FAST)
    scaler = torch.amp.GradScaler("cpu")
    for x, y in _batches(8):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = _loss(job, x, y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad()
    metrics = job.save(tmp_path)
    assert metrics["channels"]["removed"] > 0 and metrics["validation"]["passed"]


def test_lr_scheduler_sets_the_rate_dhspg_uses():
    """A scheduler that drops the rate to 0 after 3 steps freezes every weight from then on."""
    job = _small_job()
    opt = job.dhspg(lr=0.1, target=0.5, options=FAST)
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 if step < 3 else 0.0)
    snapshots = []
    for x, y in _batches(6):
        _loss(job, x, y).backward()
        opt.step()
        opt.zero_grad()
        scheduler.step()
        snapshots.append(_params(job)["conv1.weight"])
    assert not torch.equal(snapshots[0], snapshots[2])
    assert all(torch.equal(snapshots[2], s) for s in snapshots[3:])


def test_gradient_accumulation_equals_the_whole_batch():
    """In eval mode (BatchNorm on running statistics) two half-batch backwards of half the
    loss sum to the whole batch's gradient."""
    plain = _plain_run(train_mode=False)
    job = _small_job()
    job.module.eval()
    opt = job.dhspg(lr=0.1, target=0.5, options=FAST)
    for x, y in _batches(6):
        for half in (slice(0, 4), slice(4, 8)):
            (_loss(job, x[half], y[half]) / 2).backward()
        opt.step()
        opt.zero_grad()
    _assert_same(plain, job, atol=1e-5)


DDP_SCRIPT = textwrap.dedent('''
    import sys
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    sys.path.insert(0, sys.argv[2])
    from tests.test_attach import _batches, _small_job
    from trainers.dhspg import DHSPGOptions

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    job = _small_job()
    job.module.eval()  # BatchNorm on running statistics: each rank's half adds up exactly
    net = DistributedDataParallel(job.module)
    opt = job.dhspg(lr=0.1, target=0.5, options=DHSPGOptions(epsilon=0.9, lam=1.0))
    for x, y in _batches(6, size=16):
        half = slice(8 * rank, 8 * rank + 8)
        torch.nn.functional.cross_entropy(net(x[half]), y[half]).backward()
        opt.step()
        opt.zero_grad()
    weights = torch.cat([p.detach().reshape(-1) for p in job.module.parameters()])
    gathered = [torch.zeros_like(weights) for _ in range(2)]
    dist.all_gather(gathered, weights)
    assert torch.equal(gathered[0], gathered[1]), "ranks diverged"
    if rank == 0:
        job.save(sys.argv[1])
    dist.barrier()
    dist.destroy_process_group()
''')


def test_ddp_under_torchrun_matches_the_single_process_run(tmp_path):
    """Two gloo ranks, each on half of every batch: DDP averages the gradients, so the weights
    equal one process stepping on the whole batch."""
    script = tmp_path / "ddp_job.py"
    script.write_text(DDP_SCRIPT)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
               "2", str(script), str(out), str(ROOT)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=180, env=env,
                          cwd=ROOT)
    assert done.returncode == 0, done.stderr[:1500] + "\n...\n" + done.stderr[-1500:]
    metrics = json.loads((out / FILES["metrics"]).read_text())
    single = _small_job()
    single.module.eval()
    opt = single.dhspg(lr=0.1, target=0.5, options=FAST)
    for x, y in _batches(6, size=16):
        _loss(single, x, y).backward()
        opt.step()
        opt.zero_grad()
    trained = onnx.load(out / FILES["trained"])
    stored = {t.name: onnx.numpy_helper.to_array(t) for t in trained.graph.initializer}
    for name, value in _params(single).items():
        if name in stored:
            np.testing.assert_allclose(stored[name], value.numpy(), atol=1e-5, rtol=0,
                                       err_msg=name)
    assert metrics["validation"]["passed"]


# --------------------------------------------------------------------------- errors


def test_step_before_any_backward_is_one_line():
    opt = _small_job().dhspg()
    with pytest.raises(OnnxotoError, match="before any backward") as caught:
        opt.step()
    assert "\n" not in str(caught.value)


class NotTraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)

    def forward(self, x):
        return self.conv(x).numpy()  # leaves torch: the tracer cannot follow


def test_module_that_cannot_be_exported_is_one_line():
    with pytest.raises(OnnxotoError, match="NotTraceable: torch.onnx.export") as caught:
        trainers.attach(NotTraceable(), example_inputs=torch.zeros(1, 1, 5, 5))
    assert "\n" not in str(caught.value)


class Parametrized(nn.Module):
    """conv1's weight is computed (weight norm): its export holds no tensor of the module's."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.utils.parametrizations.weight_norm(nn.Conv2d(1, 4, 3, padding=1))
        self.conv2 = nn.Conv2d(4, 2, 3, padding=1)

    def forward(self, x):
        return self.conv2(torch.relu(self.conv1(x)))


def test_parameters_that_cannot_be_mapped_are_named_on_one_line():
    with pytest.raises(OnnxotoError, match="not the module's own tensors") as caught:
        trainers.attach(Parametrized(), example_inputs=torch.zeros(1, 1, 5, 5))
    message = str(caught.value)
    assert "\n" not in message and message.startswith("Parametrized:")


def test_module_without_example_inputs_is_refused():
    with pytest.raises(OnnxotoError, match="example_inputs"):
        trainers.attach(Small())
