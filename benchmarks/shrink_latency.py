"""Shrink + validate time and onnxruntime CPU latency of ResNet-50 kept at 75 / 50 / 25 %.

Targets: shrink + validate <= 3 s; latency ratio / MACs ratio <= 1.15 (the slim model is about
as much faster as it is cheaper). Full and slim are timed side by side, interleaved, in one run.

    python benchmarks/shrink_latency.py [--runs 30] [--keep 0.75 0.5 0.25]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import markdown_table, write_results  # noqa: E402
from onnxoto import runtime  # noqa: E402
from onnxoto.graph import load_model  # noqa: E402
from onnxoto.masking import magnitude_masks  # noqa: E402
from onnxoto.metrics import measure  # noqa: E402
from onnxoto.partition import partition  # noqa: E402
from onnxoto.shrink import ShrinkOptions, shrink  # noqa: E402


def interleaved_latency(models: dict, runs: int, warmup: int = 5) -> dict[str, float]:
    """Median ms per model, timing the models in turn so machine noise hits all alike."""
    sessions = {name: runtime.session(m) for name, m in models.items()}
    inputs = runtime.random_inputs(next(iter(models.values())), seed=0)
    for sess in sessions.values():
        for _ in range(warmup):
            sess.run(None, inputs)
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(runs):
        for name, sess in sessions.items():
            start = time.perf_counter()
            sess.run(None, inputs)
            times[name].append(1e3 * (time.perf_counter() - start))
    return {name: statistics.median(t) for name, t in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--keep", type=float, nargs="+", default=[0.75, 0.5, 0.25])
    parser.add_argument("--size", type=int, default=224, help="input height and width")
    parser.add_argument("--round-to", type=int, default=8,
                        help="channel multiple kept by shrink (1 = exact counts)")
    args = parser.parse_args(argv)
    from models.export import export_onnx
    from models.zoo import ZOO, build

    with tempfile.TemporaryDirectory() as tmp:
        shape = (*ZOO["resnet50"].input_shape[:2], args.size, args.size)
        path = export_onnx(build("resnet50"), shape, Path(tmp) / "resnet50.onnx")
        full = load_model(path)
    result = partition(full)
    full_metrics = measure(full)
    slims, rows = {}, []
    for keep in args.keep:
        masks = magnitude_masks(full, result.groups, ratio=1.0 - keep)
        start = time.perf_counter()
        outcome = shrink(full, masks, result=result,
                         options=ShrinkOptions(round_to=args.round_to))
        seconds = time.perf_counter() - start
        assert outcome.passed, outcome.comparison.summary()
        metrics = measure(outcome.model)
        slims[keep] = outcome.model
        rows.append({"keep": keep, "shrink_validate_s": seconds,
                     "max_abs_diff": max(o.max_abs for o in outcome.comparison.outputs),
                     "params": metrics.params, "macs": metrics.macs,
                     "macs_ratio": metrics.macs / full_metrics.macs})
    latency = interleaved_latency({"full": full, **{k: m for k, m in slims.items()}}, args.runs)
    for row in rows:
        row["full_ms"], row["slim_ms"] = latency["full"], latency[row["keep"]]
        row["latency_ratio"] = row["slim_ms"] / row["full_ms"]
        row["latency_over_macs"] = row["latency_ratio"] / row["macs_ratio"]
    headers = ["keep", "shrink+validate s", "max abs diff", "params", "MACs", "MACs ratio",
               "full ms", "slim ms", "latency ratio", "latency ratio / MACs ratio"]
    table = [[f"{r['keep']:.0%}", f"{r['shrink_validate_s']:.2f}", f"{r['max_abs_diff']:.1e}",
              f"{r['params']:,}", f"{r['macs']:,}", f"{r['macs_ratio']:.3f}",
              f"{r['full_ms']:.2f}", f"{r['slim_ms']:.2f}", f"{r['latency_ratio']:.3f}",
              f"{r['latency_over_macs']:.2f}"] for r in rows]
    markdown = (f"ResNet-50 (zoo topology, input {shape}, --round-to {args.round_to}), full: "
                f"{full_metrics.params:,} params, {full_metrics.macs:,} MACs; onnxruntime CPU, "
                f"median of {args.runs} interleaved runs\n\n" + markdown_table(headers, table))
    print(markdown)
    out = write_results(f"shrink_latency_{args.size}", {"full_params": full_metrics.params,
                                           "full_macs": full_metrics.macs, "rows": rows},
                        markdown)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
