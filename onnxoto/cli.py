"""The `onnxoto` command: thin click commands over the Python API.

Exit codes: 0 ok, 1 validation mismatch, 2 bad input or usage (one line on stderr).
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import click

from onnxoto.errors import OnnxotoError

EXIT_MISMATCH = 1
EXIT_BAD_INPUT = 2


def friendly_errors(command):
    """Turn OnnxotoError into one stderr line and exit 2; ``--debug`` shows the traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        ctx = click.get_current_context()
        try:
            return command(*args, **kwargs)
        except OnnxotoError as exc:
            if ctx.find_root().params.get("debug"):
                raise
            click.echo(f"onnxoto {ctx.info_name}: error: {exc}", err=True)
            ctx.exit(EXIT_BAD_INPUT)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.version_option(package_name="onnxoto")
def main(debug: bool) -> None:
    """onnxoto: find zero-invariant channel groups in an ONNX graph, prune them, and write a
    smaller ONNX that computes the same function."""


@main.command("partition")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path),
              help="Write partition.json here.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--explain", "explain_name", metavar="NAME",
              help="Explain the group(s) of a node or initializer.")
@friendly_errors
def partition_command(model: Path, output: Path | None, as_json: bool,
                      explain_name: str | None) -> None:
    """Split MODEL's parameters into zero-invariant groups (ZIGs).

    \b
    Example:
      onnxoto partition resnet.onnx -o partition.json
      onnxoto partition resnet.onnx --explain layer1.0.conv1.weight
    """
    from onnxoto.partition import explain, partition
    from onnxoto.report import render_partition

    result = partition(model)
    if output is not None:
        if output.resolve() == model.resolve():
            raise OnnxotoError(f"'{output}': refusing to overwrite the input model")
        result.save(output)
    if explain_name:
        click.echo(explain(result, explain_name))
        return
    if as_json:
        click.echo(json.dumps(result.summary, indent=1))
    else:
        click.echo(render_partition(result))
    if output is not None and not as_json:
        click.echo(f"wrote {output}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
