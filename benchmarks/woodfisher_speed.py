"""Batched inverse Fisher (Woodbury through the N x N system) against the paper's rank-1
recursion, on one block of 2,000 weights with N = 400 gradients and on the largest layer of the
zoo ResNet-50 cut into blocks of 2,000; plus what memory the blockwise inverse needs per zoo
model.

Both methods get the same gradients (seeded Gaussian: the cost does not depend on the values)
and must agree to 1e-5 (max |difference| / max |reference|, float64). The full layer takes too
long for the rank-1 recursion on a shared CPU, so ``--layer-chunks`` blocks of it are timed with
both methods and the layer time is that times its block count (blocks are independent and all
the same size, so the cost is linear in their number). Goal: batched >= 5x faster.

    python benchmarks/woodfisher_speed.py [--block 2000] [--grads 400] [--layer-chunks 8]
        [--batch 4] [--repeats 3] [--threads 2] [--dtype float64]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import best_of, markdown_table, write_results  # noqa: E402
from models.zoo import ZOO, build  # noqa: E402
from trainers.woodfisher import (  # noqa: E402
    FisherOptions,
    fisher_memory,
    inverse_fisher,
    inverse_fisher_rank1,
)

STEM = "woodfisher_speed"
DAMPING = 1e-5
GOAL_SPEEDUP = 5.0


def compare(grads: torch.Tensor, repeats: int) -> dict:
    batched_s, batched = best_of(lambda: inverse_fisher(grads, DAMPING), repeats)
    rank1_s, rank1 = best_of(lambda: inverse_fisher_rank1(grads, DAMPING), max(1, repeats - 1))
    diff = float((batched - rank1).abs().max() / rank1.abs().max())
    return {"batched_s": batched_s, "rank1_s": rank1_s, "speedup": rank1_s / batched_s,
            "max_rel_diff": diff}


def largest_layer() -> tuple[str, tuple[int, ...]]:
    model = build("resnet50")
    name, param = max(model.named_parameters(), key=lambda item: item[1].numel())
    return name, tuple(param.shape)


def memory_table(block: int, grads: int) -> list[dict]:
    rows = []
    for name in ZOO:
        shapes = {n: tuple(p.shape) for n, p in build(name).named_parameters()}
        for dtype in (torch.float32, torch.float64):
            options = FisherOptions(num_grads=grads, block_size=block, dtype=dtype)
            memory = fisher_memory(shapes, options)
            rows.append({"model": name, "dtype": str(dtype).removeprefix("torch."), **memory})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--block", type=int, default=2000)
    parser.add_argument("--grads", type=int, default=400)
    parser.add_argument("--layer-chunks", type=int, default=8)
    parser.add_argument("--batch", type=int, default=4, help="blocks per batched call")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    parser.add_argument("--results-name", default=STEM)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    gen = torch.Generator().manual_seed(0)

    single = compare(torch.randn(args.grads, args.block, dtype=dtype, generator=gen), args.repeats)
    layer, shape = largest_layer()
    numel = torch.Size(shape).numel()
    blocks = -(-numel // args.block)
    timed = {"batched_s": 0.0, "rank1_s": 0.0, "max_rel_diff": 0.0}
    for start in range(0, args.layer_chunks, args.batch):
        count = min(args.batch, args.layer_chunks - start)
        part = compare(torch.randn(count, args.grads, args.block, dtype=dtype, generator=gen),
                       args.repeats)
        timed["batched_s"] += part["batched_s"]
        timed["rank1_s"] += part["rank1_s"]
        timed["max_rel_diff"] = max(timed["max_rel_diff"], part["max_rel_diff"])
    scale = blocks / args.layer_chunks
    layer_row = {"layer": layer, "shape": shape, "weights": numel, "blocks": blocks,
                 "timed_blocks": args.layer_chunks,
                 "batched_s": timed["batched_s"] * scale, "rank1_s": timed["rank1_s"] * scale,
                 "speedup": timed["rank1_s"] / timed["batched_s"],
                 "max_rel_diff": timed["max_rel_diff"]}
    memory = memory_table(args.block, args.grads)

    headers = ["case", "batched (s)", "rank-1 (s)", "speedup", "max rel diff"]
    rows = [[f"one block: d = {args.block}, N = {args.grads}", f"{single['batched_s']:.3f}",
             f"{single['rank1_s']:.3f}", f"{single['speedup']:.1f}x",
             f"{single['max_rel_diff']:.1e}"],
            [f"ResNet-50 {layer} {shape}: {blocks} blocks of {args.block}, N = {args.grads} "
             f"(from {args.layer_chunks} timed)", f"{layer_row['batched_s']:.1f}",
             f"{layer_row['rank1_s']:.1f}", f"{layer_row['speedup']:.1f}x",
             f"{layer_row['max_rel_diff']:.1e}"]]
    met = min(single["speedup"], layer_row["speedup"]) >= GOAL_SPEEDUP and max(
        single["max_rel_diff"], layer_row["max_rel_diff"]) <= 1e-5
    mib = 1 << 20
    memory_rows = [[m["model"], m["dtype"], m["weights"], m["blocks"],
                    f"{m['inverse'] / mib:,.0f}", f"{m['gradients'] / mib:,.0f}",
                    f"{m['total'] / mib:,.0f}"] for m in memory]
    markdown = (
        f"Inverse Fisher, {args.dtype}, damping {DAMPING:g}, {args.threads} threads, "
        f"{args.batch} blocks per batched call (best of {args.repeats}):\n\n"
        + markdown_table(headers, rows)
        + f"\n\nGoal (>= {GOAL_SPEEDUP:g}x, same result to 1e-5): {'met' if met else 'NOT met'}"
        + f"\n\nMemory of the blockwise inverse, every parameter, blocks of {args.block}, "
          f"N = {args.grads} (gradients held as float32; MiB):\n\n"
        + markdown_table(["model", "dtype", "weights", "blocks", "inverse", "gradients",
                          "total"], memory_rows))
    write_results(args.results_name, {"options": vars(args), "single_block": single,
                                      "layer": layer_row, "goal_met": met, "memory": memory},
                  markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
