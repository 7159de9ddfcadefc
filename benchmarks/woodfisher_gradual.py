"""Gradual against one-shot WoodFisher on the official MNIST MLPNet (no biases), same budget.

From the same dense model (trained as in woodfisher_mnist.py), each method gets ``--epochs``
epochs of fine-tuning (Adam, batch 64) with its masks held at exactly 0:
- one-shot: prune to the final sparsity first, then fine-tune;
- gradual: the cubic schedule from ``--initial`` to the final sparsity, one pruning step at the
  start of each of the first ``--prune-epochs`` + 1 epochs, with a fresh Fisher at each
  (``GradualPruner``); the rest of the budget fine-tunes.
WoodFisher (summed and joint update) and global magnitude run on the same path.

    python benchmarks/woodfisher_gradual.py [--dataset mnist] [--sparsity 0.95] [--seeds 0 1 2]
        [--epochs 8] [--prune-epochs 4] [--initial 0.5] [--lr 3e-4] [--grads 1000x1]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import markdown_table, write_results  # noqa: E402
from benchmarks.woodfisher_mnist import EPOCHS, accuracy, fisher_batches, nll, train  # noqa: E402
from trainers.data import load_dataset  # noqa: E402
from trainers.woodfisher import CubicSchedule, FisherOptions, GradualPruner  # noqa: E402

STEM = "woodfisher_gradual"
METHODS = {"woodfisher": ("woodfisher", False), "woodfisher_joint": ("woodfisher", True),
           "global_magnitude": ("global_magnitude", False)}


def run(model: torch.nn.Module, data: dict, schedule: CubicSchedule, method: str, seed: int,
        args: argparse.Namespace) -> dict:
    model = copy.deepcopy(model).train()
    criterion, joint = METHODS[method]
    n, _, m = args.grads.partition("x")
    options = FisherOptions(num_grads=int(n), mini_batch=int(m or 1), block_size=args.block_size,
                            damping=args.damping)
    pruner = GradualPruner(dict(model.named_parameters()), schedule, criterion, options,
                           joint=joint)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    x, y = data["train"]
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for epoch in range(args.epochs):
        model.eval()
        batches = fisher_batches(x, y, seed + epoch)
        if pruner.step(epoch, model, lambda b=batches: b, nll) and epoch == schedule.start:
            out["after_first_prune"] = accuracy(model, *data["test"])
        model.train()
        for batch in torch.randperm(len(x), generator=gen).split(64):
            optimizer.zero_grad()
            nll(model(x[batch]), y[batch]).backward()
            optimizer.step()
            pruner.hold()
    model.eval()
    zeros = sum(int((p == 0).sum()) for p in model.parameters())
    total = sum(p.numel() for p in model.parameters())
    out.update(final=accuracy(model, *data["test"]), sparsity=zeros / total)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--sparsity", type=float, default=0.95)
    parser.add_argument("--initial", type=float, default=0.5)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--prune-epochs", type=int, default=4)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--grads", default="1000x1")
    parser.add_argument("--block-size", type=int, default=1000)
    parser.add_argument("--damping", type=float, default=1e-5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--results-name", default=STEM)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = {split: tuple(torch.from_numpy(a) for a in load_dataset(args.dataset, split=split))
            for split in ("train", "test")}
    schedules = {"one-shot": CubicSchedule(args.sparsity, args.sparsity, 0, 0),
                 "gradual": CubicSchedule(args.initial, args.sparsity, 0, args.prune_epochs)}
    runs = []
    for seed in args.seeds:
        dense = train(data, seed, EPOCHS.get(args.dataset, 10))
        row = {"seed": seed, "dense": accuracy(dense, *data["test"]), "runs": {}}
        for method in METHODS:
            for name, schedule in schedules.items():
                row["runs"][f"{method} {name}"] = run(dense, data, schedule, method, seed, args)
        print(f"seed {seed}: " + ", ".join(f"{k} {v['final']:.2f}"
                                           for k, v in row["runs"].items()), flush=True)
        runs.append(row)

    def cell(values: list[float]) -> str:
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.fmean(values):.2f} ± {sd:.2f}"

    rows = [[key, cell([r["runs"][key].get("after_first_prune", float("nan")) for r in runs]),
             cell([r["runs"][key]["final"] for r in runs]),
             f"{statistics.fmean(r['runs'][key]['sparsity'] for r in runs):.4f}"]
            for key in runs[0]["runs"]]
    markdown = (f"MLPNet (no biases) on {args.dataset}, final sparsity {args.sparsity}, "
                f"{args.epochs} epochs of Adam {args.lr:g} after the dense model; gradual: cubic "
                f"from {args.initial} over epochs 0-{args.prune_epochs}; Fisher {args.grads}, "
                f"blocks of {args.block_size}; dense {cell([r['dense'] for r in runs])} %; "
                f"mean ± SD over seeds {args.seeds}\n\n"
                + markdown_table(["method", "test % after the first pruning step",
                                  "test % at the end", "sparsity"], rows))
    write_results(args.results_name, {"options": vars(args), "runs": runs}, markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
