"""Export zoo models to ONNX with torch's legacy (TorchScript) and dynamo exporters.

The legacy export keeps BatchNorm unfolded and initializer names equal to state_dict names, so a
partition can be checked against the torch model by name. The dynamo export is what users get by
default from recent torch; the partitioner must cope with both.

Usage: ``python -m models.export --all --out DIR [--exporter legacy|dynamo|both] [--seed S]``
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import onnx
import torch
from torch import nn

from models.zoo import ZOO, build

__all__ = ["EXPORTERS", "export_onnx", "export_zoo", "main"]

EXPORTERS = ("legacy", "dynamo")
LEGACY_OPSET = 17


def _example_input(input_shape: Sequence[int], seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(tuple(input_shape), generator=g)


def _drop_initializer_inputs(model: onnx.ModelProto) -> None:
    """Keep initializers as initializers only: the graph's single input is then ``input``."""
    names = {t.name for t in model.graph.initializer}
    kept = [i for i in model.graph.input if i.name not in names]
    del model.graph.input[:]
    model.graph.input.extend(kept)


@contextlib.contextmanager
def _quiet():
    """Silence the exporters' console chatter (progress lines, deprecation warnings)."""
    onnx_logger = logging.getLogger("torch.onnx")
    level = onnx_logger.level
    onnx_logger.setLevel(logging.ERROR)
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        onnx_logger.setLevel(level)


def _export_legacy(model: nn.Module, x: torch.Tensor, tmp: Path, opset: int,
                   dynamic_batch: bool = False) -> onnx.ModelProto:
    with _quiet():
        torch.onnx.export(
            model,
            (x,),
            str(tmp),
            dynamo=False,
            do_constant_folding=False,
            keep_initializers_as_inputs=True,
            input_names=["input"],
            output_names=["output"],
            opset_version=opset,
            dynamic_axes={"input": {0: "batch"}} if dynamic_batch else None,
        )
    proto = onnx.load(str(tmp))
    _drop_initializer_inputs(proto)
    return proto


def _export_dynamo(
    model: nn.Module, x: torch.Tensor, tmp: Path, opset: int | None, dynamic_batch: bool = False,
    optimize: bool = True,
) -> onnx.ModelProto:
    batch = torch.export.Dim("batch", min=1, max=1024) if dynamic_batch else None
    with _quiet():
        program = torch.onnx.export(
            model,
            (x,),
            dynamo=True,
            optimize=optimize,
            opset_version=opset,
            dynamic_shapes=({0: batch},) if dynamic_batch else None,
            input_names=["input"],
            output_names=["output"],
            external_data=False,
            verbose=False,
        )
        program.save(str(tmp), external_data=False)
    # load_external_data also pulls in any sidecar file, so the re-save below is self-contained
    return onnx.load(str(tmp), load_external_data=True)


def export_onnx(
    model: nn.Module,
    input_shape: Sequence[int],
    path: str | os.PathLike,
    *,
    dynamo: bool = False,
    opset: int | None = None,
    seed: int = 0,
    dynamic_batch: bool = False,
    optimize: bool = True,
) -> Path:
    """Export ``model`` (put in eval mode) for a seeded input of ``input_shape`` to ``path``.

    Legacy (default): opset 17 unless ``opset`` is given, no constant folding, initializers named
    as in the state_dict, graph input ``input`` only. Dynamo: opset chosen by torch unless given;
    BatchNorm may be folded and names differ. ``dynamic_batch`` makes the input's first dim
    symbolic ("batch"), as deployment exports usually do. ``optimize=False`` keeps the dynamo
    graph as it is before torch's ONNX optimizer (computed Conv biases, Shape arithmetic). The
    file is self-contained (weights inline) and written atomically (temp file in the same
    folder, then rename). Returns the path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.eval()
    x = _example_input(input_shape, seed)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".export-") as work:
        tmp = Path(work) / "model.onnx"
        with torch.no_grad():
            if dynamo:
                proto = _export_dynamo(model, x, tmp, opset, dynamic_batch, optimize)
            else:
                proto = _export_legacy(model, x, tmp, opset or LEGACY_OPSET, dynamic_batch)
        final_tmp = Path(work) / "final.onnx"
        onnx.save_model(proto, str(final_tmp), save_as_external_data=False)
        os.replace(final_tmp, path)
    return path


def export_zoo(
    out_dir: str | os.PathLike,
    names: Iterable[str] | None = None,
    *,
    exporters: Sequence[str] = EXPORTERS,
    seed: int = 0,
) -> list[Path]:
    """Write ``{name}.onnx`` (legacy) and ``{name}.dynamo.onnx`` (dynamo) for each zoo model.

    Defaults to every zoo model, both exporters, seed 0. Returns the paths written, in order.
    """
    unknown = [e for e in exporters if e not in EXPORTERS]
    if unknown:
        raise ValueError(f"unknown exporter(s) {unknown}; choose from {EXPORTERS}")
    out = Path(out_dir)
    written = []
    for name in list(names) if names is not None else list(ZOO):
        model = build(name, seed)
        shape = ZOO[name].input_shape
        for exporter in exporters:
            suffix = ".onnx" if exporter == "legacy" else ".dynamo.onnx"
            written.append(
                export_onnx(model, shape, out / f"{name}{suffix}", dynamo=exporter == "dynamo")
            )
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; prints one line per file written."""
    parser = argparse.ArgumentParser(
        prog="python -m models.export",
        description="Export zoo models to ONNX. Example: python -m models.export --all --out zoo",
    )
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--all", action="store_true", help="export every zoo model")
    which.add_argument(
        "--only",
        action="append",
        metavar="NAME",
        choices=list(ZOO),
        help="export this model (repeatable)",
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--exporter", choices=("legacy", "dynamo", "both"), default="both")
    parser.add_argument("--seed", type=int, default=0, help="weights seed (default 0)")
    args = parser.parse_args(argv)
    exporters = EXPORTERS if args.exporter == "both" else (args.exporter,)
    names = list(ZOO) if args.all else args.only
    for name in names:
        for path in export_zoo(args.out, [name], exporters=exporters, seed=args.seed):
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
