"""WoodFisher: the blockwise inverse Fisher, unstructured and group OBS, the cubic schedule, and a
structured prune that shrinks and validates."""

from __future__ import annotations

import onnx
import pytest
import torch

from onnxoto.groups import Group, IndexMap, Member
from onnxoto.masking import masks_from_zeros
from onnxoto.metrics import measure
from onnxoto.partition import partition
from onnxoto.shrink import shrink
from trainers.binding import OnnxModule, write_back
from trainers.woodfisher import (
    BlockFisher,
    BlockLayout,
    CubicSchedule,
    FisherOptions,
    GradualPruner,
    GroupOBS,
    collect_gradients,
    fisher_memory,
    inverse_fisher,
    inverse_fisher_rank1,
    prune_groups,
    prune_unstructured,
    zig_axes,
)
from trainers.woodfisher.fisher import LowRankInverse
from trainers.woodfisher.macs import MacCounter, MacTarget
from trainers.zig import build_zig_index

pytestmark = pytest.mark.usefixtures("one_thread")


def _dense_inverse(grads: torch.Tensor, damping: float) -> torch.Tensor:
    n, d = grads.shape[-2:]
    fisher = damping * torch.eye(d, dtype=grads.dtype) + grads.transpose(-1, -2) @ grads / n
    return torch.linalg.inv(fisher)


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("n, d", [(5, 12), (12, 5), (30, 30)])
@pytest.mark.parametrize("damping", [1e-3, 1e-5])
def test_inverse_matches_dense_inverse(n, d, damping):
    """Woodbury (N < d), direct (N >= d) and the rank-1 recursion all equal torch.linalg.inv of
    the dense damped Fisher, batched over three blocks."""
    grads = torch.randn(3, n, d, dtype=torch.float64, generator=torch.Generator().manual_seed(d))
    reference = _dense_inverse(grads, damping)
    assert _relative(inverse_fisher(grads, damping), reference) <= 1e-5
    assert _relative(inverse_fisher_rank1(grads, damping), reference) <= 1e-5


def test_layout_round_trip_and_blocks():
    layout = BlockLayout({"t": (3, 4, 2)}, block_size=5, axes={"t": 1})
    t = torch.arange(24.0).view(3, 4, 2)
    flat = layout.flat("t", t)
    assert flat[:6].tolist() == t[:, 0, :].reshape(-1).tolist(), "axis 1 goes first"
    assert torch.equal(layout.unflat("t", flat), t)
    assert [(b.start, b.stop) for b in layout.blocks("t")] == [(0, 5), (5, 10), (10, 15),
                                                              (15, 20), (20, 24)]
    batched = layout.flat("t", torch.stack([t, 2 * t]))
    assert torch.equal(batched[1], 2 * flat)


def test_fisher_memory_counts_blocks():
    memory = fisher_memory({"a": (10, 10), "b": (30,)},
                           FisherOptions(num_grads=7, block_size=40, dtype=torch.float64))
    # a: blocks of 40, 40, 20; b: 30
    assert memory["blocks"] == 4 and memory["weights"] == 130
    assert memory["inverse"] == (40 * 40 * 2 + 20 * 20 + 30 * 30) * 8
    assert memory["gradients"] == 7 * 130 * 4


def test_gradients_are_mini_batch_means():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2, bias=False)
    x, y = torch.randn(12, 3), torch.randint(0, 2, (12,))
    params = dict(model.named_parameters())
    options = FisherOptions(num_grads=3, mini_batch=4)
    layout = BlockLayout.of(params, 4)
    batches = [(x[i:i + 5], y[i:i + 5]) for i in range(0, 12, 5)]  # 5, 5, 2: re-cut into 4s
    loss = torch.nn.functional.cross_entropy
    grads = collect_gradients(model, params, batches, loss, options, layout)["weight"]
    for k in range(3):
        expected = torch.autograd.grad(loss(model(x[4 * k:4 * k + 4]), y[4 * k:4 * k + 4]),
                                       model.weight)[0]
        torch.testing.assert_close(grads[k], expected.reshape(-1))


def _quadratic(d: int, n: int, damping: float, seed: int = 0, shape: tuple[int, ...] = ()):
    """A parameter w and a block Fisher whose dense matrix H is the Hessian of
    L(v) = 1/2 (v - w)^T H (v - w): w is the minimum."""
    gen = torch.Generator().manual_seed(seed)
    grads = torch.randn(n, d, dtype=torch.float64, generator=gen)
    w = torch.randn(d, dtype=torch.float64, generator=gen)
    options = FisherOptions(num_grads=n, block_size=d, damping=damping)
    layout = BlockLayout({"w": shape or (d,)}, d)
    fisher = BlockFisher.from_gradients({"w": grads}, layout, options)
    hessian = damping * torch.eye(d, dtype=torch.float64) + grads.T @ grads / n
    return w, fisher, hessian


def test_obs_update_is_exact_on_a_quadratic():
    """Pruning one weight raises the quadratic loss by exactly its saliency, and no other
    choice of the remaining weights does better."""
    w, fisher, hessian = _quadratic(d=8, n=5, damping=1e-2)
    inverse = torch.linalg.inv(hessian)
    saliency = w.square() / (2 * inverse.diagonal())
    params = {"w": w.clone()}
    keep = prune_unstructured(params, 1 / 8, "woodfisher", fisher=fisher)
    q = int(torch.argmin(saliency))
    assert (~keep["w"]).nonzero().flatten().tolist() == [q]
    assert params["w"][q] == 0
    step = params["w"] - w
    increase = 0.5 * step @ hessian @ step
    torch.testing.assert_close(increase, saliency[q], rtol=1e-9, atol=0)
    # without the update, zeroing costs more
    plain = torch.zeros_like(w)
    plain[q] = -w[q]
    assert 0.5 * plain @ hessian @ plain > increase * 1.01


def test_joint_obs_update_is_exact_on_a_quadratic():
    """Pruning a set P at once: the joint update raises the loss by exactly
    1/2 w_P^T ([F^-1]_PP)^-1 w_P, no more than the paper's summed single-weight updates."""
    w, fisher, hessian = _quadratic(d=8, n=5, damping=1e-2, seed=2)
    joint, summed = {"w": w.clone()}, {"w": w.clone()}
    keep = prune_unstructured(joint, 3 / 8, "woodfisher", fisher=fisher, joint=True)
    prune_unstructured(summed, 3 / 8, "woodfisher", fisher=fisher)
    pruned = (~keep["w"]).nonzero().flatten()
    inverse = torch.linalg.inv(hessian)
    expected = 0.5 * w[pruned] @ torch.linalg.solve(inverse[pruned][:, pruned], w[pruned])
    cost = {name: 0.5 * (p["w"] - w) @ hessian @ (p["w"] - w)
            for name, p in (("joint", joint), ("summed", summed))}
    torch.testing.assert_close(cost["joint"], expected, rtol=1e-9, atol=0)
    assert (joint["w"][pruned] == 0).all()
    assert cost["joint"] < cost["summed"]


def test_group_obs_is_exact_on_a_quadratic():
    """A group of three weights: loss increase == rho_Q = 1/2 w_Q^T ([F^-1]_QQ)^-1 w_Q."""
    w, fisher, hessian = _quadratic(d=9, n=4, damping=1e-2, seed=1, shape=(3, 3))
    params = {"w": torch.nn.Parameter(w.clone().view(3, 3))}
    zig = build_zig_index([Group(0, 3, True, None, [Member("w", 0, "producer")])], params)
    obs = GroupOBS.compute(fisher, zig)
    pruned = prune_groups(zig, 1 / 3, fisher=fisher)
    (q,) = pruned.nonzero().flatten().tolist()
    assert q == int(torch.argmin(obs.saliency))
    assert (params["w"][q] == 0).all()
    step = params["w"].detach().reshape(-1) - w
    torch.testing.assert_close(0.5 * step @ hessian @ step, obs.saliency[q], rtol=1e-9, atol=0)


def test_group_obs_with_one_element_groups_equals_unstructured():
    """Groups of one weight each (two parameters, blocks of 4 straddling channels) prune the
    same weights and make the same update as the unstructured pruner."""
    gen = torch.Generator().manual_seed(3)
    shapes = {"a": (10,), "b": (7,)}
    values = {n: torch.randn(s, dtype=torch.float64, generator=gen) for n, s in shapes.items()}
    grads = {n: torch.randn(6, s[0], dtype=torch.float64, generator=gen)
             for n, s in shapes.items()}
    options = FisherOptions(num_grads=6, block_size=4, damping=1e-3)
    fisher = BlockFisher.from_gradients(grads, BlockLayout(shapes, 4, {"a": 0, "b": 0}), options)
    groups = [Group(0, 10, True, None, [Member("a", 0, "producer")]),
              Group(1, 7, True, None, [Member("b", 0, "producer")])]
    structured = {n: torch.nn.Parameter(v.clone()) for n, v in values.items()}
    zig = build_zig_index(groups, structured)
    assert zig_axes(zig) == fisher.layout.axes
    pruned = prune_groups(zig, 6 / 17, fisher=fisher)
    plain = {n: v.clone() for n, v in values.items()}
    keep = prune_unstructured(plain, 6 / 17, "woodfisher", fisher=fisher)
    assert pruned.tolist() == (~torch.cat([keep["a"], keep["b"]])).tolist()
    for name in shapes:
        torch.testing.assert_close(structured[name].detach(), plain[name], rtol=1e-12, atol=1e-12)


def test_group_obs_rows_with_blocks_and_strided_channels():
    """A channel owning two rows (IndexMap block 2) split over Fisher blocks: rho_Q equals the
    dense formula on the block-diagonal inverse."""
    gen = torch.Generator().manual_seed(4)
    params = {"f": torch.nn.Parameter(torch.randn(5, 6, dtype=torch.float64, generator=gen))}
    zig = build_zig_index([Group(0, 3, True, None, [Member("f", 1, "producer",
                                                              IndexMap(block=2))])], params)
    options = FisherOptions(num_grads=4, block_size=7, damping=1e-2)
    layout = BlockLayout.of(params, 7, zig_axes(zig))
    grads = {"f": torch.randn(4, 30, dtype=torch.float64, generator=gen)}
    fisher = BlockFisher.from_gradients(grads, layout, options)
    dense = torch.block_diag(*fisher.inverses)
    flat_w = layout.flat("f", params["f"].detach())
    for channel in range(3):
        index = torch.arange(10 * channel, 10 * channel + 10)  # rows 2c, 2c+1 of 5 each
        sub = dense[index][:, index]
        expected = 0.5 * flat_w[index] @ torch.linalg.solve(sub, flat_w[index])
        torch.testing.assert_close(GroupOBS.compute(fisher, zig).saliency[channel], expected)


def _low_rank_case(n: int, seed: int):
    """Two parameters with channel groups of 6 ("a", 5 channels: m = 6 > n when n = 4) and of 2
    ("b", 4 channels), their gradients, and the same Fisher as dense and as low-rank blocks."""
    gen = torch.Generator().manual_seed(seed)
    shapes = {"a": (5, 6), "b": (4, 2)}
    values = {k: torch.randn(s, dtype=torch.float64, generator=gen) for k, s in shapes.items()}
    grads = {k: torch.randn(n, s[0] * s[1], dtype=torch.float64, generator=gen)
             for k, s in shapes.items()}
    groups = [Group(0, 5, True, None, [Member("a", 0, "producer")]),
              Group(1, 4, True, None, [Member("b", 0, "producer")])]
    layout = BlockLayout(shapes, 1000, {"a": 0, "b": 0})
    options = FisherOptions(num_grads=n, block_size=1000, damping=1e-3)
    dense = BlockFisher.from_gradients(grads, layout, options)
    low = BlockFisher.from_gradients(grads, layout, FisherOptions(
        num_grads=n, block_size=1000, damping=1e-3, low_rank=True))
    return values, groups, dense, low


@pytest.mark.parametrize("n", [4, 16])
@pytest.mark.parametrize("joint", [False, True])
def test_low_rank_group_obs_equals_dense(n, joint):
    """The low-rank block form (no d x d matrix; groups of 6 solved through the N x N system
    when N = 4 < 6, directly when N = 16) gives the dense path's inverse, diagonals, saliencies,
    choice and update to 1e-5 relative, for the summed and the joint update."""
    values, groups, dense, low = _low_rank_case(n, seed=6)
    assert all(isinstance(i, LowRankInverse) for i in low.inverses)
    for a, b in zip(low.inverses, dense.inverses, strict=True):
        assert _relative(a.dense(), b) <= 1e-5
    for name, diag in dense.diagonals().items():
        assert _relative(low.diagonals()[name], diag) <= 1e-5
    runs = {}
    for label, fisher in (("dense", dense), ("low", low)):
        params = {k: torch.nn.Parameter(v.clone()) for k, v in values.items()}
        zig = build_zig_index(groups, params)
        saliency = GroupOBS.compute(fisher, zig).saliency
        pruned = prune_groups(zig, 4 / 9, fisher=fisher, joint=joint)
        runs[label] = saliency, pruned, {k: p.detach() for k, p in params.items()}
    assert _relative(runs["low"][0], runs["dense"][0]) <= 1e-5
    assert torch.equal(runs["low"][1], runs["dense"][1]) and int(runs["low"][1].sum()) == 4
    steps = {label: torch.cat([(run[2][k] - values[k]).reshape(-1) for k in values])
             for label, run in runs.items()}
    assert _relative(steps["low"], steps["dense"]) <= 1e-5


def test_low_rank_one_element_groups_equal_unstructured():
    """Size-1 groups on low-rank blocks prune and update exactly as unstructured OBS on the
    dense inverse of the same gradients."""
    gen = torch.Generator().manual_seed(7)
    values = torch.randn(12, dtype=torch.float64, generator=gen)
    grads = {"w": torch.randn(5, 12, dtype=torch.float64, generator=gen)}
    layout = BlockLayout({"w": (12,)}, 12, {"w": 0})
    dense = BlockFisher.from_gradients(grads, layout, FisherOptions(num_grads=5, block_size=12,
                                                                    damping=1e-3))
    low = BlockFisher.from_gradients(grads, layout, FisherOptions(
        num_grads=5, block_size=12, damping=1e-3, low_rank=True))
    structured = {"w": torch.nn.Parameter(values.clone())}
    zig = build_zig_index([Group(0, 12, True, None, [Member("w", 0, "producer")])], structured)
    pruned = prune_groups(zig, 5 / 12, fisher=low)
    plain = {"w": values.clone()}
    keep = prune_unstructured(plain, 5 / 12, "woodfisher", fisher=dense)
    assert pruned.tolist() == (~keep["w"]).tolist()
    assert _relative(structured["w"].detach() - values, plain["w"] - values) <= 1e-5


def test_joint_group_update_is_exact_on_a_quadratic():
    """Two groups pruned at once with ``joint``: w_P goes to 0 and the loss rises by exactly
    1/2 w_P^T ([F^-1]_PP)^-1 w_P, no more than with the summed per-group updates."""
    w, fisher, hessian = _quadratic(d=12, n=5, damping=1e-2, seed=8, shape=(4, 3))
    costs = {}
    for joint in (False, True):
        params = {"w": torch.nn.Parameter(w.clone().view(4, 3))}
        zig = build_zig_index([Group(0, 4, True, None, [Member("w", 0, "producer")])], params)
        pruned = prune_groups(zig, 2 / 4, fisher=fisher, joint=joint)
        step = params["w"].detach().reshape(-1) - w
        costs[joint] = 0.5 * step @ hessian @ step
    index = pruned.repeat_interleave(3).nonzero().flatten()
    inverse = torch.linalg.inv(hessian)
    expected = 0.5 * w[index] @ torch.linalg.solve(inverse[index][:, index], w[index])
    torch.testing.assert_close(costs[True], expected, rtol=1e-9, atol=0)
    assert costs[True] <= costs[False] * (1 + 1e-12)


def test_magnitude_baselines():
    torch.manual_seed(0)
    params = {"a": torch.tensor([1.0, -5.0, 0.5, 3.0]), "b": torch.tensor([0.1, 0.2, 9.0, 8.0])}
    global_keep = prune_unstructured({n: p.clone() for n, p in params.items()}, 0.5,
                                     "global_magnitude")
    assert global_keep["a"].tolist() == [False, True, False, True]
    assert global_keep["b"].tolist() == [False, False, True, True]
    layer = {n: p.clone() for n, p in params.items()}
    layer_keep = prune_unstructured(layer, 0.25, "layer_magnitude")
    assert (~layer_keep["a"]).sum() == 1 and (~layer_keep["b"]).sum() == 1
    assert layer["a"][2] == 0 and layer["b"][0] == 0


def test_cubic_schedule():
    schedule = CubicSchedule(initial=0.1, final=0.9, start=10, end=40, every=10)
    assert schedule.sparsity(0) == 0.1 and schedule.sparsity(10) == 0.1
    assert schedule.sparsity(40) == 0.9 and schedule.sparsity(100) == 0.9
    assert schedule.sparsity(20) == pytest.approx(0.9 - 0.8 * (2 / 3) ** 3)
    values = [schedule.sparsity(t) for t in range(10, 41)]
    assert values == sorted(values)
    assert [t for t in range(60) if schedule.prunes_at(t)] == [10, 20, 30, 40]


def test_gradual_pruner_holds_masks():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8, bias=False), torch.nn.ReLU(),
                                torch.nn.Linear(8, 3, bias=False))
    x, y = torch.randn(64, 6), torch.randint(0, 3, (64,))
    params = dict(model.named_parameters())
    pruner = GradualPruner(params, CubicSchedule(0.2, 0.6, start=0, end=4, every=2),
                           fisher=FisherOptions(num_grads=16, block_size=32, damping=1e-3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = torch.nn.functional.cross_entropy
    zeros = []
    for step in range(6):
        pruner.step(step, model, lambda: [(x, y)], loss)
        optimizer.zero_grad()
        loss(model(x), y).backward()
        optimizer.step()
        pruner.hold()
        zeros.append(sum(int((p == 0).sum()) for p in params.values()))
    # 72 weights at 0.2, 0.55 and 0.6 from steps 0, 2 and 4; held in between
    assert zeros == [14, 14, 40, 40, 43, 43]
    assert all(not p[~pruner.keep[n]].any() for n, p in params.items())


def test_structured_prune_shrinks_and_validates(zoo_cache):
    """Group OBS on a small zoo model with BatchNorm: the pruned ZIGs are exact zeros, and
    `shrink --zeros` removes them with slim == pruned in onnxruntime."""
    path = zoo_cache("vgg_bn")
    groups = partition(str(path)).groups
    module = OnnxModule(path).eval()
    zig = build_zig_index(groups, module.onnx_parameters())
    fisher_params = {e.name: e.param for e in zig.entries}
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 3, 32, 32, generator=gen), torch.randint(0, 10, (64,), generator=gen)
    options = FisherOptions(num_grads=32, mini_batch=2, block_size=512, damping=1e-3)
    fisher = BlockFisher.estimate(module, fisher_params, [(x, y)],
                                  torch.nn.functional.cross_entropy, options, zig_axes(zig))
    with torch.no_grad():
        loss_before = float(torch.nn.functional.cross_entropy(module(x), y))
    pruned = prune_groups(zig, 0.5, fisher=fisher)
    assert int(pruned.sum()) == round(0.5 * zig.num_groups)
    assert torch.equal(zig.zero_zigs().cpu(), pruned)
    trained = write_back(module, onnx.load(str(path)))
    masks = masks_from_zeros(trained, groups)
    assert sum(int((~m).sum()) for m in masks.values()) == int(pruned.sum())
    result = shrink(trained, masks)
    assert result.comparison, result.comparison
    with torch.no_grad():
        loss_after = float(torch.nn.functional.cross_entropy(module(x), y))
    assert loss_after < loss_before + 5, "group OBS must not blow the model up"


def test_zigs_without_elements_are_never_pruned():
    """An index of consumer slices can miss a group (here group 1 has none): its ZIGs hold no
    element, look 'already zero', and must not be chosen."""
    gen = torch.Generator().manual_seed(5)
    params = {"w": torch.nn.Parameter(torch.randn(4, 3, generator=gen)),
              "v": torch.nn.Parameter(torch.ones(3))}
    groups = [Group(0, 3, True, None, [Member("w", 1, "consumer")]),
              Group(1, 3, True, None, [Member("v", 0, "producer")])]
    zig = build_zig_index(groups, params, roles=("consumer",))
    pruned = prune_groups(zig, 0.5, "magnitude")
    assert pruned.tolist()[3:] == [False, False, False]
    assert int(pruned.sum()) == 2, "group 0 keeps one ZIG; group 1 has nothing to prune"


def test_consumer_side_group_obs_shrinks_and_validates(zoo_cache):
    """Group OBS over the consumer slices (the next layer compensates), then the same ZIGs'
    producers zeroed: the function is unchanged by that zeroing and shrink validates."""
    path = zoo_cache("mlpnet")
    groups = partition(str(path)).groups
    module = OnnxModule(path).eval()
    params = module.onnx_parameters()
    consumers = build_zig_index(groups, params, roles=("consumer",))
    producers = build_zig_index(groups, params)
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(64, 1, 28, 28, generator=gen), torch.randint(0, 10, (64,), generator=gen)
    fisher = BlockFisher.estimate(module, {e.name: e.param for e in consumers.entries}, [(x, y)],
                                  torch.nn.functional.cross_entropy,
                                  FisherOptions(num_grads=64, block_size=1000, damping=1e-3),
                                  zig_axes(consumers))
    pruned = prune_groups(consumers, 0.5, fisher=fisher)
    with torch.no_grad():
        before = module(x)
        producers.zero_(params, pruned)
        torch.testing.assert_close(module(x), before)
    trained = write_back(module, onnx.load(str(path)))
    result = shrink(trained, masks_from_zeros(trained, groups))
    assert result.comparison
    assert sum(int((~m).sum()) for m in result.masks.values()) == int(pruned.sum())


@pytest.mark.parametrize("criterion", ["woodfisher", "magnitude"])
def test_mac_target_is_met_within_one_channel(criterion, zoo_cache):
    """prune_groups to a MacTarget of 0.45: slim MACs at or below the budget, and one channel
    fewer (the last one chosen) would be above it; at most 3/4 of any group goes, one channel
    always stays; the pruned model shrinks and validates with the MACs the counter predicted."""
    path = zoo_cache("vgg_bn")
    parts = partition(str(path))
    module = OnnxModule(path).eval()
    zig = build_zig_index(parts.groups, module.onnx_parameters())
    fisher = None
    if criterion == "woodfisher":
        gen = torch.Generator().manual_seed(0)
        x, y = torch.randn(32, 3, 32, 32, generator=gen), torch.randint(0, 10, (32,),
                                                                          generator=gen)
        fisher = BlockFisher.estimate(module, zig.params(), [(x, y)],
                                      torch.nn.functional.cross_entropy,
                                      FisherOptions(num_grads=16, mini_batch=2, block_size=512,
                                                    damping=1e-3), zig_axes(zig))
    counter = MacCounter(parts, zig)
    target = MacTarget(counter, 0.45)
    pruned = prune_groups(zig, target, criterion, fisher=fisher)
    slim = counter.slim_macs(pruned)
    assert slim <= target.macs
    fewer, start = [], 0
    for size in zig.group_sizes.values():
        chosen = torch.nonzero(pruned[start:start + size]).squeeze(1)
        assert len(chosen) <= min(0.75 * size, size - 1)
        if len(chosen):
            back = pruned.clone()
            back[start + int(chosen[0])] = False
            fewer.append(counter.slim_macs(back))
        start += size
    assert max(fewer) > target.macs, "one channel fewer (the last chosen) would miss the budget"
    trained = write_back(module, onnx.load(str(path)))
    result = shrink(trained, masks_from_zeros(trained, parts.groups))
    assert result.comparison
    assert measure(result.model).macs == slim < 0.5 * measure(trained).macs


def test_mac_target_cap_binds_when_the_budget_is_out_of_reach(zoo_cache):
    """A budget below what 1/4 of every group can reach: every allowed channel goes and no
    more (the caller sees the slim MACs above the target)."""
    path = zoo_cache("vgg_bn")
    parts = partition(str(path))
    zig = build_zig_index(parts.groups, OnnxModule(path).onnx_parameters())
    counter = MacCounter(parts, zig, max_group_share=0.25)
    pruned = prune_groups(zig, MacTarget(counter, 0.05), "magnitude")
    sizes = list(zig.group_sizes.values())
    assert int(pruned.sum()) == sum(int(0.25 * s) for s in sizes)
    assert counter.slim_macs(pruned) > 0.05 * counter.dense
