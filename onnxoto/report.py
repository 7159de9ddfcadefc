"""Human-readable renderings of results: data in, text out (the CLI prints these)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from onnxoto.files import Written
from onnxoto.metrics import (
    Latency,
    ModelMetrics,
    Percent,
    Row,
    compare_latency,
    compare_metrics,
    measure,
    measure_latency,
    render_table,
)
from onnxoto.partition import Partition
from onnxoto.shrink import ShrinkResult
from onnxoto.validate import describe_tolerances


def render_partition(result: Partition) -> str:
    """Summary table (with the removable-MACs ceiling), the reasons for the rest by kind, and
    the top reasons in full."""
    s = result.summary
    rows = [
        ("groups", s["groups"]),
        ("prunable groups", s["prunable"]),
        ("channels (all groups)", s["channels"]),
        ("channels (prunable)", s["prunable_channels"]),
        ("parameters", s["params"]),
        ("parameters in prunable groups", s["params_in_groups"]),
        ("share in prunable groups", Percent(s["params_in_groups_share"])),
        ("MACs", s["macs"]),
        ("removable MACs (ceiling: each group keeps 1)", Percent(s["removable_macs_share"])),
    ]
    text = [render_table(rows, ("partition", "value"))]
    if s["reasons_by_kind"]:
        text.append("")
        text.append(render_table([(r["kind"], r["groups"], r["channels"])
                                  for r in s["reasons_by_kind"]],
                                 ("why not prunable (by kind)", "groups", "channels")))
    if s["top_reasons"]:
        text.append("")
        text.append(render_table([(r["reason"], r["groups"]) for r in s["top_reasons"]],
                                 ("why not prunable (top reasons)", "groups")))
    return "\n".join(text)


def shrink_report(outcome: ShrinkResult, before: ModelMetrics, after: ModelMetrics, *,
                  written: Written | None = None, masks_file: str | None = None) -> dict:
    """Everything `onnxoto shrink` tells, as data (the --json output).

    ``written`` describes the file as this run wrote it (size and sha256 measured before its
    rename): another run may have replaced the path by the time this is printed.
    ``masks_file`` names where the masks actually applied were saved (``--round-to``).
    """
    return {
        "metrics": [row.to_dict() for row in compare_metrics(before, after)],
        "op_counts": _op_rows(before.op_counts, after.op_counts),
        "changes": [asdict(change) for change in outcome.changes],
        "validation": None if outcome.comparison is None else outcome.comparison.to_dict(),
        "output": None if written is None else written.to_dict(),
        "masks_file": masks_file,
    }


def _op_rows(before: dict[str, int], after: dict[str, int]) -> list[dict]:
    ops = sorted(set(before) | set(after))
    return [{"op": op, "before": before.get(op, 0), "after": after.get(op, 0)} for op in ops]


def render_shrink(report: dict) -> str:
    """The before/after table, changed layers, the validation verdict and what was written."""
    rows = [Row(**r) for r in report["metrics"]]
    text = [render_table(rows)]
    changed_ops = [(r["op"], r["before"], r["after"]) for r in report["op_counts"]
                   if r["before"] != r["after"]]
    if changed_ops:
        text += ["", render_table(changed_ops, ("op count", "before", "after"))]
    if report["changes"]:
        text += ["", render_table([(c["layer"], c["before"], c["after"])
                                   for c in report["changes"]],
                                  ("channels of changed layers", "before", "after"))]
    validation = report["validation"]
    if validation is None:
        text += ["", "validation: skipped (--no-validate)"]
    else:
        verdict = "PASSED" if validation["passed"] else "FAILED"
        worst = max((float("inf") if o["max_abs"] is None else o["max_abs"]
                     for o in validation["outputs"]), default=0.0)
        text += ["", f"validation: {verdict} ({validation['samples']} seeded samples, max abs "
                     f"diff {worst:.3g}; {describe_tolerances(validation['outputs'])})"]
    if not report["changes"]:
        text += ["nothing removed: no channel of a prunable group was masked (or all zero); the "
                 "output computes the same function with the same channels"]
    output = report.get("output")
    if output:
        size = output["bytes"] + output["data_bytes"]
        data = f", weights in {Path(output['files'][1]).name}" if len(output["files"]) > 1 else ""
        text += [f"wrote {output['path']} ({size:,} bytes{data}; sha256 {output['sha256'][:16]})"]
    if report.get("masks_file"):
        text += [f"wrote {report['masks_file']}: the masks actually applied (after --round-to); "
                 f"validate with --mask {report['masks_file']}"]
    return "\n".join(text)


def compare_report(model, slim=None, *, latency: bool = False, runs: int = 50,
                   warmup: int = 5, dynamic_dim: int = 1, shapes=None, provider: str = "cpu",
                   threads: int = 0) -> dict:
    """Metrics of one model, or of two side by side with ratios (and latency if asked: on
    ``provider`` with ``threads`` (0: onnxruntime's default), inputs with dynamic dims
    ``dynamic_dim`` or the ``shapes`` given by input name)."""
    before = measure(model)
    data: dict = {"model": str(model), "metrics": before.to_dict()}
    timing = {"runs": runs, "warmup": warmup, "dynamic_dim": dynamic_dim, "shapes": shapes,
              "provider": provider, "threads": threads}
    if latency:
        data["latency"] = measure_latency(model, **timing).to_dict()
    if slim is None:
        return data
    after = measure(slim)
    data.update(slim=str(slim), slim_metrics=after.to_dict(),
                rows=[row.to_dict() for row in compare_metrics(before, after)])
    if latency:
        slim_latency = measure_latency(slim, **timing)
        data["slim_latency"] = slim_latency.to_dict()
        full_ms, slim_ms = data["latency"]["median_ms"], slim_latency.median_ms
        data["speedup"] = full_ms / slim_ms if slim_ms else None
        data["rows"] += [row.to_dict() for row in compare_latency(
            Latency(**data["latency"]), slim_latency)]
    return data


def render_compare(data: dict) -> str:
    if "rows" not in data:
        m = data["metrics"]
        rows = [("params", m["params"]), ("param bytes", m["param_bytes"]),
                ("file bytes", m["file_bytes"]), ("MACs", m["macs"]),
                ("FLOPs (2 x MACs)", m["flops"]), ("nodes", sum(m["op_counts"].values()))]
        if "latency" in data:
            lat = data["latency"]
            rows += [("median ms", lat["median_ms"]), ("p90 ms", lat["p90_ms"])]
        return render_table(rows, ("metric", Path(data["model"]).name)) + _timed(data)
    text = render_table([Row(**r) for r in data["rows"]])
    if data.get("speedup"):
        text += f"\nspeed-up (median): {data['speedup']:.2f}x"
    return text + _timed(data)


def _timed(data: dict) -> str:
    """The line that says what the latency rows measured (empty without --latency)."""
    if "latency" not in data:
        return ""
    return f"\nlatency: {Latency(**data['latency']).describe()}"
