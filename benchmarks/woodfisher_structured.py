"""Structured (whole-channel) pruning with group OBS against group magnitude, one-shot, on the
zoo MLPNet (784-40-20-10 with biases) exported to ONNX and trained through the binding on
Fashion-MNIST; every pruned model goes through ``onnxoto shrink --zeros`` (validated against the
pruned model in onnxruntime) and is scored by test accuracy and the slim model's MACs.

Methods, all on the same ZIGs (``onnxoto.partition`` groups) and the same trained weights:
- ``group_magnitude``: the ZIGs with the smallest ||w_Q||^2 of their producers;
- ``group_obs``: group OBS over the producers (rho_Q and the update, ``prune_groups``);
- ``group_obs_consumer``: group OBS over the consumers (the next layer's input slices), whose
  blocks hold all of a layer's input columns, so the update moves the surviving channels' weights
  to stand in for the removed ones; the producers of the removed ZIGs are then zeroed (exactly
  the same network function, since their outputs are no longer read) so that shrink removes them.
Targets are MAC levels (share of the dense MACs), reached as ``--target-macs`` does
(``trainers.woodfisher.macs``): channels ranked by score per MAC saved, the fewest whose slim
model is at or below the level, at most ``--max-group-share`` of any layer removed, so every
method is compared at the same cost. (Ranked by the score alone at a group sparsity, the narrow
20-unit layer went first for group magnitude and producer-side group OBS and left a 1-2 unit
bottleneck.)

    python benchmarks/woodfisher_structured.py [--seeds 0 1 2] [--levels 0.8 0.6 0.4 0.25]
        [--epochs 3] [--grads 2000x10] [--block-size 1000] [--damping 1e-5]
        [--max-group-share 0.75]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

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
from onnxoto.shrink import shrink  # noqa: E402
from trainers.binding import OnnxModule, write_back  # noqa: E402
from trainers.data import load_dataset  # noqa: E402
from trainers.woodfisher import (  # noqa: E402
    BlockFisher,
    FisherOptions,
    MacCounter,
    MacTarget,
    prune_groups,
    zig_axes,
)
from trainers.zig import build_zig_index  # noqa: E402

STEM = "woodfisher_structured"
METHODS = ("group_magnitude", "group_obs", "group_obs_consumer")


def train(module: OnnxModule, data: dict, seed: int, epochs: int) -> None:
    module.train()
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-3)
    x, y = data["train"]
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for batch in torch.randperm(len(x), generator=gen).split(64):
            optimizer.zero_grad()
            F.cross_entropy(module(x[batch]), y[batch]).backward()
            optimizer.step()
    module.eval()


@torch.no_grad()
def accuracy(module: OnnxModule, x: torch.Tensor, y: torch.Tensor) -> float:
    return 100.0 * float((module(x).argmax(1) == y).float().mean())


def fisher_batches(x: torch.Tensor, y: torch.Tensor, seed: int):
    gen = torch.Generator().manual_seed(10_000 + seed)
    while True:
        yield from ((x[b], y[b]) for b in torch.randperm(len(x), generator=gen).split(100))


def _index(module: OnnxModule, groups: list, method: str):
    roles = ("consumer",) if method == "group_obs_consumer" else ("producer",)
    return build_zig_index(groups, module.onnx_parameters(), roles=roles)


def estimate_fisher(module: OnnxModule, groups: list, method: str, data: dict, seed: int,
                    options: FisherOptions) -> BlockFisher:
    """The inverse Fisher of the method's ZIG parameters, once per trained model."""
    zig = _index(module, groups, method)
    return BlockFisher.estimate(module, {e.name: e.param for e in zig.entries},
                                fisher_batches(*data["train"], seed), F.cross_entropy,
                                options, zig_axes(zig))


def prune(module: OnnxModule, parts, method: str, level: float, fisher: BlockFisher | None,
          share: float) -> None:
    producers = build_zig_index(parts.groups, module.onnx_parameters())
    target = MacTarget(MacCounter(parts, producers, max_group_share=share), level)
    if method == "group_magnitude":
        prune_groups(producers, target, "magnitude")
        return
    pruned = prune_groups(_index(module, parts.groups, method), target, fisher=fisher)
    producers.zero_(module.onnx_parameters(), pruned)


def run_seed(folder: Path, data: dict, seed: int, args: argparse.Namespace) -> dict:
    start = time.perf_counter()
    path = export_onnx(build("mlpnet", seed), ZOO["mlpnet"].input_shape,
                       folder / f"mlpnet_{seed}.onnx")
    parts = partition(str(path))
    groups = parts.groups
    module = OnnxModule(path)
    torch.manual_seed(seed)
    train(module, data, seed, args.epochs)
    dense_macs = measure(write_back(module, onnx.load(str(path)))).macs
    row = {"seed": seed, "dense": accuracy(module, *data["test"]), "dense_macs": dense_macs,
           "train_s": time.perf_counter() - start, "runs": {m: {} for m in METHODS}}
    num_grads, mini_batch = args.grads
    options = FisherOptions(num_grads=num_grads, mini_batch=mini_batch, damping=args.damping,
                            block_size=args.block_size)
    for method in METHODS:
        begin = time.perf_counter()
        fisher = (None if method == "group_magnitude"
                  else estimate_fisher(module, groups, method, data, seed, options))
        row[f"{method}_fisher_s"] = time.perf_counter() - begin
        for target in args.levels:
            pruned = copy.deepcopy(module)
            begin = time.perf_counter()
            prune(pruned, parts, method, target, fisher, args.max_group_share)
            seconds = time.perf_counter() - begin
            trained = write_back(pruned, onnx.load(str(path)))
            result = shrink(trained, masks_from_zeros(trained, groups))
            if not result.comparison:
                raise SystemExit(f"{method} at {target}: slim differs from the pruned model")
            zeros = build_zig_index(groups, pruned.onnx_parameters()).zero_fraction()
            row["runs"][method][str(target)] = {
                "accuracy": accuracy(pruned, *data["test"]), "group_sparsity": zeros,
                "macs_pct": 100.0 * measure(result.model).macs / dense_macs,
                "widths": [int(k.sum()) for k in result.masks.values()], "prune_s": seconds}
    print(f"seed {seed}: dense {row['dense']:.2f} %, " + ", ".join(
        f"{m} {row['runs'][m][str(args.levels[-1])]['accuracy']:.2f}" for m in METHODS)
        + f" at {args.levels[-1]} of the MACs", flush=True)
    return row


def _mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.2f} ± {sd:.2f}"


def render(results: dict) -> str:
    seeds = results["seeds"]
    rows = []
    for level in results["levels"]:
        for method in METHODS:
            runs = [s["runs"][method][str(level)] for s in seeds]
            rows.append([f"{100 * level:.0f}", method, _mean_sd([r["macs_pct"] for r in runs]),
                         _mean_sd([r["group_sparsity"] for r in runs]),
                         _mean_sd([r["accuracy"] for r in runs])])
    dense = _mean_sd([s["dense"] for s in seeds])
    return (f"MLPNet (zoo, with biases) on Fashion-MNIST, {results['epochs']} epochs, one-shot "
            f"structured pruning, no fine-tuning; dense {dense} %; mean ± SD over seeds "
            f"{[s['seed'] for s in seeds]}; group OBS with {results['grads']} gradients, "
            f"blocks of {results['block_size']}, damping {results['damping']:g}. Channels "
            f"ranked by score per MAC saved down to each MAC level, at most "
            f"{results['max_group_share']:g} of any layer. Every slim model validated against "
            f"the pruned one.\n\n"
            + markdown_table(["MAC level %", "method", "MACs % of dense", "group sparsity",
                              "test accuracy %"], rows))


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    for method in METHODS:
        points = [(statistics.fmean(s["runs"][method][str(t)]["macs_pct"]
                                    for s in results["seeds"]),
                   statistics.fmean(s["runs"][method][str(t)]["accuracy"]
                                    for s in results["seeds"])) for t in results["levels"]]
        ax.plot(*zip(*sorted(points), strict=True), marker="o", label=method)
    ax.axhline(statistics.fmean(s["dense"] for s in results["seeds"]), color="gray",
               linestyle=":", label="dense")
    ax.set_xlabel("MACs (% of dense)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("MLPNet on Fashion-MNIST, one-shot structured at matched MACs")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--levels", nargs="+", type=float, default=[0.8, 0.6, 0.4, 0.25],
                        help="MAC levels (share of the dense MACs)")
    parser.add_argument("--max-group-share", type=float, default=0.75)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--grads", default="2000x10")
    parser.add_argument("--block-size", type=int, default=1000)
    parser.add_argument("--damping", type=float, default=1e-5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--results-name", default=STEM)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    n, _, m = args.grads.partition("x")
    args.grads = (int(n), int(m or 1))
    data = {split: tuple(torch.from_numpy(a) for a in load_dataset("fashion-mnist", split=split))
            for split in ("train", "test")}
    with tempfile.TemporaryDirectory() as folder:
        seeds = [run_seed(Path(folder), data, seed, args) for seed in args.seeds]
    results = {"levels": args.levels, "max_group_share": args.max_group_share,
               "epochs": args.epochs, "grads": list(args.grads),
               "block_size": args.block_size, "damping": args.damping, "seeds": seeds}
    markdown = render(results)
    write_results(args.results_name, results, markdown)
    plot(results, RESULTS / f"{args.results_name}.png")
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
