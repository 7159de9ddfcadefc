"""Structured group OBS vs group magnitude vs DHSPG on OTOv2's DemoNet (fashion-mnist-32), at
matched MACs: every method removes whole channels, every result is shrunk to a slim ONNX
(validated against the pruned model in onnxruntime) and scored by the slim model's MACs
(``onnxoto.metrics``) and its test accuracy (onnxruntime on the slim model).

The budget is one number of training steps B = dense steps D + fine-tune steps T (batch 32,
Adam, the rate on a cosine from its base to 0 within each training), the same for every method:
- a dense DemoNet trained for D steps (``--train`` images x ``--epochs``); the same model
  fine-tuned for T more steps as the pruners are is the dense reference at the full budget;
- ``group_obs`` and ``group_magnitude``, one-shot from that dense model at each MAC level,
  exactly as ``onnxoto train woodfisher --structured --target-macs LEVEL`` prunes
  (``trainers.woodfisher.macs``: channels ranked by score per MAC saved, the fewest whose slim
  model is at or below the level, at most ``--max-group-share`` of any group, one channel of
  each kept); group OBS on each channel's consumer slices (``--side consumer``), one low-rank
  Fisher block per consumer parameter (``--low-rank``), the joint update (``--joint``); group
  magnitude by ||w_Q||^2 of the producers (``--criterion magnitude``). Each is then fine-tuned
  for T steps with its masks held: as the slim model, which computes the same function as the
  pruned model with the removed channels held at zero, at a fraction of the cost;
- ``dhspg`` from scratch (the dense model's initial weights and batch order) for all B steps,
  with the settings that reached OTOv2's goal on the former DemoNet (Adam lr 5e-3, no warm-up;
  epsilon 0.5, the trainer's default): a slower push (lr 1e-3, or a warm-up) leaves too few
  steps to zero the groups in so short a budget. Its MACs are whatever its target group
  sparsity (``--dhspg-targets``) lands on, measured on its slim.onnx, so the two pruners also
  run at each DHSPG run's MACs, beside the fixed ``--levels``;
- one gradual group-OBS run at ``--gradual-level``: ``--gradual-stages`` pruning steps on the
  cubic schedule of the MAC share removed (the level only at the last), the Fisher recomputed at
  each, the T fine-tune steps split between them (masks held on the full model in between), set
  against the one-shot run at that level.

Each finished run is kept in ``--work`` (the dense model too), so a stopped benchmark resumes
where it stopped; the budget flags must not change in between.

    python benchmarks/woodfisher_demonet.py [--train 8000] [--epochs 2] [--lr 5e-3] [--test 2000]
        [--finetune-steps 60] [--levels 0.6 0.4 0.24] [--dhspg-targets 0.43] [--dhspg-lr 5e-3]
        [--dhspg-warmup-steps 0]
        [--gradual-level 0.4] [--gradual-stages 2] [--grads 128] [--max-group-share 0.75]
        [--seed 0] [--threads 1] [--work DIR]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from collections.abc import Callable
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
from onnxoto.shrink import shrink  # noqa: E402
from trainers.binding import OnnxModule, write_back  # noqa: E402
from trainers.data import load_dataset  # noqa: E402
from trainers.dhspg import DHSPG, DHSPGOptions  # noqa: E402
from trainers.train.loop import scheduled_lr  # noqa: E402
from trainers.woodfisher import (  # noqa: E402
    BlockFisher,
    FisherOptions,
    MacCounter,
    MacTarget,
    prune_groups,
    zig_axes,
)
from trainers.zig import build_zig_index  # noqa: E402

STEM = "woodfisher_demonet"
METHODS = ("group_magnitude", "group_obs", "dhspg")
BATCH = 32
EVAL_BATCH = 250
BUDGET_KEYS = ("train", "test", "epochs", "lr", "finetune_steps", "finetune_lr", "grads",
               "damping", "max_group_share", "dhspg_lr", "dhspg_warmup_steps", "dhspg_epsilon",
               "seed")


# --------------------------------------------------------------------------- training, scoring


def train(module: OnnxModule, data: dict, steps: int, seed: int, lr: float,
          optimizer: torch.optim.Optimizer | None = None,
          hold: Callable[[], None] | None = None) -> None:
    """``steps`` Adam (or ``optimizer``) steps of ``BATCH`` images in a seeded order (the same
    order for the same seed, whatever the number of steps); ``hold`` after each step. The rate
    follows a cosine from ``lr`` to 0 over the steps, as the trainer's ``--lr-schedule cosine``:
    every model is scored where its rate has annealed, not at a noisy mid-training point."""
    x, y = data["train"]
    module.train()
    optimizer = optimizer or torch.optim.Adam(module.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    order = torch.cat([torch.randperm(len(x), generator=gen)
                       for _ in range(-(-steps * BATCH // len(x)))])
    begin = time.perf_counter()
    for i, batch in enumerate(order[:steps * BATCH].split(BATCH), 1):
        optimizer.param_groups[0]["lr"] = scheduled_lr(lr, "cosine", i - 1, steps)
        optimizer.zero_grad()
        F.cross_entropy(module(x[batch]), y[batch]).backward()
        optimizer.step()
        if hold is not None:
            hold()
        if i % 50 == 0:
            print(f"  step {i}/{steps}: {time.perf_counter() - begin:.0f} s", file=sys.stderr,
                  flush=True)
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
    correct = sum(int((run.run(None, {name: x[i:i + EVAL_BATCH].numpy()})[0].argmax(1)
                       == y[i:i + EVAL_BATCH].numpy()).sum())
                  for i in range(0, len(x), EVAL_BATCH))
    return 100.0 * correct / len(x)


def macs(model: onnx.ModelProto) -> int:
    return measure(model).macs


# --------------------------------------------------------------------------- pruning


def _fisher_batches(data: dict, seed: int):
    x, y = data["train"]
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(10_000 + seed))
    return ((x[order[i:i + 1]], y[order[i:i + 1]]) for i in range(len(x)))


def prune(model: onnx.ModelProto, fraction: float, method: str, data: dict,
          args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """``model`` (dense, or earlier pruned with its zeros) pruned to ``fraction`` of its MACs as
    the CLI's ``--target-macs`` does: the full-size pruned model, the pruned ZIGs and the
    validated slim model."""
    parts = partition(model)
    module = OnnxModule(model).eval()
    params = module.onnx_parameters()
    producers = build_zig_index(parts.groups, params)
    target = MacTarget(MacCounter(parts, producers, max_group_share=args.max_group_share),
                       fraction)
    begin = time.perf_counter()
    if method == "group_obs":
        consumers = build_zig_index(parts.groups, params, roles=("consumer",))
        options = FisherOptions(num_grads=args.grads, mini_batch=1, damping=args.damping,
                                block_size=1 << 30, low_rank=True)
        fisher = BlockFisher.estimate(module, consumers.params(), _fisher_batches(data, seed),
                                      F.cross_entropy, options, zig_axes(consumers))
        pruned = prune_groups(consumers, target, "woodfisher", fisher=fisher, joint=True)
    else:
        pruned = prune_groups(producers, target, "magnitude")
    producers.zero_(params, pruned)
    score_s = time.perf_counter() - begin
    pruned_model = write_back(module, model)
    result = shrink(pruned_model, producers.masks(zero=pruned), result=parts)
    if not result.passed:
        raise SystemExit(f"{method}: slim differs from the pruned model")
    return {"pruned_model": pruned_model, "pruned": pruned, "slim": result.model,
            "group_sparsity": float(pruned.float().mean()), "score_s": score_s}


def finetune(model: onnx.ModelProto, data: dict, steps: int, args: argparse.Namespace,
             seed: int, pruned: torch.Tensor | None = None) -> onnx.ModelProto:
    """``steps`` Adam steps; with ``pruned``, those ZIGs' producers and consumers held at 0."""
    module = OnnxModule(model)
    hold = None
    if pruned is not None:
        params = module.onnx_parameters()
        groups = partition(model).groups
        indexes = [build_zig_index(groups, params, roles=r) for r in (("producer",),
                                                                       ("consumer",))]

        def hold() -> None:
            for zig in indexes:
                zig.zero_(params, pruned)

    train(module, data, steps, seed, args.finetune_lr, hold=hold)
    return write_back(module, model)


def one_shot(dense: onnx.ModelProto, level: float, method: str, data: dict,
             args: argparse.Namespace) -> dict[str, Any]:
    begin = time.perf_counter()
    step = prune(dense, level, method, data, args, args.seed)
    shot = accuracy(step["slim"], data)
    tuned = finetune(step["slim"], data, args.finetune_steps, args, args.seed + 1)
    return {"macs_pct": 100.0 * macs(tuned) / macs(dense), "accuracy": accuracy(tuned, data),
            "one_shot": shot, "group_sparsity": step["group_sparsity"],
            "score_s": step["score_s"], "wall_s": time.perf_counter() - begin}


def gradual(dense: onnx.ModelProto, level: float, data: dict,
            args: argparse.Namespace) -> dict[str, Any]:
    """MAC share 1 - (1 - level)(1 - (1 - i/k)^3) at stage i = 1..k; the fine-tune steps split
    between the stages, masks held on the full model until the last stage's slim model."""
    begin = time.perf_counter()
    stages = args.gradual_stages
    model, history = dense, []
    for i in range(1, stages + 1):
        fraction = 1 - (1 - level) * (1 - (1 - i / stages) ** 3)
        step = prune(model, fraction, "group_obs", data, args, args.seed + i)
        steps = args.finetune_steps // stages + (i <= args.finetune_steps % stages)
        last = i == stages
        model = finetune(step["slim"] if last else step["pruned_model"], data, steps, args,
                         args.seed + 1 + i, pruned=None if last else step["pruned"])
        history.append({"target_pct": 100 * fraction,
                        "macs_pct": 100.0 * macs(step["slim"]) / macs(dense),
                        "one_shot": accuracy(step["slim"], data)})
    return {"macs_pct": 100.0 * macs(model) / macs(dense), "accuracy": accuracy(model, data),
            "stages": history, "wall_s": time.perf_counter() - begin}


def dhspg(initial: onnx.ModelProto, target: float, dense_steps: int, data: dict,
          args: argparse.Namespace) -> dict[str, Any]:
    """DHSPG for the whole budget from the dense model's initial weights and batch order."""
    begin = time.perf_counter()
    dense_macs = macs(initial)
    groups = partition(initial).groups
    module = OnnxModule(initial)
    params = module.onnx_parameters()
    zig = build_zig_index(groups, params)
    options = DHSPGOptions(lr=args.dhspg_lr, variant="adam", target_group_sparsity=target,
                           epsilon=args.dhspg_epsilon, warmup_steps=args.dhspg_warmup_steps,
                           seed=args.seed)
    torch.manual_seed(args.seed)
    train(module, data, dense_steps + args.finetune_steps, args.seed, args.dhspg_lr,
          DHSPG(params, zig, options))
    trained = write_back(module, initial)
    result = shrink(trained, masks_from_zeros(trained, groups))
    if not result.passed:
        raise SystemExit("dhspg: slim differs from the trained model")
    return {"macs_pct": 100.0 * macs(result.model) / dense_macs,
            "accuracy": accuracy(result.model, data), "target": target,
            "group_sparsity": zig.zero_fraction(), "wall_s": time.perf_counter() - begin}


# --------------------------------------------------------------------------- report


def render(results: dict) -> str:
    budget = results["budget"]
    rows = []
    for level in results["levels"]:
        runs = results["runs"].get(str(level), {})
        for method in METHODS:
            run = runs.get(method)
            if run is None:
                continue
            shot = f"{run['one_shot']:.2f}" if "one_shot" in run else "-"
            label = method if method != "dhspg" else f"dhspg (target {run['target']:g})"
            if method != "dhspg" and "dhspg" in runs:
                label += " (at DHSPG's MACs)"
            rows.append([f"{100 * level:.0f}", label, f"{run['macs_pct']:.1f}",
                         f"{run['group_sparsity']:.3f}", shot, f"{run['accuracy']:.2f}"])
    dense_steps = results["dense"]["steps"]
    text = (
        f"DemoNet (OTOv2) on fashion-mnist-32, seed {results['seed']}, "
        f"{results.get('threads', 1)} CPU thread(s). Budget "
        f"for every method: {dense_steps + budget['finetune_steps']} steps of {BATCH} images "
        f"(Adam, cosine rate). Dense: {budget['train']} training images x {budget['epochs']} "
        f"epochs = {dense_steps} steps (lr {budget['lr']:g}), "
        f"{results['dense']['accuracy']:.2f} % on "
        f"{budget['test']} test images (binomial SE about {results['se']:.1f} points), "
        f"{results['dense']['macs'] / 1e6:.0f} M MACs; {results['dense']['tuned']:.2f} % after "
        f"the {budget['finetune_steps']} fine-tune steps the pruners get. group_obs / "
        f"group_magnitude: one-shot from the dense model to the MAC level (`--target-macs`: "
        f"ranked per MAC saved, at most "
        f"{budget['max_group_share']:g} of any group), then {budget['finetune_steps']} "
        f"fine-tune steps with the masks held (lr {budget['finetune_lr']:g}); group OBS on the "
        f"consumer slices, {budget['grads']} single-image gradients, one low-rank Fisher block "
        f"per consumer parameter, damping {budget['damping']:g}, joint update. dhspg: from the "
        f"same initial weights for all {dense_steps + budget['finetune_steps']} steps (lr "
        f"{budget['dhspg_lr']:g}, {budget['dhspg_warmup_steps']} warm-up steps, epsilon "
        f"{budget['dhspg_epsilon']:g}), its target "
        f"group sparsity given; the pruners also run at its MACs. MACs are measured on each "
        f"validated slim.onnx. Wall {results['wall_s'] / 60:.1f} min (this process; earlier "
        f"runs resumed "
        f"from --work).\n\n"
        + markdown_table(["MAC level %", "method", "MACs % of dense", "group sparsity",
                          "one-shot top-1 %", "fine-tuned top-1 %"], rows) + "\n")
    grad = results.get("gradual")
    base = results["runs"].get(str(results["gradual_level"]), {}).get("group_obs")
    if grad and base:
        stages = ", ".join(f"{s['macs_pct']:.1f} % ({s['one_shot']:.2f} % before tuning)"
                           for s in grad["stages"])
        text += (f"\nGradual group OBS to {100 * results['gradual_level']:.0f} % in "
                 f"{len(grad['stages'])} stages (MACs after each: {stages}): "
                 f"{grad['accuracy']:.2f} % at {grad['macs_pct']:.1f} % MACs, against one-shot "
                 f"{base['accuracy']:.2f} % at {base['macs_pct']:.1f} % with the same "
                 f"{budget['finetune_steps']} fine-tune steps.\n")
    return text


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.2, 4.3))
    for method, color in zip(METHODS, ("tab:blue", "tab:orange", "tab:green"), strict=True):
        runs = [results["runs"][str(level)][method] for level in results["levels"]
                if method in results["runs"].get(str(level), {})]
        if not runs:
            continue
        points = sorted((r["macs_pct"], r["accuracy"]) for r in runs)
        ax.plot(*zip(*points, strict=True), marker="o", color=color,
                label=f"{method}, tuned" if method != "dhspg" else "dhspg, same budget")
        shots = sorted((r["macs_pct"], r["one_shot"]) for r in runs if "one_shot" in r)
        if shots:
            ax.plot(*zip(*shots, strict=True), marker="x", linestyle="--", color=color,
                    label=f"{method}, one-shot")
    grad = results.get("gradual")
    if grad:
        ax.plot([grad["macs_pct"]], [grad["accuracy"]], marker="*", markersize=12,
                linestyle="", color="tab:red", label="group_obs gradual, tuned")
    ax.axhline(results["dense"]["accuracy"], color="gray", linestyle=":", label="dense")
    ax.set_xlabel("MACs of slim.onnx (% of dense)")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title("DemoNet, fashion-mnist-32: structured pruning at matched MACs")
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- driver


class Store:
    """Finished runs in ``work``/runs.json, so a stopped benchmark resumes; refuses a folder
    written under another budget."""

    def __init__(self, work: Path, budget: dict[str, Any]) -> None:
        work.mkdir(parents=True, exist_ok=True)
        self.path = work / "runs.json"
        self.runs: dict[str, Any] = {}
        if self.path.exists():
            saved = json.loads(self.path.read_text())
            if saved["budget"] != budget:
                raise SystemExit(f"{work}: written under another budget {saved['budget']}")
            self.runs = saved["runs"]
        self.budget = budget

    def get(self, key: str, make: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        if key not in self.runs:
            self.runs[key] = make()
            self.path.write_text(json.dumps({"budget": self.budget, "runs": self.runs},
                                            indent=1))
        print(f"{key}: {json.dumps(self.runs[key])}", flush=True)
        return self.runs[key]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=int, default=8000)
    parser.add_argument("--test", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--finetune-steps", type=int, default=60)
    parser.add_argument("--finetune-lr", type=float, default=5e-4)
    parser.add_argument("--dhspg-lr", type=float, default=5e-3)
    parser.add_argument("--dhspg-warmup-steps", type=int, default=0)
    parser.add_argument("--dhspg-epsilon", type=float, default=0.5)
    parser.add_argument("--levels", nargs="+", type=float, default=[0.6, 0.4, 0.24])
    parser.add_argument("--dhspg-targets", nargs="*", type=float, default=[0.43],
                        help="DHSPG's target group sparsities; the pruners also run at the MACs "
                             "each lands on")
    parser.add_argument("--grads", type=int, default=128)
    parser.add_argument("--damping", type=float, default=1e-5)
    parser.add_argument("--gradual-level", type=float, default=0.4)
    parser.add_argument("--gradual-stages", type=int, default=2)
    parser.add_argument("--max-group-share", type=float, default=0.75,
                        help="remove at most this share of any group's channels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--results-name", default=STEM)
    parser.add_argument("--work", type=Path, default=Path("out/woodfisher_demonet"),
                        help="dense model and finished runs, read back when the budget matches")
    args = parser.parse_args(argv)
    if args.gradual_level not in args.levels:
        parser.error("--gradual-level must be one of --levels")
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    data = {split: tuple(torch.from_numpy(a) for a in load_dataset(
        "fashion-mnist-32", split=split, limit=limit))
        for split, limit in (("train", args.train), ("test", args.test))}
    budget = {key: getattr(args, key) for key in BUDGET_KEYS}
    store = Store(args.work, budget)
    dense_steps = args.epochs * len(data["train"][0]) // BATCH
    initial_path, dense_path = args.work / "initial.onnx", args.work / "dense.onnx"
    if not initial_path.exists():
        with tempfile.TemporaryDirectory() as folder:
            exported = export_onnx(build("demonet", args.seed), ZOO["demonet"].input_shape,
                                   Path(folder) / "demonet.onnx")
            onnx.save(onnx.load(str(exported)), str(initial_path))
    initial = onnx.load(str(initial_path))

    def train_dense() -> dict[str, Any]:
        begin = time.perf_counter()
        module = OnnxModule(copy.deepcopy(initial))
        torch.manual_seed(args.seed)
        train(module, data, dense_steps, args.seed, args.lr)
        onnx.save(write_back(module, initial), str(dense_path))
        return {"steps": dense_steps, "train_s": time.perf_counter() - begin}

    dense_record = store.get("dense", train_dense)
    dense = onnx.load(str(dense_path))
    results: dict[str, Any] = {
        "seed": args.seed, "threads": args.threads, "levels": list(args.levels),
        "gradual_level": args.gradual_level,
        "budget": budget,
        "dense": {**dense_record, "accuracy": store.get(
            "dense_accuracy", lambda: {"top1": accuracy(dense, data)})["top1"],
            "macs": macs(dense)}, "runs": {}}
    results["dense"]["tuned"] = store.get(
        "dense tuned", lambda: {"top1": accuracy(
            finetune(dense, data, args.finetune_steps, args, args.seed + 1), data)})["top1"]
    for target in args.dhspg_targets:
        run = store.get(f"dhspg {target}", lambda t=target: dhspg(initial, t, dense_steps,
                                                                   data, args))
        level = round(run["macs_pct"] / 100, 4)  # the pruners are matched to its MACs
        results["runs"].setdefault(str(level), {})["dhspg"] = run
        results["levels"].append(level)
    for level in results["levels"]:
        runs = results["runs"].setdefault(str(level), {})
        for method in METHODS[:2]:
            runs[method] = store.get(f"{level} {method}",
                                     lambda m=method, lv=level: one_shot(dense, lv, m, data, args))
    results["gradual"] = store.get(f"gradual {args.gradual_level}",
                                   lambda: gradual(dense, args.gradual_level, data, args))
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
