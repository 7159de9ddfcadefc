"""ZIG index tensors and the DHSPG optimizer: exact zeros, target sparsity, descent, resume."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

import trainers.zig
from models.zoo import build
from onnxoto.groups import Group, IndexMap, Member, check_masks
from onnxoto.masking import zero_channels
from onnxoto.partition import partition
from trainers.dhspg import DHSPG, STALLED, DHSPGOptions, redundant_lambdas
from trainers.zig import ZigIndex, build_zig_index, row_stats

STEPS = 600
# Our earlier rules (kept as options; OTOv2's are the defaults, tests/test_dhspg_official.py):
# a redundant set of exactly the target, pushed until all of it is zero, re-chosen every period.
OLD_RULES = dict(tolerance=0.0, release=False, score="salience", lam_bracket=True)
OPTIONS = dict(lr=0.1, momentum=0.9, warmup_steps=50, period=100, epsilon=0.5, **OLD_RULES)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def exported(zoo_cache):
    """name -> (legacy onnx path, groups) for the zoo models these tests use."""
    return {name: (zoo_cache(name), partition(str(zoo_cache(name))).groups)
            for name in ("mlpnet", "demonet")}


# --------------------------------------------------------------------------- ZigIndex


def _reference_zig_ids(groups: list[Group], params: dict[str, torch.Tensor]) -> dict:
    """Slow per-group, per-member reference: name -> array of zig id per element (-1 = none)."""
    ids = {name: np.full(p.shape, -1, dtype=np.int64) for name, p in params.items()}
    first = 0
    for group in (g for g in groups if g.prunable):
        for member in group.by_role("producer"):
            target = np.moveaxis(ids[member.initializer], member.axis, 0)
            for channel in range(group.size):
                rows = member.index_map.indices(np.array([channel]))
                assert (target[rows] == -1).all(), "reference: element claimed twice"
                target[rows] = first + channel
        first += group.size
    return ids


def test_zig_index_matches_slow_reference(exported):
    _, groups = exported["demonet"]
    model = build("demonet", 0)
    params = dict(model.named_parameters())
    zig = build_zig_index(groups, params)
    assert zig.num_groups == sum(g.size for g in groups if g.prunable)
    assert len(zig.owners) == zig.num_groups

    reference = _reference_zig_ids(groups, params)
    for entry in zig.entries:
        got = np.full(entry.param.numel(), -1, dtype=np.int64)
        got[entry.flat.numpy()] = entry.zig.numpy()
        assert np.array_equal(got, reference[entry.name].reshape(-1)), entry.name
        assert entry.flat.unique().numel() == entry.flat.numel()
    covered = {e.name for e in zig.entries}
    assert all((reference[n] == -1).all() for n in params if n not in covered)

    slow = np.zeros(zig.num_groups)
    for name, ids in reference.items():
        values = params[name].detach().double().numpy()
        owned = ids >= 0
        slow += np.bincount(ids[owned], weights=values[owned] ** 2, minlength=zig.num_groups)
    fast = zig.group_sq_norms().double().numpy()
    np.testing.assert_allclose(fast, slow, rtol=1e-5)
    assert zig.sizes.sum() == sum(int((ids >= 0).sum()) for ids in reference.values())


def _toy_groups() -> tuple[list[Group], dict[str, torch.nn.Parameter]]:
    """w (6 x 3): rows 0-1 are prunable group 0, rows 2-5 a non-prunable group; b (2) joins 0."""
    torch.manual_seed(0)
    params = {"w": torch.nn.Parameter(torch.randn(6, 3)),
              "b": torch.nn.Parameter(torch.randn(2))}
    groups = [
        Group(0, 2, True, None, [Member("w", 0, "producer"), Member("b", 0, "producer")]),
        Group(1, 4, False, "test", [Member("w", 0, "producer", IndexMap(offset=2))]),
    ]
    return groups, params


def test_partial_parameter_and_exact_zero():
    groups, params = _toy_groups()
    zig = build_zig_index(groups, params)
    assert zig.num_groups == 2
    entry = {e.name: e for e in zig.entries}
    assert not entry["w"].dense and entry["b"].dense
    assert entry["w"].flat.tolist() == list(range(6))
    before = params["w"].detach().clone()
    zig.zero_(params, torch.tensor([False, True]))
    assert (params["w"][1] == 0).all() and params["b"][1] == 0
    assert torch.equal(params["w"][[0, 2, 3, 4, 5]], before[[0, 2, 3, 4, 5]])
    assert zig.zero_zigs().tolist() == [False, True]
    assert zig.zero_fraction() == 0.5
    keep = zig.masks()
    assert list(keep) == [0] and keep[0].tolist() == [True, False]


def test_inner_axis_member_and_blocks():
    """A ConvTranspose-style slice on axis 1, and a block map (channel c owns indices 2c, 2c+1)."""
    torch.manual_seed(0)
    params = {"t": torch.randn(3, 4, 2, dtype=torch.float64), "f": torch.randn(5, 6)}
    groups = [Group(0, 4, True, None, [Member("t", 1, "producer")]),
              Group(1, 3, True, None, [Member("f", 1, "producer", IndexMap(block=2))])]
    zig = build_zig_index(groups, params)
    assert zig.sizes.tolist() == [6, 6, 6, 6, 10, 10, 10]
    expected = torch.cat([params["t"].pow(2).sum((0, 2)),
                          params["f"].pow(2).sum(0).view(3, 2).sum(1).double()])
    # "f" is float32: compare at float32 precision (norms and sums of squares round differently)
    torch.testing.assert_close(zig.group_sq_norms().float(), expected.float())
    zig.scale_(params, torch.tensor([1.0, 2.0, 1.0, 1.0, 1.0, 1.0, 3.0]))
    zig.zero_(params, torch.tensor([True, False, False, False, False, True, False]))
    assert (params["t"][:, 0] == 0).all() and (params["f"][:, 2:4] == 0).all()
    assert zig.zero_zigs().tolist() == [True, False, False, False, False, True, False]
    torch.testing.assert_close(zig.group_sq_norms()[[1, 6]].float(),
                               torch.stack([4 * expected[1], 9 * expected[6]]).float())


def test_touched_and_broadcast_subsets():
    """``touched`` finds, per mask, exactly the parameters holding a row of a True ZIG (one
    host sync for all masks); ``broadcast`` to a subset gives those parameters' per-row values."""
    groups, params = _toy_groups()
    params["v"] = torch.nn.Parameter(torch.randn(4, 5))
    groups.append(Group(2, 5, True, None, [Member("v", 1, "producer")]))
    zig = build_zig_index(groups, params)  # ZIGs 0-1: w rows 0-1 and b; 2-6: v's columns
    none, only_v, both = (torch.zeros(7, dtype=torch.bool) for _ in range(3))
    only_v[4] = True
    both[[1, 6]] = True
    got = zig.touched(none, only_v, both)
    assert [[e.name for e in hit] for hit in got] == [[], ["v"], ["w", "b", "v"]]
    per_zig = torch.arange(7, dtype=torch.float32)
    subset = zig.broadcast(per_zig, -1.0, got[1])
    assert list(subset) == ["v"] and subset["v"].tolist() == [[2.0, 3.0, 4.0, 5.0, 6.0]]
    full = zig.broadcast(per_zig, -1.0)
    assert full["w"].view(-1).tolist() == [0.0, 1.0, -1.0, -1.0, -1.0, -1.0]
    assert torch.equal(full["v"], subset["v"])


def _slow_pair_stats(zig: ZigIndex, a: dict, b: dict) -> torch.Tensor:
    """Per-ZIG <a,a>, <a,b>, <b,b> from element indices, in float64 (Tensor[3, K])."""
    out = torch.zeros(3, zig.num_groups, dtype=torch.float64)
    for e in zig.entries:
        x, y = (t[e.name].detach().double().reshape(-1)[e.flat] for t in (a, b))
        for row, values in enumerate((x * x, x * y, y * y)):
            out[row].index_add_(0, e.zig, values)
    return out


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_pair_stats_match_element_reference(compiled):
    """DHSPG's per-step sums on rows (axis 0, contiguous), inner-axis and block slices, a bias,
    and a parameter only partly owned by ZIGs; eager and torch.compile'd paths alike."""
    groups, params = _toy_groups()
    torch.manual_seed(1)
    params |= {"t": torch.randn(3, 4, 2), "f": torch.randn(5, 6), "c": torch.randn(4, 2, 3, 3)}
    groups += [Group(2, 4, True, None, [Member("t", 1, "producer")]),
               Group(3, 3, True, None, [Member("f", 1, "producer", IndexMap(block=2))]),
               Group(4, 4, True, None, [Member("c", 0, "producer")])]
    zig = build_zig_index(groups, params)
    directions = {name: torch.randn(p.shape) for name, p in params.items()}
    got = torch.stack(zig.pair_stats(params, directions, compiled=compiled))
    assert got.shape == (3, zig.num_groups)
    torch.testing.assert_close(got.double(), _slow_pair_stats(zig, params, directions),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("chunk_rows", [1, 3, 5, 40], ids=lambda n: f"{n}-row chunks")
def test_chunked_row_stats_match_one_pass(monkeypatch, chunk_rows):
    """A large CPU parameter is summed a chunk of rows at a time (the last chunk partial); one
    under two chunks in one pass. A parameter that requires grad is fine (no autograd)."""
    torch.manual_seed(2)
    a, b = torch.randn(1, 10, 24, requires_grad=True), torch.randn(1, 10, 24)
    expected = torch.stack([(a.double() ** 2).sum((0, 2)), (a.double() * b).sum((0, 2)),
                            (b.double() ** 2).sum((0, 2))]).detach()
    monkeypatch.setattr(trainers.zig, "CHUNK_BYTES", chunk_rows * 24 * 4)
    chunked = trainers.zig._chunked_row_stats
    calls = []
    monkeypatch.setattr(trainers.zig, "_chunked_row_stats",
                        lambda *args: calls.append(1) or chunked(*args))
    torch.testing.assert_close(row_stats(a, b).double(), expected, rtol=1e-5, atol=1e-6)
    assert len(calls) == (chunk_rows <= 5)


def test_overlapping_groups_refused():
    groups, params = _toy_groups()
    groups[1].prunable = True
    groups[1].members = [Member("w", 0, "producer", IndexMap(offset=1))]
    groups[1].size = 3
    with pytest.raises(ValueError, match="two ZIGs"):
        build_zig_index(groups, params)


def test_missing_producer_refused():
    groups, params = _toy_groups()
    del params["b"]
    with pytest.raises(ValueError, match="'b'"):
        build_zig_index(groups, params)


# --------------------------------------------------------------------------- lambda and step


def test_redundant_lambdas_keep_descent_and_shrink():
    """``bracket`` (our option): the midpoint whenever the clipped lambda leaves (L, U)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4000, 8, generator=gen, dtype=torch.float64)
    d = torch.randn(4000, 8, generator=gen, dtype=torch.float64)
    d *= torch.logspace(-3, 2, 4000, dtype=torch.float64)[torch.randperm(4000, generator=gen), None]
    d[:100] = -2.5 * x[:100] + 1e-3 * d[:100]  # nearly parallel: a narrow (L, U)
    xx, xd, dd = (x * x).sum(1), (x * d).sum(1), (d * d).sum(1)
    for lam, amplify, hat in ((1e-3, 2.0, 10.0), (1e-2, 20.0, 1e3)):
        lam_g = redundant_lambdas(xx, xd, dd, lam=lam, amplify=amplify, hat=hat, bracket=True)
        step = d + lam_g[:, None] * x / xx.sqrt()[:, None]
        assert ((step * d).sum(1) > 0).all(), "redundant step must stay a descent direction"
        assert ((step * x).sum(1) > 0).all(), "redundant step must shrink ||x||"
        assert torch.equal(lam_g[xd >= 0], torch.full_like(lam_g[xd >= 0], lam))
        lower = (-xd / xx.sqrt()).clamp_min(0)
        clipped = (amplify * lower).clamp(lam, lam * hat)
        upper = torch.where(xd < 0, dd * xx.sqrt() / -xd, torch.inf)
        usable = (clipped > lower * (1 + 1e-9)) & (clipped < upper * (1 - 1e-9))
        torch.testing.assert_close(lam_g[usable], clipped[usable], rtol=1e-12, atol=0)
        midpoint = ~usable & (clipped > lower * (1 + 1e-9))  # clipped breaks descent
        torch.testing.assert_close(lam_g[midpoint], ((lower + upper) / 2)[midpoint])


def _mlp_setup(exported, seed: int = 0, noise: float = 0.1):
    """mlpnet on a synthetic task (a small teacher reading 16 inputs, some labels flipped)."""
    _, groups = exported["mlpnet"]
    model = build("mlpnet", 0).train()
    params = dict(model.named_parameters())
    zig = build_zig_index(groups, params)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(512, 1, 28, 28, generator=gen)
    teacher = torch.nn.Sequential(torch.nn.Linear(16, 6), torch.nn.Tanh(), torch.nn.Linear(6, 10))
    with torch.no_grad():
        for p in teacher.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
        y = teacher(x.flatten(1)[:, :16]).argmax(1)
    flip = torch.rand(512, generator=gen) < noise
    y = torch.where(flip, torch.randint(0, 10, (512,), generator=gen), y)
    return model, params, zig, x, y


def _train(model, opt, x, y, steps: int, start: int = 0) -> None:
    loss_fn = torch.nn.CrossEntropyLoss()
    for step in range(start, start + steps):
        batch = torch.randint(0, len(x), (64,), generator=torch.Generator().manual_seed(step))
        opt.zero_grad()
        loss_fn(model(x[batch]), y[batch]).backward()
        opt.step()


def _full_loss(model, x, y) -> float:
    with torch.no_grad():
        return float(torch.nn.functional.cross_entropy(model(x), y))


def test_redundant_step_is_descent_and_shrinks(exported):
    model, params, zig, x, y = _mlp_setup(exported)
    opt = DHSPG(params, zig, DHSPGOptions(lr=1e-4, target_group_sparsity=0.9, period=1000,
                                          **OLD_RULES))
    before = {n: p.detach().clone() for n, p in params.items()}
    torch.nn.functional.cross_entropy(model(x), y).backward()
    grads = {n: p.grad.clone() for n, p in params.items()}
    opt.step()
    delta = {n: params[n].detach() - before[n] for n in params}
    red = opt._redundant
    whole = sum(bool(red[a:a + n].all()) for a, n in ((0, 40), (40, 20)))
    assert whole == 0 and int(red.sum()) == int(0.9 * zig.num_groups) - 1, "one kept per group"
    descent = zig.dot(delta, grads)
    assert (descent[red] < 0).all(), "the redundant update must lower the linearized loss"
    assert (zig.dot(delta, before)[red] < 0).all(), "the redundant update must shrink ||x||"


def test_zero_redundant_set_takes_the_plain_step_without_the_sums(exported, monkeypatch):
    """Once every redundant ZIG is exactly 0 (most of a run), a step between choices is the
    plain step with those ZIGs held at 0, and the per-ZIG sums are not swept; a choice step
    still sweeps."""
    model, params, zig, x, y = _mlp_setup(exported)
    zero = torch.zeros(zig.num_groups, dtype=torch.bool)
    zero[torch.randperm(zig.num_groups, generator=torch.Generator().manual_seed(0))
         [:zig.num_groups // 2]] = True
    zig.zero_(params, zero)
    opt = DHSPG(params, zig, DHSPGOptions(lr=0.1, target_group_sparsity=0.5, period=3,
                                          **OLD_RULES))
    sweeps = []
    pair_stats = zig.pair_stats
    monkeypatch.setattr(zig, "pair_stats", lambda *a, **k: sweeps.append(1) or pair_stats(*a, **k))
    for step in range(4):
        before = {n: p.detach().clone() for n, p in params.items()}
        _train(model, opt, x, y, 1, start=step)
        expected = {n: before[n].add(params[n].grad, alpha=-0.1) for n in params}
        zig.zero_(expected, zero)
        assert torch.equal(opt._redundant, zero)
        for name, p in params.items():
            torch.testing.assert_close(p.detach(), expected[name], rtol=0, atol=0, msg=name)
    assert len(sweeps) == 2, "only the choice steps (0 and 3) sweep the per-ZIG sums"


# --------------------------------------------------------------------------- training


def test_reaches_target_with_exact_zeros_and_lower_loss(exported):
    model, params, zig, x, y = _mlp_setup(exported)
    initial = _full_loss(model, x, y)
    opt = DHSPG(params, zig, DHSPGOptions(target_group_sparsity=0.5, **OPTIONS))
    _train(model, opt, x, y, STEPS)
    diag = opt.diagnostics()
    assert diag["group_sparsity"] >= 0.5 - 1 / zig.num_groups, diag
    assert diag["redundant_count"] >= zig.num_groups // 2 and not diag["in_warmup"]
    assert diag["redundant_live"] <= 1 and diag["redundant_mean_norm"] < diag["important_mean_norm"]
    assert _full_loss(model, x, y) < initial

    zero = zig.zero_zigs()  # exactly 0, not merely small: zero_fraction counts these
    assert not (zero & ~opt._redundant).any(), "only redundant ZIGs are projected to zero"
    snapshot = {n: p.detach().clone() for n, p in params.items()}
    _train(model, opt, x, y, 50, start=STEPS)
    assert (zig.zero_zigs() | ~zero).all(), "zero ZIGs must stay exactly zero"
    assert zig.group_sq_norms(snapshot)[zero].sum() == 0

    keep = zig.masks()
    flat_keep = np.concatenate([keep[gid] for gid in zig.group_sizes])
    assert np.array_equal(~flat_keep, zig.zero_zigs().numpy())


def test_masks_match_zero_channels(exported):
    model, params, zig, x, y = _mlp_setup(exported)
    opt = DHSPG(params, zig, DHSPGOptions(target_group_sparsity=0.5, **OPTIONS))
    _train(model, opt, x, y, STEPS)
    path, groups = exported["mlpnet"]
    proto = onnx.load(str(path))
    for init in proto.graph.initializer:
        init.CopyFrom(numpy_helper.from_array(params[init.name].detach().numpy(), init.name))
    masks = check_masks({f"g{gid}": keep for gid, keep in zig.masks().items()}, groups)
    assert masks, "training removed nothing"
    zeroed = zero_channels(proto, groups, masks)
    for a, b in zip(proto.graph.initializer, zeroed.graph.initializer, strict=True):
        assert np.array_equal(numpy_helper.to_array(a), numpy_helper.to_array(b)), a.name


def _run(exported, steps: int, variant: str = "sgd", seed: int = 3) -> dict[str, torch.Tensor]:
    model, params, zig, x, y = _mlp_setup(exported)
    options = dict(OPTIONS, period=40) if variant == "sgd" else dict(lr=1e-2, warmup_steps=50,
                                                                       period=100, epsilon=0.5)
    opt = DHSPG(params, zig, DHSPGOptions(variant=variant, seed=seed, **options))
    _train(model, opt, x, y, steps)
    return {n: p.detach().clone() for n, p in params.items()}


def _releases(exported, reselect: bool) -> tuple[int, float]:
    """(releases of redundant groups that were still shrinking, final zero fraction) of an MLP
    run that chooses every 10 steps."""
    model, params, zig, x, y = _mlp_setup(exported)
    options = DHSPGOptions(**dict(OPTIONS, period=10), reselect=reselect)
    opt = DHSPG(params, zig, options)
    released, at_choice = 0, None
    for step in range(STEPS):
        before, norm = opt._redundant.clone(), zig.group_sq_norms().sqrt()
        _train(model, opt, x, y, 1, start=step)
        if step >= options.warmup_steps and (step - options.warmup_steps) % options.period == 0:
            if at_choice is not None:
                shrinking = (norm > 0) & (norm < STALLED * at_choice)
                released += int((before & ~opt._redundant & shrinking).sum())
            at_choice = norm
    return released, zig.zero_fraction()


def test_shrinking_groups_stay_redundant_unless_reselect(exported):
    """A group under push looks important to the salience (the loss resists it); released, it
    would keep its half-shrunk weights. By default only stalled groups compete again, so the
    target is reached even with choices every 10 steps; ``reselect`` (OTOv2's re-partition)
    releases shrinking groups and falls short."""
    released, sparsity = _releases(exported, reselect=False)
    assert released == 0 and sparsity >= 0.5 - 1 / 60
    released, sparsity = _releases(exported, reselect=True)
    assert released > 0 and sparsity < 0.5 - 1 / 60  # short of the target by more than a group


def test_deterministic_under_seed(exported):
    first, second = _run(exported, 120), _run(exported, 120)
    assert all(torch.equal(first[n], second[n]) for n in first)


def test_state_dict_round_trip(exported):
    model, params, zig, x, y = _mlp_setup(exported)
    options = DHSPGOptions(variant="adam", lr=1e-2, warmup_steps=20, period=30, epsilon=0.5,
                           **OLD_RULES)
    opt = DHSPG(params, zig, options)
    _train(model, opt, x, y, 70)
    saved_params = copy.deepcopy(model.state_dict())
    saved_opt = copy.deepcopy(opt.state_dict())
    _train(model, opt, x, y, 40, start=70)  # crosses the re-selection at step 80
    expected = {n: p.detach().clone() for n, p in params.items()}

    model2, params2, zig2, _, _ = _mlp_setup(exported)
    model2.load_state_dict(saved_params)
    opt2 = DHSPG(params2, zig2, options)
    opt2.load_state_dict(saved_opt)
    assert opt2.diagnostics()["step"] == 70
    _train(model2, opt2, x, y, 40, start=70)
    assert all(torch.equal(expected[n], params2[n].detach()) for n in expected)


def test_adam_variant_reaches_target_with_exact_zeros(exported):
    """Adam's push is gentler than SGD's: run until the target is met within one group (about
    650 steps here), with room for twice that; zeros fall only in the redundant set."""
    model, params, zig, x, y = _mlp_setup(exported)
    initial = _full_loss(model, x, y)
    opt = DHSPG(params, zig, DHSPGOptions(variant="adam", lr=1e-2, warmup_steps=50, period=100,
                                          epsilon=0.5, **OLD_RULES))
    assert opt.options.lam == 1e-2 and opt.options.lam_hat == 1e3
    goal = opt.options.target_group_sparsity - 1 / zig.num_groups
    step, zero = 0, zig.zero_zigs()
    while zig.zero_fraction() < goal and step < 1300:
        _train(model, opt, x, y, 50, start=step)
        step += 50
        assert (zig.zero_zigs() | ~zero).all(), f"step {step}: a zero ZIG came back"
        zero = zig.zero_zigs()
        assert not (zero & ~opt._redundant).any(), f"step {step}: an important ZIG is zero"
    assert zig.zero_fraction() >= goal, f"{zig.zero_fraction():.3f} after {step} steps"
    assert int(opt._redundant.sum()) == round(opt.options.target_group_sparsity * zig.num_groups)
    assert _full_loss(model, x, y) < initial


def test_warmup_is_plain_sgd(exported):
    model, params, zig, x, y = _mlp_setup(exported)
    reference = copy.deepcopy(model)
    opt = DHSPG(params, zig, DHSPGOptions(lr=0.05, momentum=0.9, warmup_steps=30))
    sgd = torch.optim.SGD(reference.parameters(), lr=0.05, momentum=0.9)
    _train(model, opt, x, y, 30)
    _train(reference, sgd, x, y, 30)
    for (name, p), q in zip(params.items(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)
    assert opt.diagnostics()["in_warmup"] is False and zig.zero_fraction() == 0.0


def test_target_zero_ignores_the_sparsity_settings(exported):
    """At target 0 no group is ever redundant: warm-up, period, epsilon and lam cannot change a
    run (the DemoNet benchmark relies on this to reuse its baseline across those settings)."""
    runs = []
    for settings in (dict(), dict(warmup_steps=25, period=7, epsilon=0.9, lam=0.5, lam_hat=2.0)):
        model, params, zig, x, y = _mlp_setup(exported)
        opt = DHSPG(params, zig, DHSPGOptions(variant="adam", lr=1e-2,
                                              target_group_sparsity=0.0, **settings))
        _train(model, opt, x, y, 60)
        runs.append({n: p.detach().clone() for n, p in params.items()})
    assert all(torch.equal(runs[0][n], runs[1][n]) for n in runs[0])


def test_options_validated():
    with pytest.raises(ValueError, match="variant"):
        DHSPGOptions(variant="rmsprop")
    with pytest.raises(ValueError, match="epsilon"):
        DHSPGOptions(epsilon=0.99)
    assert DHSPGOptions().lam == 1e-3 and DHSPGOptions(variant="adam").lam_amplify == 20


def test_empty_index_is_plain_optimizer():
    param = torch.nn.Parameter(torch.ones(3))
    zig = ZigIndex(num_groups=0, owners=[], entries=[], group_sizes={})
    opt = DHSPG({"p": param}, zig, DHSPGOptions(lr=0.5))
    param.grad = torch.ones(3)
    opt.step()
    assert torch.equal(param.detach(), torch.full((3,), 0.5))
    assert opt.diagnostics()["group_sparsity"] == 0.0
