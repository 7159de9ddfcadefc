"""The `onnxoto` command: thin click commands over the Python API.

Exit codes: 0 ok, 1 validation mismatch, 2 bad input or usage (one line on stderr). The
trainers' commands (``onnxoto train ...`` = ``python -m trainers ...``) use the same wrapper and
codes; they are imported only when used, so the other commands never load torch.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import click

from onnxoto.errors import MismatchError, OnnxotoError, one_line

EXIT_MISMATCH = 1
EXIT_BAD_INPUT = 2


def _parse_input_shapes(ctx, param, values: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for value in values:
        name, sep, dims = value.rpartition(":")
        try:
            shape = tuple(int(d) for d in dims.lower().split("x"))
        except ValueError:
            shape = ()
        if not sep or not name or not shape or min(shape) < 1:
            raise click.BadParameter(f"'{value}': expected NAME:DIMS such as x:1x3x224x224")
        shapes[name] = shape
    return shapes


input_shape_option = click.option(
    "--input-shape", "input_shapes", multiple=True, callback=_parse_input_shapes,
    metavar="NAME:DIMS", help="Shape of a model input for the random data, e.g. x:1x3x224x224 "
    "(repeatable; default: the declared shape, dynamic dims --dynamic-dim).")
dynamic_dim_option = click.option(
    "--dynamic-dim", type=click.IntRange(min=1), default=1, show_default=True,
    help="Size given to dynamic (symbolic) input dims.")
rtol_option = click.option("--rtol", type=click.FloatRange(min=0), default=None,
                           help="Relative tolerance (default: per output dtype, float32 1e-4).")
atol_option = click.option("--atol", type=click.FloatRange(min=0), default=None,
                           help="Absolute tolerance (default: per output dtype, float32 1e-5).")
samples_option = click.option("--samples", type=click.IntRange(min=1), default=3,
                              show_default=True, help="Random inputs the models are compared on.")
seed_option = click.option("--seed", type=int, default=0, show_default=True,
                           help="Seed of the random inputs (same seed, same inputs).")


def comparison_options(command):
    """The options of every command that runs two models on the same random inputs, declared
    once: --samples --seed --rtol --atol --dynamic-dim --input-shape."""
    for option in reversed((samples_option, seed_option, rtol_option, atol_option,
                            dynamic_dim_option, input_shape_option)):
        command = option(command)
    return command


provider_option = click.option(
    "--provider", default="cpu", show_default=True, metavar="NAME",
    help="onnxruntime execution provider: cpu, cuda, tensorrt (or its onnxruntime name); "
         "refused in one line when this onnxruntime cannot start it.")


def deployment_options(command):
    """How `validate` checks a model for deployment: --provider --data --check."""
    command = click.option(
        "--check", type=click.Choice(["scale", "elementwise"]), default="scale",
        show_default=True, help="scale: |slim - ref| <= atol + rtol * max|ref| per output; "
        "elementwise: <= atol + rtol * |ref| for every element (counts the elements over).")(
        command)
    command = click.option(
        "--data", "data_path", type=click.Path(path_type=Path), metavar="INPUTS.npz",
        help="Real inputs (keys = input names) as the one sample, instead of random ones.")(
        command)
    return provider_option(command)


def friendly_errors(command):
    """Turn OnnxotoError into one stderr line that starts with the command's path, and exit 2
    (1 for a MismatchError); ``--debug`` on the command or a group above it shows the traceback.
    Both CLIs wrap their commands in this, so their errors read and exit alike."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        ctx = click.get_current_context()
        try:
            return command(*args, **kwargs)
        except OnnxotoError as exc:
            if any(c.params.get("debug") for c in _context_chain(ctx)):
                raise
            click.echo(f"{ctx.command_path}: error: {one_line(exc)}", err=True)
            ctx.exit(EXIT_MISMATCH if isinstance(exc, MismatchError) else EXIT_BAD_INPUT)

    return wrapper


def _context_chain(ctx: click.Context | None):
    while ctx is not None:
        yield ctx
        ctx = ctx.parent


class OneLineErrors(click.Group):
    """Usage errors (a missing option, a bad value) as one stderr line and exit 2, like every
    other bad input; click's default prints usage, a hint and the error on three lines."""

    def main(self, *args, standalone_mode: bool = True, **kwargs):
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except click.exceptions.NoArgsIsHelpError as exc:  # a bare group shows its help
            exc.show()
            sys.exit(exc.exit_code)
        except click.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx is not None else "onnxoto"
            click.echo(f"{where}: error: {one_line(exc.format_message())} (see --help)",
                       err=True)
            sys.exit(EXIT_BAD_INPUT)
        except click.ClickException as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


@click.group("onnxoto", cls=OneLineErrors,
             context_settings={"help_option_names": ["-h", "--help"]})
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
              help="Explain the group(s) of a node, initializer or tensor (suggests close "
                   "names when none matches).")
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

    if output is not None:
        _check_output([model], output)
    result = partition(model)
    if output is not None:
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


def _echo_json(data) -> None:
    click.echo(json.dumps(data, indent=1))


@main.command("mask")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--ratio", type=click.FloatRange(0.0, 1.0, max_open=True), required=True,
              help="Share of channels to remove in every prunable group.")
@click.option("--criterion", type=click.Choice(["l1", "l2"]), default="l2", show_default=True,
              help="Norm of the producer weights that ranks channels.")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="masks.npz to write.")
@click.option("--json", "as_json", is_flag=True, help="Print kept/total per group as JSON.")
@friendly_errors
def mask_command(model: Path, ratio: float, criterion: str, output: Path, as_json: bool) -> None:
    """One-shot magnitude masks: remove the RATIO smallest channels of every prunable group.

    \b
    Example:
      onnxoto mask resnet.onnx --ratio 0.5 -o masks.npz
    """
    from onnxoto.groups import save_masks
    from onnxoto.masking import magnitude_masks
    from onnxoto.partition import partition

    _check_output([model], output)
    result = partition(model)
    masks = magnitude_masks(result.model, result.groups, ratio=ratio, criterion=criterion)
    save_masks(output, masks, model_sha256=result.model_info["sha256"])
    rows = [{"group": gid, "kept": int(keep.sum()), "size": int(keep.size)}
            for gid, keep in sorted(masks.items())]
    if as_json:
        _echo_json({"masks": str(output), "groups": rows})
        return
    kept = sum(r["kept"] for r in rows)
    total = sum(r["size"] for r in rows)
    click.echo(f"wrote {output}: {len(rows)} groups masked, {kept:,} of {total:,} channels kept")


@main.command("shrink")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--mask", "mask_path", type=click.Path(path_type=Path),
              help="masks.npz (key g<id>, bool, True = keep).")
@click.option("--zeros", is_flag=True, help="Remove channels whose producers are all zero.")
@click.option("--tol", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="With --zeros: |w| <= tol counts as zero.")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="Slim model to write.")
@click.option("--round-to", type=click.IntRange(min=1), default=1, show_default=True,
              help="Keep channel counts at multiples of N (8 suits tensor cores); the masks "
                   "applied are written to OUTPUT.masks.npz.")
@click.option("--no-validate", is_flag=True, help="Skip the onnxruntime equivalence check.")
@comparison_options
@click.option("--external-data/--no-external-data", default=None,
              help="Store weights in OUTPUT.<token>.data (default: as the input, or when over "
                   "2 GB).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@friendly_errors
def shrink_command(model: Path, mask_path: Path | None, zeros: bool, tol: float, output: Path,
                   round_to: int, no_validate: bool, samples: int, seed: int, rtol: float | None,
                   atol: float | None, dynamic_dim: int, input_shapes: dict,
                   external_data: bool | None, as_json: bool) -> None:
    """Delete the masked channels of MODEL and write a smaller model that computes the same
    function; it is validated in onnxruntime against MODEL with those channels zeroed.

    \b
    Examples:
      onnxoto shrink model.onnx --mask masks.npz -o slim.onnx
      onnxoto shrink trained.onnx --zeros -o slim.onnx --round-to 8
    """
    from dataclasses import replace

    from onnxoto.files import save_model, uses_external_data
    from onnxoto.groups import load_masks, mask_file_sha, save_masks
    from onnxoto.masking import Zeroing, masks_from_zeros
    from onnxoto.metrics import measure
    from onnxoto.partition import partition
    from onnxoto.report import render_shrink, shrink_report
    from onnxoto.runtime import HandedOver, WithTensors
    from onnxoto.shrink import ShrinkOptions, compare_options, shrink
    from onnxoto.validate import compare

    if (mask_path is None) == (not zeros):
        raise OnnxotoError("give exactly one of --mask masks.npz or --zeros")
    masks_out = output.with_name(f"{output.name}.masks.npz") if round_to > 1 else None
    _check_output([model] + ([mask_path] if mask_path else []), output,
                  also=[masks_out] if masks_out else [])
    # Both read the file again: done before the model is held, not beside it.
    external = uses_external_data(model) if external_data is None else external_data
    before = measure(model)
    result = partition(model)  # its canonical model is what shrink slices: no second copy
    model_sha = result.model_info["sha256"]
    if zeros:
        masks = masks_from_zeros(result.model, result.groups, tol=tol)
    else:
        masks = load_masks(mask_path, result.groups, model_sha256=model_sha)
        recorded = mask_file_sha(mask_path)
        if recorded and recorded != model_sha:
            click.echo(f"warning: {mask_path} was made for another model file (sha256 "
                       f"{recorded[:12]}...); its groups fit this model's, using it", err=True)
    options = ShrinkOptions(round_to=round_to, validate=not no_validate, samples=samples,
                            seed=seed, rtol=rtol, atol=atol, dynamic_dim=dynamic_dim,
                            input_shapes=input_shapes or None)
    outcome = shrink(result.model, masks, options=replace(options, validate=False),
                     result=result)
    if options.validate:
        # The zeroed reference is written out and the partition (which holds the full model)
        # goes before onnxruntime maps it: the full model's bytes are held once, not twice.
        zeroed = WithTensors(result.model, Zeroing(result.groups, outcome.masks))
        with HandedOver(zeroed) as reference:
            del zeroed, result
            outcome.comparison = compare(reference, outcome.model, compare_options(options))
    if not outcome.passed:
        click.echo(render_shrink(shrink_report(outcome, before, measure(outcome.model))))
        click.echo(f"onnxoto shrink: validation FAILED; {output} not written (use "
                   f"--no-validate to write it anyway)", err=True)
        sys.exit(EXIT_MISMATCH)
    written = save_model(outcome.model, output, external=external or None)
    if masks_out is not None:
        save_masks(masks_out, outcome.masks, model_sha256=model_sha)
    after = replace(measure(outcome.model), file_bytes=written.total_bytes)
    report = shrink_report(outcome, before, after, written=written,
                           masks_file=None if masks_out is None else str(masks_out))
    if as_json:
        _echo_json(report)
    else:
        click.echo(render_shrink(report))


@main.command("validate")
@click.argument("full", type=click.Path(path_type=Path))
@click.argument("slim", type=click.Path(path_type=Path))
@click.option("--mask", "mask_path", type=click.Path(path_type=Path),
              help="Zero these groups in FULL to make the reference.")
@comparison_options
@deployment_options
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON.")
@friendly_errors
def validate_command(full: Path, slim: Path, mask_path: Path | None, samples: int, seed: int,
                     rtol: float | None, atol: float | None, dynamic_dim: int,
                     input_shapes: dict, provider: str, data_path: Path | None, check: str,
                     as_json: bool) -> None:
    """Check that SLIM computes what FULL computes (with --mask: FULL with those groups zeroed).

    Exit code 1 when any output differs by more than atol + rtol * max|reference| (with
    --check elementwise: any element by more than atol + rtol * |reference|); the tolerances
    default per output dtype and are printed.

    \b
    Examples:
      onnxoto validate model.onnx slim.onnx --mask masks.npz
      onnxoto validate model.onnx slim.onnx --data inputs.npz --check elementwise
      onnxoto validate model.onnx slim.onnx --provider cuda --input-shape input:8x3x224x224
    """
    from onnxoto.graph import load_model
    from onnxoto.groups import load_masks
    from onnxoto.masking import Zeroing
    from onnxoto.partition import partition
    from onnxoto.runtime import HandedOver, WithTensors
    from onnxoto.validate import CompareOptions, compare

    options = CompareOptions(samples=samples, seed=seed, rtol=rtol, atol=atol, check=check,
                             provider=provider, dynamic_dim=dynamic_dim,
                             shapes=input_shapes or None, data=data_path)
    candidate = load_model(slim)
    # The reference is written out as onnxruntime reads it (zeroed there, with --mask) and the
    # loaded model goes before a session maps it: its bytes are held once, not twice.
    if mask_path is not None:
        result = partition(full)
        masks = load_masks(mask_path, result.groups, model_sha256=result.model_info["sha256"])
        reference = HandedOver(WithTensors(result.model, Zeroing(result.groups, masks)))
        del result
    else:
        reference = HandedOver(load_model(full))
    with reference:
        comparison = compare(reference, candidate, options)
    if as_json:
        _echo_json(comparison.to_dict())
    else:
        click.echo(comparison.summary())
        click.echo(f"{'PASSED' if comparison.passed else 'FAILED'} ({comparison.check} check on "
                   f"{comparison.provider}, {comparison.samples} sample(s) of "
                   f"{comparison.inputs} inputs; tolerances: {comparison.tolerances()})")
    if not comparison.passed:
        sys.exit(EXIT_MISMATCH)


@main.command("report")
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("slim", type=click.Path(path_type=Path), required=False)
@click.option("--latency", is_flag=True, help="Also time onnxruntime inference (--provider).")
@click.option("--runs", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--warmup", type=click.IntRange(min=0), default=5, show_default=True)
@click.option("--threads", type=click.IntRange(min=0), default=0, show_default=True,
              help="onnxruntime intra-op threads for --latency (0: its default).")
@provider_option
@dynamic_dim_option
@input_shape_option
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@friendly_errors
def report_command(model: Path, slim: Path | None, latency: bool, runs: int, warmup: int,
                   threads: int, provider: str, dynamic_dim: int, input_shapes: dict,
                   as_json: bool) -> None:
    """Params, MACs, FLOPs (2 x MACs) and bytes of MODEL, or MODEL vs SLIM side by side.

    \b
    Example:
      onnxoto report model.onnx slim.onnx --latency
    """
    from onnxoto.report import compare_report, render_compare

    if not latency and (provider != "cpu" or threads):
        raise OnnxotoError("--provider and --threads say how --latency runs; add --latency")
    data = compare_report(model, slim, latency=latency, runs=runs, warmup=warmup,
                          dynamic_dim=dynamic_dim, shapes=input_shapes or None,
                          provider=provider, threads=threads)
    if as_json:
        _echo_json(data)
    else:
        click.echo(render_compare(data))


class LazyTrainers(click.Group):
    """``onnxoto train METHOD``: the commands of ``trainers.cli``, imported on first use. Torch
    comes only with the ``train`` extra; without it this says what to install in one line."""

    def _trainers(self, ctx: click.Context) -> click.Group:
        try:
            from trainers.cli import main as trainers
        except ModuleNotFoundError as exc:
            missing = (exc.name or "").partition(".")[0]
            if missing in ("", "onnxoto", "trainers"):
                raise
            click.echo(f"{ctx.command_path}: error: training needs {missing}, which is not "
                       f"installed; pip install 'onnxoto[train]'", err=True)
            ctx.exit(EXIT_BAD_INPUT)
        return trainers

    def list_commands(self, ctx: click.Context) -> list[str]:
        return self._trainers(ctx).list_commands(ctx)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        return self._trainers(ctx).get_command(ctx, name)


main.add_command(LazyTrainers("train", help="""Train a model while pruning it, then shrink it (the
    commands of python -m trainers; they need torch: pip install 'onnxoto[train]').

    \b
    Example:
      onnxoto train dhspg model.onnx --data mnist --target 0.5 -o out/model
    """))


def _check_output(reads: list[Path], output: Path, *, also: list[Path] = ()) -> None:
    """Before anything is created: the output can be written, and neither it nor anything a
    save there replaces (the old output's data files, ``also``) is a file the command reads."""
    from onnxoto.files import check_output_path, model_files, refuse_clobber, save_targets

    check_output_path(output)
    inputs = [f for path in reads for f in model_files(path)]
    refuse_clobber(inputs, save_targets(output) + list(also))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
