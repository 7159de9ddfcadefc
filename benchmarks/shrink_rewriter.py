"""Which rewriter should shrink use: protobuf slicing (today) or onnx-graphsurgeon?

Three ways to produce the same slim model, side by side in one run, each in a fresh process
(its peak RSS from os.wait4), rounds interleaved so machine noise hits all alike:

- ``protobuf``: today's ``slice_model`` (copy the proto, slice arrays in place, rules rewrite).
- ``gs_full``: graphsurgeon import, slice the member Constants' values, ``cleanup().toposort()``,
  export, then the same rule rewrites and shape refresh.
- ``gs_edits``: protobuf slicing of the arrays, then a graphsurgeon round trip (import,
  ``cleanup().toposort()``, export) for the graph edits, then the same tail.

Every variant then validates (the same ``compare`` as ``onnxoto shrink``), so "shrink" is the
rewriter step and "validate" is what all of them share. Goals (issue 26 item 6): ResNet-50
shrink+validate no slower than protobuf + 0.3 s; peak RSS <= 3x the model's bytes.

    python benchmarks/shrink_rewriter.py [--models resnet50 vgg16_bn] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import machine, markdown_table, write_results  # noqa: E402

VARIANTS = ("protobuf", "gs_full", "gs_edits")


def run_variant(path: str, variant: str) -> dict:
    """One shrink+validate with ``variant`` as the rewriter; phase seconds (runs in a child)."""
    import numpy as np
    import onnx

    from onnxoto.canonical import canonicalize
    from onnxoto.graph import light_copy, load_model
    from onnxoto.masking import magnitude_masks, zero_channels
    from onnxoto.partition import opset_of, partition
    from onnxoto.shrink import _refresh_shapes, removed_indices, rewrite_nodes, slice_model
    from onnxoto.validate import compare

    times: dict[str, float] = {}
    start = time.perf_counter()
    full = canonicalize(load_model(path), in_place=True)
    result = partition(full)
    masks = magnitude_masks(full, [g for g in result.groups if g.prunable], ratio=0.5)
    times["prepare"] = time.perf_counter() - start
    times["rss_prepare"] = _peak_rss()

    start = time.perf_counter()
    if variant == "protobuf":
        slim = slice_model(full, result, masks)
    else:
        import onnx_graphsurgeon as gs

        if variant == "gs_full":
            graph = gs.import_onnx(full)
            tensors = graph.tensors()
            for name, axes in removed_indices(result, masks).items():
                array = tensors[name].values
                for axis, indices in axes.items():
                    array = np.delete(array, indices, axis=axis)
                tensors[name].values = array
        else:
            from onnxoto.shrink import _sliced_copy

            graph = gs.import_onnx(_sliced_copy(full, removed_indices(result, masks)))
        slim = gs.export_onnx(graph.cleanup().toposort())
        rewrite_nodes(slim, result, masks, opset=opset_of(full))
        _refresh_shapes(slim)
        onnx.checker.check_model(light_copy(slim), full_check=False)
    times["shrink"] = time.perf_counter() - start
    times["rss_shrink"] = _peak_rss()

    start = time.perf_counter()
    comparison = compare(zero_channels(full, result.groups, masks), slim, samples=3, seed=0)
    times["validate"] = time.perf_counter() - start
    times["passed"] = bool(comparison.passed)
    times["slim_params"] = int(sum(np.prod(t.dims, dtype=np.int64) for t in slim.graph.initializer))
    return times


def _peak_rss() -> int:
    """This process's peak RSS so far, in bytes (Linux reports KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child(path: str, variant: str) -> dict:
    """run_variant in a fresh interpreter: its own peak RSS (at least this small parent's, which
    Linux carries over), no cache shared with the others."""
    proc = subprocess.Popen([sys.executable, __file__, "--child", path, variant],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    out, err = proc.stdout.read().decode(), proc.stderr.read().decode()
    proc.stdout.close()
    proc.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{variant} on {path} failed: {err.strip()[-2000:]}")
    row = json.loads(out.strip().splitlines()[-1])
    row["peak_rss"] = usage.ru_maxrss * 1024
    return row


def build(name: str, folder: Path) -> Path:
    path = folder / f"{name}.onnx"
    if name == "vgg16_bn":
        from benchmarks.shrink_latency import vgg16_bn

        return vgg16_bn(path)
    from models.export import export_onnx
    from models.zoo import ZOO
    from models.zoo import build as build_model

    return export_onnx(build_model(name), (*ZOO[name].input_shape[:2], 224, 224), path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet50", "vgg16_bn"])
    parser.add_argument("--rounds", type=int, default=3, help="rounds per model (default 3)")
    parser.add_argument("--child", nargs=2, metavar=("PATH", "VARIANT"), help=argparse.SUPPRESS)
    parser.add_argument("--build", nargs=2, metavar=("NAME", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(run_variant(*args.child)))
        return 0
    if args.build:
        build(args.build[0], Path(args.build[1]))
        return 0
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            # built in its own process: Linux carries a parent's peak RSS into the children
            subprocess.run([sys.executable, __file__, "--build", name, tmp], check=True)
            path = Path(tmp) / f"{name}.onnx"
            size = path.stat().st_size
            runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
            for _ in range(args.rounds):
                for variant in VARIANTS:
                    runs[variant].append(child(str(path), variant))
                    print(name, variant, runs[variant][-1], flush=True)
            for variant, got in runs.items():
                best = min(got, key=lambda r: r["shrink"] + r["validate"])
                rows.append({"model": name, "model_bytes": size, "variant": variant,
                             "rounds": len(got), "shrink_s": min(r["shrink"] for r in got),
                             "validate_s": min(r["validate"] for r in got),
                             "shrink_validate_s": best["shrink"] + best["validate"],
                             "peak_rss": max(r["peak_rss"] for r in got),
                             "rss_prepare": max(r["rss_prepare"] for r in got),
                             "rss_shrink": max(r["rss_shrink"] for r in got),
                             "rss_over_model": max(r["peak_rss"] for r in got) / size,
                             "passed": all(r["passed"] for r in got),
                             "slim_params": got[0]["slim_params"]})
    table = markdown_table(
        ["model", "rewriter", "shrink s", "validate s", "shrink+validate s",
         "peak RSS MB: prepared / shrunk / validated", "RSS / model", "passed"],
        [[r["model"], r["variant"], f"{r['shrink_s']:.2f}", f"{r['validate_s']:.2f}",
          f"{r['shrink_validate_s']:.2f}",
          f"{r['rss_prepare'] / 2**20:.0f} / {r['rss_shrink'] / 2**20:.0f} / "
          f"{r['peak_rss'] / 2**20:.0f}", f"{r['rss_over_model']:.1f}x", r["passed"]]
         for r in rows])
    print(table)
    write_results("shrink_rewriter", {"machine": machine(), "rows": rows},
                  "# Shrink rewriter: protobuf vs onnx-graphsurgeon\n\n"
                  "Best of the rounds per phase; peak RSS is the worst round's whole process "
                  "(load, partition, masks, shrink, validate). Made by "
                  "`python benchmarks/shrink_rewriter.py`.\n\n" + table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
