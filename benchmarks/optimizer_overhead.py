"""DHSPG step time vs plain SGD on the ResNet-50-shaped zoo model, measured side by side.

Goal: DHSPG <= 1.15x SGD. Reported per batch size, twice: the optimizer step alone (where
DHSPG's extra work lives) and a whole training step (forward + backward + optimizer), which is
what a user waits for. Both optimizers see the same model and inputs, interleaved step by step.
DHSPG runs after warm-up in two settings: its redundant set re-selected every step (period 1,
the worst case) and every 100 steps (the trainer's default), the latter also with its per-step
sums compiled (``compile_stats``; compiled before timing starts).

    python benchmarks/optimizer_overhead.py [--steps 20] [--size 64] [--batch 8 32]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.common import markdown_table, write_results  # noqa: E402
from models.export import export_onnx  # noqa: E402
from models.zoo import ZOO, build  # noqa: E402
from onnxoto.partition import partition  # noqa: E402
from trainers.dhspg import DHSPG, DHSPGOptions  # noqa: E402
from trainers.zig import build_zig_index  # noqa: E402


def _optimizers(model: torch.nn.Module, groups) -> dict[str, torch.optim.Optimizer]:
    named = dict(model.named_parameters())
    zig = build_zig_index(groups, named)
    settings = {"dhspg period 1": dict(period=1), "dhspg period 100": dict(period=100),
                "dhspg period 100 compiled": dict(period=100, compile_stats=True)}
    dhspg = {name: DHSPG(named, zig, DHSPGOptions(lr=1e-3, target_group_sparsity=0.5,
                                                  warmup_steps=0, **setting))
             for name, setting in settings.items()}
    return {"sgd": torch.optim.SGD(model.parameters(), lr=1e-3), **dhspg}


def _time_steps(model: torch.nn.Module, optimizers: dict[str, torch.optim.Optimizer],
                batch: int, size: int, steps: int,
                first_ms: dict[str, float]) -> list[dict[str, object]]:
    """Median optimizer-step and whole-step times per optimizer, with ratios to SGD; the first
    step of each optimizer (compiling, for the compiled setting) goes to ``first_ms``."""
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, 1000, (batch,))
    step_ms: dict[str, list[float]] = {name: [] for name in optimizers}
    total_ms: dict[str, list[float]] = {name: [] for name in optimizers}
    for step in range(steps + 2):
        for name, optimizer in optimizers.items():  # interleaved: noise hits all alike
            start = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            mid = time.perf_counter()
            optimizer.step()
            end = time.perf_counter()
            first_ms.setdefault(name, 1e3 * (end - mid))
            if step >= 2:
                step_ms[name].append(1e3 * (end - mid))
                total_ms[name].append(1e3 * (end - start))
    rows = []
    for measure, times in (("optimizer step", step_ms), ("training step", total_ms)):
        med = {k: statistics.median(v) for k, v in times.items()}
        for name in optimizers:
            if name != "sgd":
                rows.append({"batch": batch, "measure": measure, "dhspg": name,
                             "sgd_ms": med["sgd"], "dhspg_ms": med[name],
                             "ratio": med[name] / med["sgd"]})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, nargs="+", default=[8, 32])
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model = build("resnet50").train()
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(model, ZOO["resnet50"].input_shape, Path(tmp) / "r50.onnx")
        groups = partition(path).groups
    model.train()
    optimizers = _optimizers(model, groups)
    first_ms: dict[str, float] = {}
    rows = [row for batch in args.batch
            for row in _time_steps(model, optimizers, batch, args.size, args.steps, first_ms)]
    zigs = optimizers["dhspg period 1"].zig.num_groups
    markdown = (f"ResNet-50 (zoo), input 3 x {args.size} x {args.size}, {zigs:,} ZIGs, "
                f"{args.steps} interleaved steps per batch size, CPU threads "
                f"{torch.get_num_threads()}; DHSPG target 0.5, SGD without momentum\n\n"
                + markdown_table(
                    ["batch", "measure", "DHSPG setting", "SGD ms", "DHSPG ms", "DHSPG / SGD"],
                    [[r["batch"], r["measure"], r["dhspg"], f"{r['sgd_ms']:.1f}",
                      f"{r['dhspg_ms']:.1f}", f"{r['ratio']:.2f}"] for r in rows])
                + "\n\nFirst optimizer step (one-time costs; the compiled setting compiles "
                "here): " + ", ".join(f"{name} {ms / 1e3:.1f} s" for name, ms in first_ms.items()))
    print(markdown)
    out = write_results("optimizer_overhead", {"rows": rows, "zigs": zigs, "args": vars(args),
                                               "first_step_ms": first_ms},
                        markdown)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
