"""DemoNet results of several seeds side by side: the drop of each DHSPG target per seed, and its
mean over seeds with the spread between them.

One seed's drop carries a test-set error, but seeds also differ in initialization and data
order, and between seeds the drop varies more than that error: only the mean over seeds says
whether the 0.2-point goal holds.

    python benchmarks/demonet_seeds.py otov2_demonet_24k_lr5_warmup0 \
        otov2_demonet_24k_lr5_warmup0_seed1 [...] [--results-name NAME] [--no-write]

Each name is a results stem written by otov2_demonet.py (or a path to its .json). The files must
share every option but the seed, the targets, the extra control runs and where they were written.
Where a seed ran --scratch-controls, the table also gives the drop of the same widths trained
from scratch: what the architecture costs, the rest of a DHSPG drop being what its path costs.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS, markdown_table, write_results  # noqa: E402
from benchmarks.otov2_demonet import GOAL, _meets  # noqa: E402

# Options that may differ between the files of one comparison (the controls add runs; they do
# not change the DHSPG runs compared).
PER_FILE = {"seed", "targets", "out", "reuse", "resume", "results_name", "no_write",
            "scratch_controls", "architectures"}


class SeedsError(ValueError):
    """Files that cannot be compared; the message names the file and what to do."""


def load(name: str) -> dict[str, Any]:
    """A benchmark payload from a results stem or a .json path."""
    path = Path(name) if name.endswith(".json") else RESULTS / f"{name}.json"
    if not path.is_file():
        raise SeedsError(f"'{path}': no such results file; run benchmarks/otov2_demonet.py first")
    return json.loads(path.read_text())


def check_same_budget(payloads: list[dict[str, Any]]) -> None:
    """Refuse files whose runs differ in anything but the seed and the targets."""
    first = {k: v for k, v in payloads[0]["args"].items() if k not in PER_FILE}
    seeds = [p["args"]["seed"] for p in payloads]
    if len(set(seeds)) != len(seeds):
        raise SeedsError(f"seeds {seeds} repeat: give one results file per seed")
    for payload in payloads[1:]:
        other = {k: v for k, v in payload["args"].items() if k not in PER_FILE}
        differ = sorted(k for k in first.keys() | other.keys() if first.get(k) != other.get(k))
        if differ:
            raise SeedsError(f"'{payload['args']['results_name']}' differs from "
                             f"'{payloads[0]['args']['results_name']}' in {', '.join(differ)}: "
                             f"compare runs of one budget")


def summarize(payloads: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per DHSPG run name (e.g. 'dhspg 0.58'): the drop, MACs % and params % of each seed that
    ran it, their means, the standard deviation of the drop between seeds and the goal on the
    means. The spread needs two seeds or more (None otherwise)."""
    by_run: dict[str, dict[int, dict[str, Any]]] = {}
    scratch: dict[str, dict[int, float]] = {}
    for payload in payloads:
        seed = payload["args"]["seed"]
        for row in payload["rows"][1:]:  # rows[0] is the seed's own baseline
            by_run.setdefault(row["run"], {})[seed] = row
        for run, row in _scratch_controls(payload).items():
            scratch.setdefault(run, {})[seed] = row["drop_points"]
    summary = []
    for run, rows in by_run.items():
        drops = [r["drop_points"] for r in rows.values()]
        controls = dict(sorted(scratch.get(run, {}).items()))
        mean = {key: statistics.fmean(r[key] for r in rows.values())
                for key in ("drop_points", "macs_pct", "params_pct")}
        spread = statistics.stdev(drops) if len(drops) > 1 else None
        summary.append({
            "run": run,
            "seeds": sorted(rows),
            "drop_points": {seed: r["drop_points"] for seed, r in sorted(rows.items())},
            "mean_drop_points": mean["drop_points"],
            "drop_sd_between_seeds": spread,
            "mean_drop_se": spread / math.sqrt(len(drops)) if spread is not None else None,
            "mean_macs_pct": mean["macs_pct"],
            "mean_params_pct": mean["params_pct"],
            "meets_goal_on_means": _meets(mean)["all"],
            "scratch_drop_points": controls,
            "mean_scratch_drop_points": (statistics.fmean(controls.values()) if controls
                                         else None),
        })
    return sorted(summary, key=lambda s: s["run"])


def _scratch_controls(payload: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """DHSPG run name -> the row of its widths trained from scratch (--scratch-controls)."""
    marker = " architecture "
    return {row["run"].split(marker)[0]: row for row in payload.get("scratch_control_rows", [])
            if row["run"].startswith("dhspg ") and marker in row["run"]}


def _markdown(payloads: list[dict[str, Any]], summary: list[dict[str, Any]]) -> str:
    baselines = ", ".join(f"seed {p['args']['seed']} {p['rows'][0]['top1']:.2f} %"
                          for p in payloads)
    headers = ["run", "drop per seed (points)", "mean drop ± SE", "SD between seeds",
               "mean MACs %", "mean params %", "meets goal on the means",
               "same widths from scratch: drop per seed (mean)"]
    table = [[s["run"],
              ", ".join(f"{seed}: {d:+.2f}" for seed, d in s["drop_points"].items()),
              f"{s['mean_drop_points']:+.2f}" + (f" ± {s['mean_drop_se']:.2f}"
                                                  if s["mean_drop_se"] is not None else ""),
              "-" if s["drop_sd_between_seeds"] is None else f"{s['drop_sd_between_seeds']:.2f}",
              f"{s['mean_macs_pct']:.1f}", f"{s['mean_params_pct']:.1f}",
              ("**yes**" if s["meets_goal_on_means"] else "no") + (
                  "" if len(s["seeds"]) > 1 else " (one seed)"),
              _per_seed(s["scratch_drop_points"], s["mean_scratch_drop_points"])]
             for s in summary]
    return (f"DemoNet over seeds: {payloads[0]['budget']}. Each seed has its own baseline "
            f"({baselines}); a drop is against its seed's baseline. Goal: <= "
            f"{GOAL['macs_pct_max']}% MACs, <= {GOAL['params_pct_max']}% params, drop <= "
            f"{GOAL['drop_points_max']} points.\n\n" + markdown_table(headers, table))


def _per_seed(drops: dict[int, float], mean: float | None) -> str:
    if not drops:
        return "-"
    return ", ".join(f"{seed}: {d:+.2f}" for seed, d in drops.items()) + f" ({mean:+.2f})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", help="results stems (or .json paths), one a seed")
    parser.add_argument("--results-name", default="otov2_demonet_seeds")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    try:
        payloads = sorted((load(name) for name in args.results), key=lambda p: p["args"]["seed"])
        check_same_budget(payloads)
    except SeedsError as error:
        print(f"demonet_seeds: error: {error}", file=sys.stderr)
        return 2
    summary = summarize(payloads)
    markdown = _markdown(payloads, summary)
    print(markdown)
    if not args.no_write:
        write_results(args.results_name, {"sources": args.results, "goal": GOAL,
                                          "summary": summary}, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
