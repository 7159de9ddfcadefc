"""The trainers' commands: ``onnxoto train METHOD MODEL.onnx ...`` and ``python -m trainers
METHOD ...`` run this group.

Errors and exit codes are onnxoto's (``onnxoto.cli.friendly_errors``): 0 ok, 1 the slim model does
not match the trained one, 2 bad input or usage (one line on stderr; ``--debug`` shows the
traceback). Under ``torchrun`` every rank runs the same command and only rank 0 prints and writes.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from onnxoto.cli import OneLineErrors, friendly_errors
from onnxoto.metrics import Percent, render_table
from trainers.train import (
    DEFAULT_LR,
    DEVICES,
    FILES,
    LR_SCHEDULES,
    TrainOptions,
    run_dhspg,
    summary_rows,
)
from trainers.woodfisher.run import (
    CRITERIA,
    GRADUAL_STEPS,
    SIDES,
    WoodFisherOptions,
    run_woodfisher,
)

DEFAULTS = TrainOptions()
DEFAULT_LR_TEXT = ", ".join(f"{variant} {lr:g}" for variant, lr in DEFAULT_LR.items())


def run_options(command: Callable) -> Callable:
    """Options every training method shares: data, schedule, SGD's momentum and weight decay,
    limits, device, output, resume."""
    decorators = [
        click.argument("model", type=click.Path(path_type=Path)),
        click.option("--data", default=DEFAULTS.data, show_default=True,
                     help="fashion-mnist, mnist, or a folder with train.npz and test.npz "
                          "(arrays x and y)."),
        click.option("--epochs", type=click.IntRange(min=1), default=DEFAULTS.epochs,
                     show_default=True, help="Passes over the training data."),
        click.option("--batch-size", type=click.IntRange(min=1), default=DEFAULTS.batch_size,
                     show_default=True, help="Per process."),
        click.option("--lr", type=float, default=None,
                     help=f"Learning rate [default: {DEFAULT_LR_TEXT}]."),
        click.option("--momentum", type=click.FloatRange(0, 1, max_open=True),
                     default=DEFAULTS.momentum, show_default=True,
                     help="Heavy-ball momentum (sgd)."),
        click.option("--weight-decay", type=click.FloatRange(min=0),
                     default=DEFAULTS.weight_decay, show_default=True,
                     help="L2 penalty added to the gradient."),
        click.option("--lr-schedule", type=click.Choice(LR_SCHEDULES),
                     default=DEFAULTS.lr_schedule, show_default=True,
                     help="cosine: decay the rate to 0 over all steps."),
        click.option("--limit-train", type=click.IntRange(min=1), default=None,
                     help="Use the first N training samples."),
        click.option("--limit-test", type=click.IntRange(min=1), default=None,
                     help="Use the first N test samples."),
        click.option("--seed", type=int, default=DEFAULTS.seed, show_default=True,
                     help="Seed of torch, the shuffling, DHSPG's choices, WoodFisher's Fisher "
                          "batches and the validation inputs: same seed and options, same run."),
        click.option("--device", type=click.Choice(DEVICES), default=DEFAULTS.device,
                     show_default=True, help="auto: CUDA if torch sees a GPU, else CPU."),
        click.option("-o", "--out", type=click.Path(file_okay=False, path_type=Path),
                     required=True, help="Output folder."),
        click.option("--resume", is_flag=True, help="Continue from OUT/checkpoint.pt."),
        click.option("--overwrite", is_flag=True,
                     help="Replace the run already in OUT (refused without --resume or this)."),
        click.option("--quiet", is_flag=True, help="No progress bar or per-epoch lines."),
        click.option("--json", "as_json", is_flag=True, help="Print metrics.json, not a table."),
        click.option("--debug", is_flag=True, help="Show full tracebacks on errors."),
    ]
    for decorator in reversed(decorators):
        command = decorator(command)
    return command


def print_result(metrics: dict[str, Any], as_json: bool, out: Path) -> None:
    """The closing table (or the metrics as JSON), from rank 0's metrics."""
    if not metrics:
        return
    if as_json:
        click.echo(json.dumps(metrics, indent=1))
        return
    rows = [[*row[:3], None if row[3] is None else Percent(row[3])]
            for row in summary_rows(metrics)]
    click.echo(render_table(rows, headers=("metric", "full", "slim", "slim/full")))
    reached = "" if metrics["target_reached"] else ", not reached"
    sparsity = f"group sparsity {metrics['group_sparsity']:.1%}"
    if metrics["method"] == "woodfisher" and not metrics["options"]["structured"]:
        sparsity = (f"weight sparsity {metrics['history'][-1]['weight_sparsity']:.1%} (target "
                    f"{metrics['options']['sparsity']:.1%}), unstructured: zeros inside "
                    f"channels, so slim.onnx only loses channels whose weights all went to "
                    f"zero ({sparsity}); --structured removes whole channels")
    elif metrics["options"].get("target_macs") is not None:
        target, share = metrics["options"]["target_macs"], metrics["macs"]["slim_over_input"]
        sparsity = (f"MACs {share:.1%} of the input's (target {target:.1%}"
                    f"{'' if share <= target else ', not reached'}), {sparsity}")
    else:
        sparsity += f" (target {metrics['target_group_sparsity']:.1%}{reached})"
    click.echo(f"{sparsity}; wrote " + ", ".join(
        str(out / FILES[key]) for key in ("trained", "masks", "slim", "metrics")))


@click.group("trainers", cls=OneLineErrors,
             context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Train an ONNX model while pruning it; writes trained.onnx, masks.npz and slim.onnx."""


@main.command("dhspg")
@run_options
@click.option("--target", type=click.FloatRange(0, 1, max_open=True), default=DEFAULTS.target,
              show_default=True, help="Share of prunable channels (ZIGs) to drive to zero.")
@click.option("--variant", type=click.Choice(list(DEFAULT_LR)), default=DEFAULTS.variant,
              show_default=True)
@click.option("--warmup-epochs", type=click.IntRange(min=0), default=DEFAULTS.warmup_epochs,
              show_default=True, help="Plain steps before any group is pushed to zero.")
@click.option("--period-steps", type=click.IntRange(min=1), default=None,
              help="Re-choose the redundant groups every N steps (our extension) [default: "
                   "choose once, when the warm-up ends, as OTOv2's code does].")
@click.option("--reselect", is_flag=True,
              help="With --period-steps: let each choice release groups that are still "
                   "shrinking; without it only stalled ones compete again, since a released "
                   "group keeps its half-shrunk weights.")
@click.option("--epsilon", type=click.FloatRange(0, 0.95), default=DEFAULTS.epsilon,
              show_default=True, help="Half-space threshold: higher zeroes groups sooner.")
@click.option("--lam", type=click.FloatRange(min=0), default=None,
              help="Smallest push toward zero on a redundant group [default: sgd 1e-3, "
                   "adam 1e-2].")
@click.option("--lam-amplify", type=click.FloatRange(min=1), default=None,
              help="Push = this x the least push that shrinks the group, clipped to "
                   "[lam, lam x lam-hat]; near 1 zeroes groups slowly [default: sgd 2, adam 20].")
@click.option("--lam-hat", type=click.FloatRange(min=1), default=None,
              help="Ceiling of the push, in units of lam; a ceiling below the least push that "
                   "shrinks the group is not used: the step then takes the midpoint of the "
                   "range that shrinks and still descends [default: sgd 10, adam 1000].")
@click.option("--compile/--no-compile", "compile_stats", default=None,
              help="torch.compile DHSPG's per-step sums: faster steps on large models after a "
                   "one-time compile (needs a C++ compiler on CPU) [default: auto, compile when "
                   "a C++ compiler is found and the model has >= 1 M parameters; the log says "
                   "which].")
@click.option("--slim-continuation/--no-slim-continuation", default=DEFAULTS.slim_continuation,
              show_default=True,
              help="Once the target is reached and DHSPG stops pushing, delete the zero groups "
                   "and train the slim network for the remaining epochs (same training, cheaper "
                   "epochs; the log says from which epoch).")
@friendly_errors
def dhspg_command(model: Path, out: Path, as_json: bool, debug: bool, **settings: Any) -> None:
    """Train MODEL with DHSPG (OTOv2) towards --target group sparsity, then shrink it.

    \b
    Example:
      onnxoto train dhspg mlp.onnx --data mnist --target 0.5 --epochs 3 -o out/mlp
      python -m trainers dhspg mlp.onnx --data mnist --target 0.5 --epochs 3 -o out/mlp
      torchrun --nproc_per_node 2 -m trainers dhspg mlp.onnx --data mnist -o out/mlp
    """
    options = TrainOptions(out=out, **settings)
    log = functools.partial(click.echo, err=as_json)
    print_result(run_dhspg(model, options, log=log), as_json, out)



WOODFISHER = WoodFisherOptions()


@main.command("woodfisher")
@run_options
@click.option("--sparsity", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              default=None,
              help="Share of the weights to prune (of rank >= 2: biases and norm scales stay); "
                   "with --structured, share of the prunable channels (ZIGs) [default: 0.5, "
                   "unless --target-macs].")
@click.option("--target-macs", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              default=None,
              help="With --structured, instead of --sparsity: prune whole channels until "
                   "slim.onnx has at most this share of the dense model's MACs (as shrink "
                   "counts them), ranked by score per MAC saved; --gradual reaches it at its "
                   "last pruning step.")
@click.option("--max-group-share", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="With --target-macs: remove at most this share of any group's (layer's) "
                   "channels, and always keep one; ranked per MAC alone, the costliest layer "
                   "can be emptied [default: 0.75].")
@click.option("--structured", is_flag=True,
              help="Prune whole channels by group OBS so slim.onnx is smaller; without it the "
                   "zeros are scattered and slim.onnx keeps (almost) every channel.")
@click.option("--gradual", is_flag=True,
              help="Prune over --steps steps spread over the run (cubic schedule, Fisher "
                   "recomputed at each, training in between); without it: one-shot, the given "
                   "model is pruned at step 0 and then fine-tuned for --epochs.")
@click.option("--steps", type=click.IntRange(min=1), default=None,
              help=f"Pruning steps of --gradual [default: {GRADUAL_STEPS}].")
@click.option("--fisher-samples", type=click.IntRange(min=1),
              default=WOODFISHER.fisher_samples, show_default=True,
              help="Gradients N in each Fisher estimate.")
@click.option("--fisher-batch", type=click.IntRange(min=1), default=WOODFISHER.fisher_batch,
              show_default=True, help="Samples averaged into each of the N gradients.")
@click.option("--block-size", type=click.IntRange(min=1), default=WOODFISHER.block_size,
              show_default=True,
              help="Weights per Fisher block: memory grows with it (block x weights x 8 bytes, "
                   "or N x weights x 8 with --low-rank).")
@click.option("--damping", type=click.FloatRange(min=0, min_open=True),
              default=WOODFISHER.damping, show_default=True,
              help="lambda of F = lambda I + (1/N) sum g g^T.")
@click.option("--low-rank", is_flag=True,
              help="With --structured: keep each Fisher block as its N gradients (memory N x "
                   "block instead of block^2), so --block-size can span a whole layer.")
@click.option("--joint", is_flag=True,
              help="Solve the OBS update for all weights pruned in a block at once (exact for "
                   "the quadratic model) instead of summing each weight's update (the paper's).")
@click.option("--criterion", type=click.Choice(list(CRITERIA)), default=WOODFISHER.criterion,
              show_default=True,
              help="magnitude: the baseline on the same path (smallest |w| over all layers, or "
                   "smallest channel norms with --structured; no Fisher, no update).")
@click.option("--side", type=click.Choice(list(SIDES)), default=None,
              help="With --structured, what scores and compensates a channel: consumer (the "
                   "next layers' input columns; the other channels stand in for it) or producer "
                   "(its own rows) [default: consumer for woodfisher, producer for magnitude].")
@click.option("--max-fisher-gb", type=click.FloatRange(min=0, min_open=True),
              default=WOODFISHER.max_fisher_gb, show_default=True,
              help="Refuse to start when the Fisher blocks need more memory (GiB).")
@friendly_errors
def woodfisher_command(model: Path, out: Path, as_json: bool, debug: bool,
                       **settings: Any) -> None:
    """Prune MODEL with WoodFisher (OBS with a blockwise inverse empirical Fisher) to
    --sparsity, fine-tune it with SGD with the masks held, then shrink it.

    \b
    Example:
      onnxoto train woodfisher mlp.onnx --data mnist --sparsity 0.9 --epochs 2 -o out/wf
      onnxoto train woodfisher mlp.onnx --data mnist --sparsity 0.5 --structured -o out/wfs
      onnxoto train woodfisher net.onnx --structured --target-macs 0.4 --low-rank \\
          --block-size 100000000 --joint -o out/wf40
      python -m trainers woodfisher mlp.onnx --data mnist --sparsity 0.9 --gradual \\
          --steps 4 --epochs 8 -o out/wfg
    """
    options = WoodFisherOptions(out=out, **settings)
    log = functools.partial(click.echo, err=as_json)
    print_result(run_woodfisher(model, options, log=log), as_json, out)
