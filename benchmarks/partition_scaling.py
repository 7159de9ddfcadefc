"""How partition time grows with graph size: ResNet-50 and synthetic chains of 10^3..10^5 nodes.

Target: ResNet-50 <= 0.3 s and a flat time per node (OTO's pairwise merge is quadratic: 4.7 s on
ResNet152, 24.8 s on a 3,404-node MLP). Times are for a model already in memory (the best of a
few runs); loading the file is reported apart because it is I/O, not the algorithm. The
phases are split out: onnx's own shape inference (inside build_view) is not ours to make linear.

    python benchmarks/partition_scaling.py [--max-nodes 100000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import best_of, markdown_table, write_results  # noqa: E402
from models.synthetic import mlp_chain, residual_chain  # noqa: E402
from onnxoto.graph import build_view, load_model  # noqa: E402
from onnxoto.partition import form_groups, opset_of, partition, trace  # noqa: E402


def _resnet50(folder: Path) -> Path:
    from models.export import export_onnx
    from models.zoo import ZOO, build

    return export_onnx(build("resnet50"), ZOO["resnet50"].input_shape, folder / "resnet50.onnx")


def phases(model) -> dict:
    """Seconds per phase: onnx shape inference (build_view), our trace, our grouping."""
    start = time.perf_counter()
    view = build_view(model)
    built = time.perf_counter()
    tracer = trace(view, opset_of(model))
    traced = time.perf_counter()
    form_groups(tracer, {})
    done = time.perf_counter()
    return {"view_s": built - start, "trace_s": traced - built, "groups_s": done - traced}


def measure(label: str, model, repeats: int, load_seconds: float | None = None) -> dict:
    seconds, result = best_of(lambda: partition(model), repeats)
    split = min((phases(model) for _ in range(repeats)), key=lambda p: sum(p.values()))
    nodes = len(model.graph.node)
    ours = split["trace_s"] + split["groups_s"]
    return {"model": label, "nodes": nodes, "seconds": seconds,
            "us_per_node": 1e6 * seconds / nodes, "ours_us_per_node": 1e6 * ours / nodes,
            **split, "groups": result.summary["groups"],
            "prunable": result.summary["prunable"], "load_seconds": load_seconds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-nodes", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = _resnet50(Path(tmp))
        load, proto = best_of(lambda: load_model(path), args.repeats)
        rows.append(measure("resnet50 (zoo, legacy export)", proto, args.repeats, load))
    rows.append(measure("mlp_chain 3,404 nodes (OTO: 24.8 s)", mlp_chain(1702), args.repeats))
    blocks = [b for b in (143, 1_428, 14_285) if 7 * b + 4 <= args.max_nodes]
    for n_blocks in blocks:
        model = residual_chain(n_blocks)
        repeats = args.repeats if n_blocks < 10_000 else 1
        rows.append(measure(f"residual_chain {n_blocks} blocks", model, repeats))
    headers = ["model", "nodes", "partition s", "us / node", "shape inference + view s",
               "trace + grouping us / node", "groups", "prunable", "load s"]
    table = [[r["model"], f"{r['nodes']:,}", f"{r['seconds']:.3f}", f"{r['us_per_node']:.1f}",
              f"{r['view_s']:.3f}", f"{r['ours_us_per_node']:.1f}", r["groups"], r["prunable"],
              "-" if r["load_seconds"] is None else f"{r['load_seconds']:.3f}"] for r in rows]
    markdown = markdown_table(headers, table)
    print(markdown)
    out = write_results("partition_scaling", {"rows": rows}, markdown)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
