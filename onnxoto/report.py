"""Human-readable renderings of results: data in, text out (the CLI prints these)."""

from __future__ import annotations

from onnxoto.metrics import Percent, render_table
from onnxoto.partition import Partition


def render_partition(result: Partition) -> str:
    """Summary table, the prunable groups by size, and the top reasons for the rest."""
    s = result.summary
    rows = [
        ("groups", s["groups"]),
        ("prunable groups", s["prunable"]),
        ("channels (all groups)", s["channels"]),
        ("channels (prunable)", s["prunable_channels"]),
        ("parameters", s["params"]),
        ("parameters in prunable groups", s["params_in_groups"]),
        ("share in prunable groups", Percent(s["params_in_groups_share"])),
    ]
    text = [render_table(rows, ("partition", "value"))]
    if s["top_reasons"]:
        text.append("")
        text.append(render_table([(r["reason"], r["groups"]) for r in s["top_reasons"]],
                                 ("why not prunable (top reasons)", "groups")))
    return "\n".join(text)
