"""Structured group OBS vs group magnitude vs DHSPG on OTOv2's DemoNet (fashion-mnist-32), at
matched MACs: every method removes whole channels, every result is shrunk to a slim ONNX
(validated against the pruned model in onnxruntime) and scored by the slim model's MACs
(``onnxoto.metrics``) and its test accuracy (onnxruntime on the slim model).

One dense DemoNet is trained briefly; then, for each MAC level (share of the dense MACs):
- ``group_magnitude``: channels ranked by the mean square of their producers (||w_Q||^2 / |Q|;
  the raw sum ranks every channel of a layer with a small fan-in below every channel of a wide
  one, which on MLPNet removed the 20-unit layer first, see woodfisher_structured.md);
- ``group_obs``: group OBS over each channel's consumer slices (the next layers' input columns),
  with each consumer parameter one low-rank Fisher block (``FisherOptions.low_rank``): zeroing
  the consumer slices is exactly removing the channel, and the update moves every other input
  channel of those layers to stand in for it. rho_Q ranks; the joint update over the pruned set
  is applied; the producers are then zeroed too (unread, so the function is unchanged). The
  one-shot accuracy with the summed update and with no update is recorded as well;
- both: channels ranked by score per MAC they cost (the MACs one channel of their group removes
  from the slim model; ranked by the score alone, group OBS took nearly every channel of gemm1
  and conv5, which cost few MACs each, and fell to chance at 60 % MACs); the smallest number of
  lowest-ranked channels (one channel of every group kept) whose slim model is at or below the
  MAC level (``--max-group-share`` caps the share of any group removed); then a short
  fine-tune of the slim model. Training
  the slim model is training the pruned model with its masks held (the removed channels are
  exact zeros that nothing reads), at a fraction of the cost;
- ``dhspg``: DHSPG (Adam, ``--dhspg-lr``, ``--dhspg-epsilon``) continued from the same dense
  model for the same number of steps as the fine-tune, at the group sparsity group magnitude
  needed for the level; its MACs are whatever it lands on (measured on its slim.onnx).
One gradual group-OBS run (the level reached in ``--gradual-stages`` cubic steps, the Fisher
recomputed on the current slim model at each, the fine-tune steps split between them) is set
against the one-shot run at ``--gradual-level``.

The CPU budget (2 cores shared by six engineers, ~45 min) sets the sizes: a DemoNet image costs
0.6 GMAC forward, and a training step of 32 took ~30 s under that load, so the defaults are 768
training images for 1 epoch, 8 fine-tune steps of 32, 500 test images and 64 single-image
gradients per Fisher. All sizes are in the results; on a free machine raise them.

    python benchmarks/woodfisher_demonet.py [--train 768] [--test 500] [--epochs 1]
        [--finetune-steps 8] [--levels 0.6 0.4 0.24] [--grads 64] [--damping 1e-5]
        [--dhspg-lr 1e-2] [--dhspg-epsilon 0.95] [--gradual-level 0.4] [--gradual-stages 2]
        [--max-group-share 1] [--seed 0] [--threads 2] [--dense PATH]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS, markdown_table, write_results  # noqa: E402
from models.export import export_onnx  # noqa: E402
from models.zoo import ZOO, build  # noqa: E402
from onnxoto.masking import masks_from_zeros  # noqa: E402
from onnxoto.metrics import measure  # noqa: E402
from onnxoto.partition import partition  # noqa: E402
from onnxoto.runtime import session  # noqa: E402
from onnxoto.shrink import ShrinkOptions, shrink  # noqa: E402
from trainers.binding import OnnxModule, write_back  # noqa: E402
from trainers.data import load_dataset  # noqa: E402
from trainers.dhspg import DHSPG, DHSPGOptions  # noqa: E402
from trainers.woodfisher import BlockFisher, FisherOptions, GroupOBS, zig_axes  # noqa: E402
from trainers.zig import ZigIndex, build_zig_index  # noqa: E402

STEM = "woodfisher_demonet"
METHODS = ("group_magnitude", "group_obs", "dhspg")
BATCH = 32
UPDATES = ("joint", "summed", "none")


# --------------------------------------------------------------------------- training, scoring


def train(module: OnnxModule, data: dict, steps: int, seed: int, lr: float,
          optimizer: torch.optim.Optimizer | None = None) -> None:
    """``steps`` Adam (or ``optimizer``) steps of ``BATCH`` images, in a seeded order."""
    x, y = data["train"]
    module.train()
    optimizer = optimizer or torch.optim.Adam(module.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    order = torch.cat([torch.randperm(len(x), generator=gen)
                       for _ in range(-(-steps * BATCH // len(x)))])
    for batch in order[:steps * BATCH].split(BATCH):
        optimizer.zero_grad()
        F.cross_entropy(module(x[batch]), y[batch]).backward()
        optimizer.step()
    module.eval()


def accuracy(model: onnx.ModelProto, data: dict) -> float:
    """Top-1 % of ``model`` in onnxruntime (its batch dimension made dynamic)."""
    model = copy.deepcopy(model)
    for value in list(model.graph.input) + list(model.graph.output):
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
    del model.graph.value_info[:]
    run = session(model, threads=torch.get_num_threads())
    name = run.get_inputs()[0].name
    x, y = data["test"]
    correct = sum(int((run.run(None, {name: x[i:i + 250].numpy()})[0].argmax(1)
                       == y[i:i + 250].numpy()).sum()) for i in range(0, len(x), 250))
    return 100.0 * correct / len(x)


def macs(model: onnx.ModelProto) -> int:
    return measure(model).macs


# --------------------------------------------------------------------------- pruning


def _fisher_batches(data: dict, seed: int):
    x, y = data["train"]
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(10_000 + seed))
    return ((x[order[i:i + 1]], y[order[i:i + 1]]) for i in range(len(x)))


def _scores(method: str, module: OnnxModule, groups: list, data: dict, args: argparse.Namespace,
            seed: int) -> tuple[torch.Tensor, GroupOBS | None, ZigIndex]:
    """Per-ZIG ranks (lowest goes first), the GroupOBS that made them (group_obs) and the index
    its update acts on."""
    params = module.onnx_parameters()
    producers = build_zig_index(groups, params)
    if method == "group_magnitude":
        sizes = producers.sizes.cpu().double().clamp(min=1)
        return producers.group_sq_norms().double().cpu() / sizes, None, producers
    consumers = build_zig_index(groups, params, roles=("consumer",))
    if consumers.group_sizes != producers.group_sizes:
        raise SystemExit("consumer and producer ZIGs differ; group OBS needs both")
    options = FisherOptions(num_grads=args.grads, mini_batch=1, damping=args.damping,
                            block_size=1 << 30, low_rank=True)
    module.eval()  # gradients of the inference function; running stats stay as trained
    fisher = BlockFisher.estimate(module, {e.name: e.param for e in consumers.entries},
                                  _fisher_batches(data, seed), F.cross_entropy, options,
                                  zig_axes(consumers))
    obs = GroupOBS.compute(fisher, consumers)
    return obs.saliency.clone(), obs, consumers


def _channel_macs(model: onnx.ModelProto, parts, zig: ZigIndex) -> torch.Tensor:
    """MACs one channel of each ZIG's group removes from the slim model (per ZIG)."""
    full = macs(model)
    cost = torch.ones(zig.num_groups, dtype=torch.float64)
    start = 0
    for gid, size in zig.group_sizes.items():
        keep = {gid: np.arange(size) > 0}
        slim = shrink(model, keep, options=ShrinkOptions(validate=False), result=parts).model
        cost[start:start + size] = max(1, full - macs(slim))
        start += size
    return cost


def _order(zig: ZigIndex, scores: torch.Tensor, cap: float = 1.0) -> torch.Tensor:
    """ZIG ids by rank, without each group's best one (shrink keeps a channel per group) and
    without those past ``cap`` of their group's channels."""
    scores = scores.clone()
    start = 0
    for size in zig.group_sizes.values():
        scores[start + int(torch.argmax(scores[start:start + size]))] = float("inf")
        start += size
    order = torch.argsort(scores)
    order = order[torch.isfinite(scores[order])]
    sizes = torch.tensor(list(zig.group_sizes.values()))
    group = torch.repeat_interleave(torch.arange(len(sizes)), sizes)
    limit = (cap * sizes).floor().long()
    taken = torch.zeros(len(sizes), dtype=torch.long)
    kept = []
    for z in order.tolist():
        if taken[group[z]] < limit[group[z]]:
            taken[group[z]] += 1
            kept.append(z)
    return torch.tensor(kept, dtype=torch.long)


def _mask(zig: ZigIndex, order: torch.Tensor, count: int) -> torch.Tensor:
    pruned = torch.zeros(zig.num_groups, dtype=torch.bool)
    pruned[order[:count]] = True
    return pruned


def _smallest_count(model: onnx.ModelProto, parts, zig: ZigIndex, order: torch.Tensor,
                    target: float) -> int:
    """Fewest ranked ZIGs whose slim model has at most ``target`` MACs (binary search; slim
    MACs fall as more channels go)."""
    fast = ShrinkOptions(validate=False)

    def slim_macs(count: int) -> int:
        keep = zig.masks(zero=_mask(zig, order, count))
        return macs(shrink(model, keep, options=fast, result=parts).model)

    low, high = 0, len(order)
    if slim_macs(high) > target:
        return high
    while low < high:
        middle = (low + high) // 2
        if slim_macs(middle) <= target:
            high = middle
        else:
            low = middle + 1
    return low


def prune_to(model: onnx.ModelProto, target: float, method: str, data: dict,
             args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """One pruning step of ``model`` down to ``target`` MACs: the validated slim model of each
    update variant (group_obs: ``UPDATES``; the first is the one kept) and their facts."""
    parts = partition(model)
    module = OnnxModule(model)
    begin = time.perf_counter()
    scores, obs, zig = _scores(method, module, parts.groups, data, args, seed)
    score_s = time.perf_counter() - begin
    order = _order(zig, scores / _channel_macs(model, parts, zig), args.max_group_share)
    count = _smallest_count(model, parts, zig, order, target)
    pruned = _mask(zig, order, count)
    out: dict[str, Any] = {"count": count, "zigs": zig.num_groups, "score_s": score_s,
                           "slim": {}, "one_shot": {}}
    for variant in (UPDATES if obs is not None else ("none",)):
        candidate = copy.deepcopy(module)
        params = candidate.onnx_parameters()
        with torch.no_grad():
            if variant != "none":
                for name, dw in obs.update(pruned, joint=variant == "joint").items():
                    params[name].add_(dw.to(params[name]))
            for roles in (("producer",), ("consumer",)):
                build_zig_index(parts.groups, params, roles=roles).zero_(params, pruned)
        pruned_model = write_back(candidate, model)
        result = shrink(pruned_model, zig.masks(zero=pruned), result=parts)
        if not result.passed:
            raise SystemExit(f"{method} ({variant}): slim differs from the pruned model")
        out["slim"][variant] = result.model
        out["one_shot"][variant] = accuracy(result.model, data)
    out["kept"] = out["slim"][UPDATES[0] if obs is not None else "none"]
    return out


# --------------------------------------------------------------------------- runs


def finetune(model: onnx.ModelProto, data: dict, steps: int, args: argparse.Namespace,
             seed: int) -> onnx.ModelProto:
    module = OnnxModule(model)
    train(module, data, steps, seed, args.finetune_lr)
    return write_back(module, model)


def one_shot(dense: onnx.ModelProto, level: float, method: str, data: dict,
             args: argparse.Namespace) -> dict[str, Any]:
    begin = time.perf_counter()
    step = prune_to(dense, level * macs(dense), method, data, args, args.seed)
    tuned = finetune(step["kept"], data, args.finetune_steps, args, args.seed + 1)
    return {"macs_pct": 100.0 * macs(tuned) / macs(dense), "accuracy": accuracy(tuned, data),
            "one_shot": step["one_shot"], "group_sparsity": step["count"] / step["zigs"],
            "score_s": step["score_s"], "wall_s": time.perf_counter() - begin}


def gradual(dense: onnx.ModelProto, level: float, data: dict,
            args: argparse.Namespace) -> dict[str, Any]:
    """Cubic MAC schedule 1 - (1 - level)(1 - (1 - i/k)^3), i = 1..k; the fine-tune steps split
    between the stages; the Fisher recomputed on each stage's slim model."""
    begin = time.perf_counter()
    stages = args.gradual_stages
    model, history = dense, []
    for i in range(1, stages + 1):
        target = 1 - (1 - level) * (1 - (1 - i / stages) ** 3)
        step = prune_to(model, target * macs(dense), "group_obs", data, args, args.seed + i)
        steps = args.finetune_steps // stages + (i <= args.finetune_steps % stages)
        model = finetune(step["kept"], data, steps, args, args.seed + 1 + i)
        history.append({"target_pct": 100 * target, "macs_pct": 100.0 * macs(model) / macs(dense),
                        "one_shot": step["one_shot"]})
    return {"macs_pct": 100.0 * macs(model) / macs(dense), "accuracy": accuracy(model, data),
            "stages": history, "wall_s": time.perf_counter() - begin}


def dhspg(dense: onnx.ModelProto, target: float, data: dict,
          args: argparse.Namespace) -> dict[str, Any]:
    begin = time.perf_counter()
    groups = partition(dense).groups
    module = OnnxModule(dense)
    params = module.onnx_parameters()
    zig = build_zig_index(groups, params)
    options = DHSPGOptions(lr=args.dhspg_lr, variant="adam", target_group_sparsity=target,
                           epsilon=args.dhspg_epsilon, seed=args.seed)
    train(module, data, args.finetune_steps, args.seed + 1, args.dhspg_lr,
          DHSPG(params, zig, options))
    trained = write_back(module, dense)
    result = shrink(trained, masks_from_zeros(trained, groups))
    if not result.passed:
        raise SystemExit("dhspg: slim differs from the trained model")
    return {"macs_pct": 100.0 * macs(result.model) / macs(dense),
            "accuracy": accuracy(result.model, data), "target": target,
            "group_sparsity": zig.zero_fraction(), "wall_s": time.perf_counter() - begin}


# --------------------------------------------------------------------------- report


def render(results: dict) -> str:
    budget = results["budget"]
    rows = []
    for level in results["levels"]:
        runs = results["runs"][str(level)]
        for method in METHODS:
            run = runs[method]
            shot = run.get("one_shot", {})
            rows.append([f"{100 * level:.0f}", method, f"{run['macs_pct']:.1f}",
                         f"{run['group_sparsity']:.3f}",
                         " / ".join(f"{shot[u]:.2f}" for u in UPDATES if u in shot) or "-",
                         f"{run['accuracy']:.2f}"])
    grad = results["gradual"]
    base = results["runs"][str(results["gradual_level"])]["group_obs"]
    stages = ", ".join(f"{s['macs_pct']:.1f}" for s in grad["stages"])
    return (
        f"DemoNet (OTOv2) on fashion-mnist-32, seed {results['seed']}, CPU budget: dense model "
        f"{budget['train']} training images x {budget['epochs']} epochs (batch {BATCH}, Adam "
        f"lr {budget['lr']:g}), {budget['finetune_steps']} fine-tune steps of {BATCH} for every "
        f"method (Adam lr {budget['finetune_lr']:g}; DHSPG: the same steps from the dense "
        f"model, Adam lr {budget['dhspg_lr']:g}, epsilon {budget['dhspg_epsilon']:g}, target "
        f"the group sparsity group_magnitude needed), test accuracy on {budget['test']} test "
        f"images (binomial SE about "
        f"{results['se']:.1f} points); group OBS: {budget['grads']} single-image gradients, one "
        f"low-rank Fisher block per consumer parameter, damping {budget['damping']:g}. Dense: "
        f"{results['dense']['accuracy']:.2f} %, {results['dense']['macs'] / 1e6:.0f} M MACs. "
        f"Channels ranked by score per MAC"
        + (f", at most {budget['max_group_share']:g} of any group removed"
           if budget.get("max_group_share", 1.0) < 1 else "")
        + ". MACs are measured on each validated slim.onnx. One-shot = before fine-tuning "
        f"(group_obs: joint / summed / no update). Wall {results['wall_s'] / 60:.1f} min.\n\n"
        + markdown_table(["MAC level %", "method", "MACs % of dense", "group sparsity",
                          "one-shot top-1 %", "fine-tuned top-1 %"], rows)
        + f"\n\nGradual group OBS to {100 * results['gradual_level']:.0f} % in "
        f"{len(grad['stages'])} stages (MACs after each: {stages} %): "
        f"{grad['accuracy']:.2f} % at {grad['macs_pct']:.1f} % MACs, against one-shot "
        f"{base['accuracy']:.2f} % at {base['macs_pct']:.1f} % with the same fine-tune steps.\n")


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.2, 4.3))
    for method, color in zip(METHODS, ("tab:blue", "tab:orange", "tab:green"), strict=True):
        runs = [results["runs"][str(level)][method] for level in results["levels"]]
        points = sorted((r["macs_pct"], r["accuracy"]) for r in runs)
        ax.plot(*zip(*points, strict=True), marker="o", color=color, label=f"{method}, tuned")
        shots = sorted((r["macs_pct"], r["one_shot"][UPDATES[0] if method == "group_obs"
                                                      else "none"])
                       for r in runs if "one_shot" in r)
        if shots:
            ax.plot(*zip(*shots, strict=True), marker="x", linestyle="--", color=color,
                    label=f"{method}, one-shot")
    grad = results["gradual"]
    ax.plot([grad["macs_pct"]], [grad["accuracy"]], marker="*", markersize=12, linestyle="",
            color="tab:red", label="group_obs gradual, tuned")
    ax.axhline(results["dense"]["accuracy"], color="gray", linestyle=":", label="dense")
    ax.set_xlabel("MACs of slim.onnx (% of dense)")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title("DemoNet, fashion-mnist-32: structured pruning at matched MACs")
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=int, default=768)
    parser.add_argument("--test", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--finetune-steps", type=int, default=8)
    parser.add_argument("--finetune-lr", type=float, default=5e-4)
    parser.add_argument("--dhspg-lr", type=float, default=1e-2,
                        help="DHSPG's Adam rate: its push is lr x lambda, so the few steps of "
                             "this budget need a larger rate than the fine-tune's to zero groups")
    parser.add_argument("--dhspg-epsilon", type=float, default=0.95)
    parser.add_argument("--levels", nargs="+", type=float, default=[0.6, 0.4, 0.24])
    parser.add_argument("--grads", type=int, default=64)
    parser.add_argument("--damping", type=float, default=1e-5)
    parser.add_argument("--gradual-level", type=float, default=0.4)
    parser.add_argument("--gradual-stages", type=int, default=2)
    parser.add_argument("--max-group-share", type=float, default=1.0,
                        help="remove at most this share of any group's channels (1: no cap)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--results-name", default=STEM)
    parser.add_argument("--dense", type=Path,
                        help="the trained dense ONNX: read if it exists (same budget flags!), "
                             "else written after training")
    args = parser.parse_args(argv)
    if args.gradual_level not in args.levels:
        parser.error("--gradual-level must be one of --levels")
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    data = {split: tuple(torch.from_numpy(a) for a in load_dataset(
        "fashion-mnist-32", split=split, limit=limit))
        for split, limit in (("train", args.train), ("test", args.test))}
    if args.dense and args.dense.exists():
        dense = onnx.load(str(args.dense))
    else:
        with tempfile.TemporaryDirectory() as folder:
            source = onnx.load(str(export_onnx(build("demonet", args.seed),
                                               ZOO["demonet"].input_shape,
                                               Path(folder) / "demonet.onnx")))
        module = OnnxModule(copy.deepcopy(source))
        torch.manual_seed(args.seed)
        train(module, data, args.epochs * len(data["train"][0]) // BATCH, args.seed, args.lr)
        dense = write_back(module, source)
        if args.dense:
            onnx.save(dense, str(args.dense))
    results: dict[str, Any] = {
        "seed": args.seed, "levels": args.levels, "gradual_level": args.gradual_level,
        "budget": {k: getattr(args, k) for k in ("train", "test", "epochs", "lr",
                                                 "finetune_steps", "finetune_lr", "grads",
                                                 "damping", "dhspg_lr", "dhspg_epsilon",
                                                 "max_group_share")},
        "dense": {"accuracy": accuracy(dense, data), "macs": macs(dense),
                  "train_s": time.perf_counter() - start}, "runs": {}}
    print(f"dense {results['dense']}", flush=True)
    for level in args.levels:
        runs: dict[str, Any] = {}
        for method in METHODS[:2]:
            runs[method] = one_shot(dense, level, method, data, args)
            print(f"{level} {method}: {json.dumps(runs[method])}", flush=True)
        target = runs["group_magnitude"]["group_sparsity"]
        runs["dhspg"] = dhspg(dense, target, data, args)
        print(f"{level} dhspg: {json.dumps(runs['dhspg'])}", flush=True)
        results["runs"][str(level)] = runs
    results["gradual"] = gradual(dense, args.gradual_level, data, args)
    print(f"gradual: {json.dumps(results['gradual'])}", flush=True)
    p = results["dense"]["accuracy"] / 100
    results["se"] = 100 * float(np.sqrt(p * (1 - p) / args.test))
    results["wall_s"] = time.perf_counter() - start
    markdown = render(results)
    write_results(args.results_name, results, markdown)
    plot(results, RESULTS / f"{args.results_name}.png")
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
