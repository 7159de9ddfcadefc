"""Shrink + validate time and onnxruntime CPU latency of ResNet-50 kept at 75 / 50 / 25 %;
with ``--cost``, time and peak memory of mask and shrink, through the API and the CLI.

Targets: shrink + validate <= 3 s; latency ratio / MACs ratio <= 1.15 (the slim model is about
as much faster as it is cheaper). Full and slim are timed side by side, interleaved, in one run.
Cost targets (issue 26): peak RSS of mask and shrink <= 3x the model's bytes; on a VGG-16-sized
model mask <= 1.5 s and shrink + validate <= 6 s. ``--cost`` measures, per model and code tree,
in fresh processes: the API phases after imports (partition of the path, which loads it;
magnitude masks on the partition's model; shrink + validate of that model), each with wall and
CPU seconds and its own peak RSS (the high-water mark is reset as each phase starts, so a peak
includes what is already resident, the loaded model first); then the `onnxoto mask` and
`onnxoto shrink --mask` commands, wall time from start-up and the process's peak RSS (VmHWM).
``--before DIR`` (a checkout of older code) runs the same with that code in the same run, so
the columns share the machine's state.

    python benchmarks/shrink_latency.py [--runs 30] [--keep 0.75 0.5 0.25]
    python benchmarks/shrink_latency.py --cost [--before /tmp/onnxoto-before]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

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


VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def vgg16_bn(path: Path, *, num_classes: int = 1000, seed: int = 0) -> Path:
    """VGG-16 with BatchNorm (138 M params, 553 MB of float32) built with onnx.helper: an
    exporter would need the torch model in memory twice; the graph is what matters here."""
    rng = np.random.default_rng(seed)
    inits: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    def weight(name: str, shape: tuple[int, ...], scale: float, shift: float = 0.0) -> str:
        array = rng.standard_normal(shape, dtype=np.float32)
        array *= np.float32(scale)
        array += np.float32(shift)
        inits.append(numpy_helper.from_array(array, name))
        return name

    x, c_in = "input", 3
    for i, width in enumerate(VGG16):
        if width == "M":
            nodes.append(helper.make_node("MaxPool", [x], [f"pool{i}"], kernel_shape=[2, 2],
                                          strides=[2, 2]))
            x = f"pool{i}"
            continue
        w = weight(f"features.{i}.weight", (width, c_in, 3, 3), (2.0 / (9 * c_in)) ** 0.5)
        b = weight(f"features.{i}.bias", (width,), 0.01)
        bn = [weight(f"bn{i}.weight", (width,), 0.1, shift=1.0),
              weight(f"bn{i}.bias", (width,), 0.1), weight(f"bn{i}.mean", (width,), 0.1),
              weight(f"bn{i}.var", (width,), 0.0, shift=1.0)]
        nodes += [helper.make_node("Conv", [x, w, b], [f"conv{i}"], pads=[1, 1, 1, 1]),
                  helper.make_node("BatchNormalization", [f"conv{i}", *bn], [f"bn{i}"]),
                  helper.make_node("Relu", [f"bn{i}"], [f"relu{i}"])]
        x, c_in = f"relu{i}", width
    nodes.append(helper.make_node("Flatten", [x], ["flat"], axis=1))
    x, features = "flat", c_in * 7 * 7
    for j, width in enumerate((4096, 4096, num_classes)):
        w = weight(f"classifier.{j}.weight", (width, features), (2.0 / features) ** 0.5)
        b = weight(f"classifier.{j}.bias", (width,), 0.01)
        nodes.append(helper.make_node("Gemm", [x, w, b], [f"fc{j}"], transB=1))
        x, features = f"fc{j}", width
        if j < 2:
            nodes.append(helper.make_node("Relu", [x], [f"fc_relu{j}"]))
            x = f"fc_relu{j}"
    graph = helper.make_graph(
        nodes, "vgg16_bn", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                          [1, 3, 224, 224])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, num_classes])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # what onnxruntime 1.16+ reads
    onnx.save(model, path)
    return path


# Runs the CLI and, at exit, writes the process's own peak RSS (VmHWM): the rusage of a child
# keeps the high-water mark of the parent it was forked from across exec, so os.wait4 reports
# at least this benchmark's own size (torch and the exported model).
_PROBE = ("import atexit, os, runpy, sys\n"
          "def _peak():\n"
          "    with open('/proc/self/status') as f, open(os.environ['PEAK_FILE'], 'w') as out:\n"
          "        out.write(next(l for l in f if l.startswith('VmHWM')).split()[1])\n"
          "atexit.register(_peak)\n"
          "sys.argv[0] = 'onnxoto'\n"
          "runpy.run_module('onnxoto.cli', run_name='__main__')\n")


def command_cost(args: list[str], *, code: Path | None = None) -> dict:
    """Wall seconds and peak RSS (bytes) of one `onnxoto ...` run in a fresh process; ``code``
    puts an older checkout first on the path."""
    root = code or Path(__file__).resolve().parents[1]
    with tempfile.NamedTemporaryFile(suffix=".peak") as peak:
        env = {**os.environ, "PYTHONPATH": str(root), "PEAK_FILE": peak.name}
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", _PROBE, *args], env=env, cwd=root,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"onnxoto {' '.join(args)} failed: {proc.stderr.strip()}")
        return {"seconds": seconds, "peak_rss": int(Path(peak.name).read_text()) * 1024}


# The API phases of mask and shrink, in one process; prints one JSON line. Each phase's peak is
# its own: writing 5 to clear_refs resets VmHWM to the current RSS.
_API_PROBE = """
import gc, json, sys, time
from onnxoto.masking import magnitude_masks
from onnxoto.partition import partition
from onnxoto.shrink import shrink

def rss(key):
    with open('/proc/self/status') as f:
        return 1024 * int(next(l for l in f if l.startswith(key)).split()[1])

def phase(fn):
    gc.collect()
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')
    wall, cpu = time.perf_counter(), time.process_time()
    value = fn()
    return value, {'s': time.perf_counter() - wall, 'cpu_s': time.process_time() - cpu,
                   'peak_rss': rss('VmHWM')}

path, ratio = sys.argv[1], float(sys.argv[2])
result, part = phase(lambda: partition(path))
masks, mask = phase(lambda: magnitude_masks(result.model, result.groups, ratio=ratio))
outcome, shrunk = phase(lambda: shrink(result.model, masks, result=result))
assert outcome.passed, outcome.comparison.summary()
print(json.dumps({'partition': part, 'mask': mask, 'shrink_validate': shrunk}))
"""


def api_cost(path: Path, ratio: float, *, code: Path | None = None) -> dict:
    """Per API phase: wall and CPU seconds and peak RSS, in a fresh process on ``code``."""
    root = code or Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    proc = subprocess.run([sys.executable, "-c", _API_PROBE, str(path), str(ratio)], env=env,
                          cwd=root, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"API phases on {path} failed: {proc.stderr.strip()}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def cost_table(before: Path | None, models: list[str], ratio: float) -> int:
    """API phases, then `onnxoto mask` and `onnxoto shrink --mask` (validated), on each model,
    per code tree."""
    trees = {"before": before, "after": None} if before else {"after": None}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in models:
            path = Path(tmp) / f"{name}.onnx"
            if name == "vgg16_bn":
                vgg16_bn(path)
            else:
                from models.export import export_onnx
                from models.zoo import ZOO, build

                export_onnx(build(name), ZOO[name].input_shape, path)
            size = path.stat().st_size
            for label, code in trees.items():
                api = api_cost(path, ratio, code=code)
                masks, slim = Path(tmp) / f"{name}.{label}.npz", Path(tmp) / f"{name}.slim.onnx"
                mask = command_cost(["mask", str(path), "--ratio", str(ratio), "-o", str(masks)],
                                    code=code)
                shrunk = command_cost(["shrink", str(path), "--mask", str(masks), "-o",
                                       str(slim)], code=code)
                slim.unlink()
                rows.append({"model": name, "model_bytes": size, "code": label, "api": api,
                             "load": os.getloadavg()[0],
                             "mask_s": mask["seconds"], "mask_peak_rss": mask["peak_rss"],
                             "shrink_validate_s": shrunk["seconds"],
                             "shrink_peak_rss": shrunk["peak_rss"]})

    def rss(value: int, row: dict) -> str:
        return f"{value / 1e6:,.0f} ({value / row['model_bytes']:.1f}x)"

    api_headers = ["model", "MB", "code", "load avg", "partition s (CPU s)", "partition peak MB",
                   "mask s (CPU s)", "mask peak MB", "shrink+validate s (CPU s)",
                   "shrink+validate peak MB"]
    api_rows = [[r["model"], f"{r['model_bytes'] / 1e6:.0f}", r["code"], f"{r['load']:.1f}"]
                + [cell for key in ("partition", "mask", "shrink_validate") for cell in (
                    f"{r['api'][key]['s']:.2f} ({r['api'][key]['cpu_s']:.2f})",
                    rss(r["api"][key]["peak_rss"], r))] for r in rows]
    cli_headers = ["model", "MB", "code", "mask s", "mask peak RSS MB (x model)",
                   "shrink+validate s", "shrink peak RSS MB (x model)"]
    cli_rows = [[r["model"], f"{r['model_bytes'] / 1e6:.0f}", r["code"], f"{r['mask_s']:.2f}",
                 rss(r["mask_peak_rss"], r), f"{r['shrink_validate_s']:.2f}",
                 rss(r["shrink_peak_rss"], r)] for r in rows]
    markdown = (f"Masks remove {ratio:.0%} of every prunable group (magnitude); validation runs "
                f"3 seeded samples on onnxruntime CPU. Made by `python benchmarks/"
                f"shrink_latency.py --cost`.\n\nAPI, after imports, each phase in the same "
                f"fresh process: partition(path) loads, canonicalizes and partitions; mask is "
                f"magnitude_masks on the partition's model; shrink+validate is shrink(model, "
                f"masks, result=partition). CPU s counts every thread of the process. A phase's "
                f"peak RSS includes what was resident when it started (the loaded model).\n\n"
                + markdown_table(api_headers, api_rows)
                + "\n\nCLI, each command a fresh process: wall time includes Python start-up, "
                  "imports, loading and partitioning; peak RSS is the process's VmHWM.\n\n"
                + markdown_table(cli_headers, cli_rows))
    print(markdown)
    out = write_results("shrink_latency_cost", {"ratio": ratio, "rows": rows}, markdown)
    print(f"\nwrote {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cost", action="store_true",
                        help="time and peak RSS of `onnxoto mask` / `onnxoto shrink` instead")
    parser.add_argument("--before", type=Path, help="with --cost: an older checkout to compare")
    parser.add_argument("--models", nargs="+", default=["resnet50", "vgg16_bn"])
    parser.add_argument("--ratio", type=float, default=0.5, help="with --cost: mask ratio")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--keep", type=float, nargs="+", default=[0.75, 0.5, 0.25])
    parser.add_argument("--size", type=int, default=224, help="input height and width")
    parser.add_argument("--round-to", type=int, default=8,
                        help="channel multiple kept by shrink (1 = exact counts)")
    args = parser.parse_args(argv)
    if args.cost:
        return cost_table(args.before, args.models, args.ratio)
    from models.export import export_onnx
    from models.zoo import ZOO, build

    with tempfile.TemporaryDirectory() as tmp:
        shape = (*ZOO["resnet50"].input_shape[:2], args.size, args.size)
        path = export_onnx(build("resnet50"), shape, Path(tmp) / "resnet50.onnx")
        full = load_model(path)
    result = partition(full)
    full_metrics = measure(full)
    slims, rows = {}, []
    for keep in args.keep:  # masks read the canonical graph, the one the groups name
        masks = magnitude_masks(result.model, result.groups, ratio=1.0 - keep)
        start = time.perf_counter()
        outcome = shrink(result.model, masks, result=result,
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
