"""DHSPG step time vs plain SGD on the ResNet-50-shaped zoo model, measured side by side.

Goal: DHSPG <= 1.15x SGD. Reported per batch size, twice: the optimizer step alone (where
DHSPG's extra work lives) and a whole training step (forward + backward + optimizer), which is
what a user waits for. The model is what ``onnxoto train`` trains: the partition's canonical
graph (``result.model``, whose initializers the groups name) bound as an OnnxModule. Every
optimizer trains its own copy of it on the same inputs, interleaved step by step. DHSPG runs
after warm-up with its redundant set chosen once (the trainer's default, OTOv2's) and re-chosen
every step (period 1, the worst case); ``--compile`` (auto by default, as ``onnxoto train``:
``compile_decision`` on the model's parameter count and a C++ compiler) adds the chosen-once
setting with its per-step sums compiled (``compile_stats``; compiled in the first, untimed step).

Two phases of a run are timed. "pushing": fresh weights, the redundant ZIGs are being pushed
towards zero (DHSPG sweeps its per-ZIG sums every step). "zeroed": half of the ZIGs are already
exactly zero and form the redundant set, as in a DemoNet run after its first epoch, i.e. most
of a run's steps; between choices DHSPG then takes the plain step with those rows held at 0.

    python benchmarks/optimizer_overhead.py [--steps 20] [--size 64] [--batch 8 32]
        [--phases pushing zeroed] [--compile auto|on|off] [--threads N]

The compile choice is printed before the first step (the line ``onnxoto train`` logs) and
stands in the table's caption.
"""

from __future__ import annotations

import argparse
import copy
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
from trainers.binding import OnnxModule  # noqa: E402
from trainers.dhspg import DHSPG, DHSPGOptions, compile_decision  # noqa: E402
from trainers.zig import build_zig_index  # noqa: E402

SETTINGS = {"dhspg period 1": dict(period=1), "dhspg chosen once": dict(period=None)}
COMPILED = {"dhspg chosen once compiled": dict(period=None, compile_stats=True)}
TARGET = 0.5


def _setups(model: OnnxModule, groups, phase: str,
            settings: dict[str, dict]) -> dict[str, tuple]:
    """name -> (model copy, its optimizer) for SGD and each DHSPG setting. For "zeroed", the
    same random half of the ZIGs is set to 0 in every copy first; DHSPG's first choice then
    takes exactly those (zero ZIGs always rank lowest), as after a run's pushing phase."""
    template = copy.deepcopy(model)
    if phase == "zeroed":
        params = template.onnx_parameters()
        zig = build_zig_index(groups, params)
        chosen = torch.randperm(zig.num_groups, generator=torch.Generator().manual_seed(0))
        zero = torch.zeros(zig.num_groups, dtype=torch.bool)
        zero[chosen[:int(zig.num_groups * TARGET)]] = True
        zig.zero_(params, zero)
    setups = {}
    for name in ("sgd", *settings):
        copy_ = copy.deepcopy(template).train()
        if name == "sgd":
            setups[name] = (copy_, torch.optim.SGD(copy_.parameters(), lr=1e-3))
            continue
        named = copy_.onnx_parameters()
        options = DHSPGOptions(lr=1e-3, target_group_sparsity=TARGET, warmup_steps=0,
                               **settings[name])
        setups[name] = (copy_, DHSPG(named, build_zig_index(groups, named), options))
    return setups


def _time_steps(setups: dict[str, tuple], phase: str, batch: int, size: int, steps: int,
                first_ms: dict[str, float]) -> list[dict[str, object]]:
    """Median optimizer-step and whole-step times per optimizer, with ratios to SGD; the first
    step of each optimizer (compiling, for the compiled setting) goes to ``first_ms``."""
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, 1000, (batch,))
    step_ms: dict[str, list[float]] = {name: [] for name in setups}
    total_ms: dict[str, list[float]] = {name: [] for name in setups}
    for step in range(steps + 2):
        for name, (model, optimizer) in setups.items():  # interleaved: noise hits all alike
            start = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            mid = time.perf_counter()
            optimizer.step()
            end = time.perf_counter()
            first_ms.setdefault(f"{name} ({phase})", 1e3 * (end - mid))
            if step >= 2:
                step_ms[name].append(1e3 * (end - mid))
                total_ms[name].append(1e3 * (end - start))
    rows = []
    for measure, times in (("optimizer step", step_ms), ("training step", total_ms)):
        med = {k: statistics.median(v) for k, v in times.items()}
        for name in setups:
            if name != "sgd":
                rows.append({"phase": phase, "batch": batch, "measure": measure,
                             "dhspg": name, "sgd_ms": med["sgd"], "dhspg_ms": med[name],
                             "ratio": med[name] / med["sgd"]})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--phases", nargs="+", choices=["pushing", "zeroed"],
                        default=["pushing", "zeroed"])
    parser.add_argument("--compile", choices=["auto", "on", "off"], default="auto",
                        help="time the compiled setting too: auto as onnxoto train decides")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's own count)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(build("resnet50"), ZOO["resnet50"].input_shape, Path(tmp) / "r50.onnx")
        result = partition(path)
    model, groups = OnnxModule(result.model).train(), result.groups
    compiled, compile_note = compile_decision(
        sum(p.numel() for p in model.parameters()),
        requested=None if args.compile == "auto" else args.compile == "on")
    print(f"--compile {args.compile}: {compile_note}", flush=True)
    settings = {**SETTINGS, **(COMPILED if compiled else {})}
    first_ms: dict[str, float] = {}
    rows, zigs = [], 0
    for phase in args.phases:
        setups = _setups(model, groups, phase, settings)
        zigs = setups["dhspg period 1"][1].zig.num_groups
        rows += [row for batch in args.batch
                 for row in _time_steps(setups, phase, batch, args.size, args.steps, first_ms)]
        del setups
    markdown = (f"ResNet-50 (zoo), input 3 x {args.size} x {args.size}, {zigs:,} ZIGs, "
                f"{args.steps} interleaved steps per phase and batch size, CPU threads "
                f"{torch.get_num_threads()}; DHSPG target {TARGET}, lr 1e-3, SGD without "
                f"momentum; --compile {args.compile}: {compile_note}. pushing: redundant ZIGs "
                "still non-zero; zeroed: they are exactly 0 "
                "(most steps of a run)\n\n"
                + markdown_table(
                    ["phase", "batch", "measure", "DHSPG setting", "SGD ms", "DHSPG ms",
                     "DHSPG / SGD"],
                    [[r["phase"], r["batch"], r["measure"], r["dhspg"], f"{r['sgd_ms']:.1f}",
                      f"{r['dhspg_ms']:.1f}", f"{r['ratio']:.2f}"] for r in rows])
                + "\n\nFirst optimizer step (one-time costs; the compiled setting compiles "
                "here): " + ", ".join(f"{name} {ms / 1e3:.1f} s" for name, ms in first_ms.items()))
    print(markdown)
    out = write_results("optimizer_overhead", {"rows": rows, "zigs": zigs, "args": vars(args),
                                               "compile": compile_note,
                                               "first_step_ms": first_ms},
                        markdown)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
