"""How partition time grows with graph size, and what the canonical pass costs.

Models: the zoo's ResNet-50 (the largest zoo model) from both exporters, the same ResNet-50 with
torch 2.14's computed Conv biases (53 ``Expand(CastLike(0, x), Shape(W))``, folded by the
canonical pass), an MLP chain and residual chains of 10^3..10^5 nodes. Targets: ResNet-50 in
<= 0.1 s with and without the canonical pass; the pass itself < 0.2 s and < 1.5x memory; a flat
time per node (OTO's pairwise merge is quadratic: 4.7 s on ResNet152, 24.8 s on a 3,404-node MLP).

Each model is timed in a fresh process per code tree (``--before DIR``, a folder holding an older
``onnxoto`` package, runs first, then this tree, alternating over ``--rounds``), through the API
on a model already loaded: ``partition(model)``; the same steps without ``canonicalize``; and
``canonicalize(model)`` alone (on a proto, so it copies the model whenever it changes it). Best
and median of ``--repeats`` runs per round, wall clock and (in brackets) the process's CPU
time, which a loaded machine inflates less. The canonical pass's memory is its peak RSS over
the RSS with the model loaded, in a fresh process, in place (what ``onnxoto partition FILE``
does) and on a copy (the API given a proto).

    python benchmarks/partition_scaling.py [--max-nodes 100000] [--repeats 10] [--before DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import markdown_table, write_results  # noqa: E402
from models.synthetic import mlp_chain, residual_chain  # noqa: E402

# Runs in a fresh process with the code tree under test first on the path.
_TIMES = """
import json, sys, time
from onnxoto.canonical import canonicalize
from onnxoto.graph import build_view, load_model
from onnxoto.partition import form_groups, opset_of, partition, trace

model, repeats = load_model(sys.argv[1]), int(sys.argv[2])

def without_canonical():
    proto = load_model(model)
    form_groups(trace(build_view(proto), opset_of(proto)), {})

def times(step):
    step()
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        step()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return {"wall": wall, "cpu": cpu}

result = partition(model)
print(json.dumps({"partition": times(lambda: partition(model)),
                  "without_canonical": times(without_canonical),
                  "canonical": times(lambda: canonicalize(model)),
                  "nodes": len(model.graph.node), "canonical_nodes": len(result.model.graph.node),
                  "groups": result.summary["groups"], "prunable": result.summary["prunable"]}))
"""

_MEMORY = """
import gc, json, sys
from onnxoto.canonical import canonicalize
from onnxoto.graph import load_model

def status(key):
    with open("/proc/self/status") as f:
        return 1024 * int(next(line for line in f if line.startswith(key)).split()[1])

model = load_model(sys.argv[1])
gc.collect()
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # resets VmHWM to the current RSS
before = status("VmRSS")
canonicalize(model, in_place=sys.argv[2] == "in place")
print(json.dumps({"rss_before": before, "peak": status("VmHWM")}))
"""


def run_child(script: str, args: list[str], code: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(code)}
    proc = subprocess.run([sys.executable, "-c", script, *args], env=env, cwd=code,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{code}: {proc.stderr.strip()}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def build_models(folder: Path, max_nodes: int) -> list[tuple[str, Path]]:
    from models.export import export_onnx
    from models.zoo import ZOO, build
    from tests.graphs import with_computed_biases

    net, shape = build("resnet50"), ZOO["resnet50"].input_shape
    legacy = export_onnx(net, shape, folder / "resnet50.onnx")
    dynamo = export_onnx(net, shape, folder / "resnet50.dynamo.onnx", dynamo=True)
    torch214 = folder / "resnet50.torch214.onnx"
    onnx.save(with_computed_biases(onnx.load(legacy)), torch214)
    paths = [("resnet50 (zoo, legacy export)", legacy), ("resnet50 (zoo, dynamo export)", dynamo),
             ("resnet50, torch 2.14 computed biases", torch214)]
    mlp = folder / "mlp_chain.onnx"
    onnx.save(mlp_chain(1702), mlp)
    paths.append(("mlp_chain 3,404 nodes (OTO: 24.8 s)", mlp))
    for blocks in (b for b in (143, 1_428, 14_285) if 7 * b + 4 <= max_nodes):
        path = folder / f"residual_chain_{blocks}.onnx"
        onnx.save(residual_chain(blocks), path)
        paths.append((f"residual_chain {blocks} blocks", path))
    return paths


def summary(times: list[float]) -> dict:
    return {"best": min(times), "median": statistics.median(times), "runs": len(times)}


def measure(label: str, path: Path, trees: dict[str, Path], repeats: int, rounds: int) -> list:
    if "residual_chain 14285" in label:  # seconds per run: one run, one round
        repeats, rounds = 1, 1
    runs: dict[str, list[dict]] = {tree: [] for tree in trees}
    for _ in range(rounds):
        for tree, code in trees.items():
            runs[tree].append(run_child(_TIMES, [str(path), str(repeats)], code))
    rows = []
    for tree, found in runs.items():
        row = {"model": label, "code": tree, **{k: found[0][k] for k in (
            "nodes", "canonical_nodes", "groups", "prunable")}}
        for step in ("partition", "without_canonical", "canonical"):
            row[step] = summary([t for run in found for t in run[step]["wall"]])
            row[f"{step}_cpu"] = summary([t for run in found for t in run[step]["cpu"]])
        rows.append(row)
    return rows


def memory(label: str, path: Path, code: Path) -> list[dict]:
    rows = []
    for mode in ("in place", "copy"):
        found = run_child(_MEMORY, [str(path), mode], code)
        rows.append({"model": label, "mode": mode, "model_bytes": path.stat().st_size, **found,
                     "ratio": found["peak"] / found["rss_before"]})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-nodes", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2, help="alternations of the code trees")
    parser.add_argument("--before", type=Path, help="a folder holding an older onnxoto package")
    args = parser.parse_args(argv)
    trees = ({"before": args.before.resolve()} if args.before else {}) | {"after": ROOT}
    load = os.getloadavg()
    rows, costs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for label, path in build_models(Path(tmp), args.max_nodes):
            rows += measure(label, path, trees, args.repeats, args.rounds)
            print(json.dumps(rows[-1]), flush=True)
            if "torch 2.14" in label:
                for tree, code in trees.items():
                    costs += [{"code": tree, **r} for r in memory(label, path, code)]
    headers = ["model", "code", "nodes", "partition s best / median (CPU s median)",
               "without canonical pass s", "canonical pass s", "us / node (best)", "groups",
               "prunable"]
    table = [[r["model"], r["code"], f"{r['nodes']:,}",
              *(f"{r[s]['best']:.3f} / {r[s]['median']:.3f} ({r[s + '_cpu']['median']:.3f})"
                for s in ("partition", "without_canonical", "canonical")),
              f"{1e6 * r['partition']['best'] / r['nodes']:.1f}", r["groups"], r["prunable"]]
             for r in rows]
    cost_headers = ["model", "code", "canonical pass", "RSS with model loaded MB",
                    "peak RSS MB", "peak / loaded"]
    cost_table = [[c["model"], c["code"], c["mode"], f"{c['rss_before'] / 1e6:.0f}",
                   f"{c['peak'] / 1e6:.0f}", f"{c['ratio']:.2f}x"] for c in costs]
    markdown = (f"Load average at start: {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} "
                f"(1 / 5 / 15 min); {os.cpu_count()} CPUs.\n\n"
                + markdown_table(headers, table) + "\n\n"
                + markdown_table(cost_headers, cost_table))
    print(markdown)
    out = write_results("partition_scaling", {"load_average": load, "rows": rows,
                                              "canonical_memory": costs}, markdown)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
