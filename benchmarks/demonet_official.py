"""OTOv2's DemoNet (3x32x32, models/zoo.py) on fashion-mnist-32 with DHSPG as OTOv2's code
runs it: a baseline (target 0) and a DHSPG run per seed, or an A/B of rule sets on one seed.

    python benchmarks/demonet_official.py [--seeds 0 1 2] [--limit-train 24000]
        [--limit-test 5000] [--epochs 8] [--warmup-epochs 2] [--target 0.6] [--threads N]
        [--out DIR]
    python benchmarks/demonet_official.py --ab [--seeds 0] ...   # official vs old rules

Seeds write benchmarks/results/demonet_official.json (per seed baseline_top1, dhspg_top1,
macs_pct, params_pct, wall_s; totals mean_drop, sd_drop); --ab writes demonet_ab.{json,md}
with each run's wall time over the baseline's (the issue's goal for DHSPG with slim
continuation: <= 1.3x). Top-1 is the slim ONNX model's on the test subset (onnxruntime CPU),
in percent. ``--threads`` sets torch's and onnxruntime's thread count for every run, so wall
times compare on a shared machine.

The trainer's TrainOptions does not carry DHSPG's rule options (score, tolerance, release,
lam_bracket): ``_rules`` hands them to the DHSPGOptions of trainers/train/prepare.py for the
duration of a run. The redundant set is chosen once, after the warm-up (OTOv2's tutorials start
pruning after about a fifth of training); the trainer applies fashion-mnist-32's augmentation.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import markdown_table, write_results  # noqa: E402

DATA = "fashion-mnist-32"
# The goal for a DHSPG run's wall time (slim continuation on) over its baseline's.
GOAL_WALL_RATIO = 1.3
# Rule sets for --ab: OTOv2's code (the defaults) and our earlier rules.
RULES: dict[str, dict[str, Any]] = {
    "official": {},
    "old": dict(score="salience", tolerance=0.0, release=False, lam_bracket=True, period=100),
}


@contextlib.contextmanager
def _rules(rules: dict[str, Any]) -> Iterator[None]:
    """Run the trainer with ``rules`` over its DHSPGOptions (period None unless a rule sets it)."""
    from trainers.dhspg import DHSPGOptions

    train = importlib.import_module("trainers.train.prepare")  # the package exports a prepare()

    def options(**kw: Any) -> DHSPGOptions:
        return DHSPGOptions(**{**kw, "period": None, **rules})

    saved = train.DHSPGOptions
    train.DHSPGOptions = options
    try:
        yield
    finally:
        train.DHSPGOptions = saved


def _run(model: Path, args: argparse.Namespace, seed: int, target: float, out: Path,
         rules: dict[str, Any]) -> dict[str, Any]:
    """One trainer run (resumed if its folder holds a checkpoint, read back if finished)."""
    from trainers.train import FILES, TrainOptions, run_dhspg

    done = out / FILES["metrics"]
    if done.is_file():
        return json.loads(done.read_text())
    options = TrainOptions(
        data=DATA, target=target, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        lr_schedule="cosine", variant=args.variant, warmup_epochs=args.warmup_epochs,
        epsilon=args.epsilon, limit_train=args.limit_train, limit_test=args.limit_test,
        seed=seed, device=args.device, out=out, quiet=args.quiet,
        test_each_epoch=not args.test_last_only,
        resume=(out / FILES["checkpoint"]).is_file())
    options.overwrite = not options.resume
    started = time.perf_counter()
    with _rules(rules):
        metrics = run_dhspg(model, options, log=lambda line: print(f"[{out.name}] {line}",
                                                                   flush=True))
    metrics["driver_wall_s"] = time.perf_counter() - started
    return metrics


def _summary(metrics: dict[str, Any]) -> dict[str, Any]:
    """A run's row: slim top-1 and size, wall time, and when it switched to the slim network
    (``slim_from_epoch``, 1-based; None: never) with its mean epoch seconds before and after."""
    slim = metrics.get("slim_continuation") or {}
    return {"top1": round(100 * metrics["accuracy"]["slim"], 2),
            "macs_pct": round(100 * metrics["macs"]["slim_over_input"], 2),
            "params_pct": round(100 * metrics["params"]["slim_over_input"], 2),
            "group_sparsity": round(metrics["group_sparsity"], 4),
            "target_reached": metrics.get("target_reached"),
            "slim_from_epoch": slim.get("switch_epoch"),
            "epoch_seconds": {kind: None if v is None else round(v, 1)
                              for kind, v in (slim.get("epoch_seconds") or {}).items()},
            "train_s": round(metrics["train_seconds"], 1),
            "warmup_epoch_s": _first_epoch_seconds(metrics),
            "wall_s": round(metrics.get("driver_wall_s", metrics["wall_seconds"]), 1)}


def _first_epoch_seconds(metrics: dict[str, Any]) -> float | None:
    """Seconds of the first epoch: warm-up in every run, the same work for any rules or target
    (a control for how loaded the machine was during each run)."""
    history = metrics.get("history") or [{}]
    seconds = history[0].get("epoch_seconds")
    return None if seconds is None else round(seconds, 1)


def _history(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """Per epoch: test accuracy (torch), group sparsity, redundant groups not yet zero,
    seconds, and whether the epoch trained the slim network."""
    keys = ("epoch", "test_accuracy", "group_sparsity", "redundant_live", "epoch_seconds",
            "slim")
    return [{key: record.get(key) for key in keys} for record in metrics["history"]]


def _export(folder: Path, seed: int) -> Path:
    from models.export import export_onnx
    from models.zoo import ZOO, build

    path = folder / f"demonet_seed{seed}.onnx"
    if not path.is_file():
        export_onnx(build("demonet", seed=seed), ZOO["demonet"].input_shape, path)
    return path


def budget(args: argparse.Namespace) -> dict[str, Any]:
    from trainers.train.prepare import resolve_device

    return {"data": DATA, "limit_train": args.limit_train, "limit_test": args.limit_test,
            "epochs": args.epochs, "warmup_epochs": args.warmup_epochs,
            "batch_size": args.batch_size, "variant": args.variant, "lr": args.lr,
            "lr_schedule": "cosine", "epsilon": args.epsilon, "target": args.target,
            "threads": args.threads, "test_each_epoch": not args.test_last_only,
            "device": resolve_device(args.device).type}


def seeds(args: argparse.Namespace) -> dict[str, Any]:
    """Baseline and official DHSPG per seed; the drop's mean and between-seed SD."""
    rows = {}
    for seed in args.seeds:
        model = _export(args.out, seed)
        base = _summary(_run(model, args, seed, 0.0, args.out / f"seed{seed}_baseline", {}))
        run = _summary(_run(model, args, seed, args.target, args.out / f"seed{seed}_dhspg", {}))
        rows[str(seed)] = {"baseline_top1": base["top1"], "dhspg_top1": run["top1"],
                           "drop": round(base["top1"] - run["top1"], 2),
                           "macs_pct": run["macs_pct"], "params_pct": run["params_pct"],
                           "group_sparsity": run["group_sparsity"],
                           "target_reached": run["target_reached"],
                           "slim_from_epoch": run["slim_from_epoch"],
                           "wall_s": {"baseline": base["wall_s"], "dhspg": run["wall_s"]},
                           "wall_ratio": round(run["wall_s"] / base["wall_s"], 3)}
    drops = [r["drop"] for r in rows.values()]
    return {"budget": budget(args), "seeds": rows, "mean_drop": round(statistics.mean(drops), 3),
            "sd_drop": round(statistics.stdev(drops), 3) if len(drops) > 1 else None}


def ab(args: argparse.Namespace) -> dict[str, Any]:
    """Each rule set of ``RULES`` on the first seed, against one baseline, with each run's
    wall time over the baseline's. The official run goes first: whether it reaches the target
    on this budget is the first thing to know (a run that does not is worth no other)."""
    seed = args.seeds[0]
    model = _export(args.out, seed)
    order = ["official", "baseline", *(name for name in RULES if name != "official")]
    metrics = {name: _run(model, args, seed, 0.0 if name == "baseline" else args.target,
                          args.out / f"seed{seed}_{name}", RULES.get(name, {}))
               for name in order}
    base = _summary(metrics["baseline"])
    runs = {name: _summary(metrics[name]) for name in RULES}
    for row in runs.values():
        row["wall_ratio"] = round(row["wall_s"] / base["wall_s"], 3)
    official = runs["official"]["wall_ratio"]
    return {"budget": budget(args), "seed": seed, "baseline": base, "runs": runs,
            "rules": RULES, "goal_wall_ratio": GOAL_WALL_RATIO,
            "official_wall_ratio": official, "wall_goal_met": official <= GOAL_WALL_RATIO,
            "history": {name: _history(m) for name, m in metrics.items()}}


def _markdown(payload: dict[str, Any]) -> str:
    text = "Budget: " + ", ".join(f"{k} {v}" for k, v in payload["budget"].items())
    if "runs" in payload:
        base = payload["baseline"]
        rows = [["baseline (target 0)", base["top1"], "", base["macs_pct"], base["params_pct"],
                 base["group_sparsity"], "", "", base["warmup_epoch_s"], base["wall_s"], 1.0]]
        rows += [[name, r["top1"], round(base["top1"] - r["top1"], 2), r["macs_pct"],
                  r["params_pct"], r["group_sparsity"], "yes" if r["target_reached"] else "no",
                  r["slim_from_epoch"] or "never", r["warmup_epoch_s"], r["wall_s"],
                  r["wall_ratio"]]
                 for name, r in payload["runs"].items()]
        headers = ["rules", "top-1 %", "drop", "MACs %", "params %", "group sparsity",
                   "target reached", "slim from epoch", "warm-up epoch s", "wall s",
                   "wall / baseline"]
        official = payload["runs"]["official"]
        slim = (f"slim from epoch {official['slim_from_epoch']}" if official["slim_from_epoch"]
                else "no slim continuation: the target was not reached")
        verdict = "meets" if payload["wall_goal_met"] else "misses"
        return (f"DemoNet (OTOv2) A/B, seed {payload['seed']}. {text}\n\n"
                + markdown_table(headers, rows)
                + f"\n\nOfficial DHSPG wall / baseline wall: {payload['official_wall_ratio']} "
                f"({slim}; {verdict} the goal <= {payload['goal_wall_ratio']}x). The warm-up "
                f"epoch is the same work in every run: its seconds show how loaded the shared "
                f"machine was during each.")
    rows = [[seed, r["baseline_top1"], r["dhspg_top1"], r["drop"], r["macs_pct"],
             r["params_pct"], r["group_sparsity"], r.get("slim_from_epoch") or "never",
             r["wall_s"]["baseline"], r["wall_s"]["dhspg"], r.get("wall_ratio", "")]
            for seed, r in payload["seeds"].items()]
    headers = ["seed", "baseline top-1 %", "DHSPG top-1 %", "drop", "MACs %", "params %",
               "group sparsity", "slim from epoch", "baseline wall s", "DHSPG wall s",
               "wall / baseline"]
    return (f"DemoNet (OTOv2), official DHSPG. {text}\n\n" + markdown_table(headers, rows)
            + f"\n\nmean drop {payload['mean_drop']}, between-seed SD {payload['sd_drop']}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--ab", action="store_true", help="official vs old rules, first seed")
    parser.add_argument("--limit-train", type=int, default=24000)
    parser.add_argument("--limit-test", type=int, default=5000)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--warmup-epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--variant", choices=["sgd", "adam"], default="adam")
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--epsilon", type=float, default=0.9)
    parser.add_argument("--target", type=float, default=0.6)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch and onnxruntime threads (default: torch's)")
    parser.add_argument("--device", default="auto",
                        help="auto (CUDA when torch sees one), cpu or cuda: the full budget is "
                             "several CPU-hours a run")
    parser.add_argument("--quiet", action="store_true", help="no per-epoch log lines")
    parser.add_argument("--test-last-only", action="store_true",
                        help="torch test accuracy after the last epoch only (not each epoch)")
    parser.add_argument("--out", type=Path, default=Path("out/demonet_official"))
    parser.add_argument("--results-name", default=None,
                        help="results stem (default demonet_official, or demonet_ab with --ab)")
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = _parser().parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    payload = ab(args) if args.ab else seeds(args)
    stem = args.results_name or ("demonet_ab" if args.ab else "demonet_official")
    markdown = _markdown(payload)
    write_results(stem, payload, markdown)
    print(markdown)
    return payload


if __name__ == "__main__":
    main()
