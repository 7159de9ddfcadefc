"""DHSPG step time vs plain SGD on the ResNet-50-shaped zoo model, measured side by side.

Goal: DHSPG <= 1.15x SGD. Reported twice: the optimizer step alone (where DHSPG's extra work
lives) and a whole training step (forward + backward + optimizer), which is what a user waits
for. Both optimizers see the same gradients; DHSPG is timed after warm-up, with its redundant
set re-selected every step (the worst case).

    python benchmarks/optimizer_overhead.py [--steps 10] [--size 64] [--batch 8]
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
    options = DHSPGOptions(lr=1e-3, target_group_sparsity=0.5, warmup_steps=0, period=1)
    return {"sgd": torch.optim.SGD(model.parameters(), lr=1e-3),
            "dhspg": DHSPG(named, zig, options)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model = build("resnet50").train()
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(model, ZOO["resnet50"].input_shape, Path(tmp) / "r50.onnx")
        groups = partition(path).groups
    model.train()
    x = torch.randn(args.batch, 3, args.size, args.size)
    y = torch.randint(0, 1000, (args.batch,))
    optimizers = _optimizers(model, groups)
    step_ms: dict[str, list[float]] = {name: [] for name in optimizers}
    total_ms: dict[str, list[float]] = {name: [] for name in optimizers}
    for step in range(args.steps + 2):
        for name, optimizer in optimizers.items():  # interleaved: noise hits both alike
            start = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            mid = time.perf_counter()
            optimizer.step()
            end = time.perf_counter()
            if step >= 2:
                step_ms[name].append(1e3 * (end - mid))
                total_ms[name].append(1e3 * (end - start))
    med = {k: statistics.median(v) for k, v in step_ms.items()}
    tot = {k: statistics.median(v) for k, v in total_ms.items()}
    rows = [{"measure": "optimizer step", "sgd_ms": med["sgd"], "dhspg_ms": med["dhspg"],
             "ratio": med["dhspg"] / med["sgd"]},
            {"measure": "training step (fwd+bwd+opt)", "sgd_ms": tot["sgd"],
             "dhspg_ms": tot["dhspg"], "ratio": tot["dhspg"] / tot["sgd"]}]
    zig = optimizers["dhspg"].zig
    markdown = (f"ResNet-50 (zoo), batch {args.batch} x 3 x {args.size} x {args.size}, "
                f"{zig.num_groups:,} ZIGs, {args.steps} interleaved steps, CPU threads "
                f"{torch.get_num_threads()}\n\n" + markdown_table(
                    ["measure", "SGD ms", "DHSPG ms", "DHSPG / SGD"],
                    [[r["measure"], f"{r['sgd_ms']:.1f}", f"{r['dhspg_ms']:.1f}",
                      f"{r['ratio']:.2f}"] for r in rows]))
    print(markdown)
    out = write_results("optimizer_overhead", {"rows": rows, "zigs": zig.num_groups}, markdown)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
