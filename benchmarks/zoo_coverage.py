"""The removable-MACs ceiling of every zoo model under five exports: ours (legacy, no constant
folding, initializers as inputs; and dynamo), what a user gets from ``torch.onnx.export`` with
its defaults (legacy, constant folding on), and both exporters with a dynamic batch.

The ceiling is the share of MACs gone if every prunable group kept one channel
(``partition(...).summary``); MACs are per sample. A partition that follows every exporter's
spelling gives each model one figure in every column.

    python benchmarks/zoo_coverage.py [--models resnest bert ...]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import machine, markdown_table, write_results  # noqa: E402

EXPORTS = ("legacy", "dynamo", "legacy, torch defaults", "legacy, dynamic batch",
           "dynamo, dynamic batch")


def export(name: str, how: str, path: Path) -> Path:
    """``name`` exported ``how`` (one of EXPORTS) to ``path``."""
    import torch

    from models.export import export_onnx
    from models.zoo import ZOO, build

    shape = ZOO[name].input_shape
    if how != "legacy, torch defaults":
        return export_onnx(build(name, seed=0), shape, path, dynamo=how.startswith("dynamo"),
                           dynamic_batch=how.endswith("dynamic batch"))
    model = build(name, seed=0).eval()
    example = torch.randn(*shape) if name != "bert" else torch.randint(0, 10, tuple(shape))
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), str(path), dynamo=False, input_names=["input"])
    return path


def main(argv: list[str] | None = None) -> int:
    from models.zoo import ZOO
    from onnxoto.partition import partition

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(ZOO))
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            row = {"model": name}
            for index, how in enumerate(EXPORTS):
                summary = partition(export(name, how, Path(tmp) / f"{name}.{index}.onnx")).summary
                row[how] = {"share": summary["removable_macs_share"], "macs": summary["macs"]}
            rows.append(row)
            print(name, *(f"{row[how]['share']:.1%}" for how in EXPORTS), flush=True)
    table = [[r["model"], f"{r[EXPORTS[0]]['macs']:,}"]
             + [f"{100 * r[how]['share']:.1f} %" for how in EXPORTS] for r in rows]
    markdown = ("Removable-MACs ceiling (every prunable group keeps one channel) of each zoo model "
                "per export; MACs per sample. Made by `python benchmarks/zoo_coverage.py`.\n\n"
                + markdown_table(["model", "MACs", *EXPORTS], table))
    print(markdown)
    out = write_results("zoo_coverage", {"machine": machine(), "rows": rows}, markdown)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
