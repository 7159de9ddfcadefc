"""OTOv2's DemoNet on Fashion-MNIST: a plain baseline and DHSPG runs on the same data budget.

The paper (OTOv2, Table on DemoNet) reports 84.5% -> 84.3% top-1 at 24.0% FLOPs and 23.3%
params. Our goal: <= 24% MACs (FLOPs = 2 x MACs, so the ratio is the same) and <= 23.3% params
of our own baseline, with top-1 at most 0.2 points below that baseline, trained on the same data
budget (train/test subset and epochs are stated in every table). The baseline is the same trainer
at target group sparsity 0: DHSPG then never forms a redundant set, every parameter takes the
plain SGD/Adam step (see trainers/dhspg.py) and shrink removes nothing.

    python benchmarks/otov2_demonet.py [--limit-train 8000] [--limit-test 2000] [--epochs 5]
        [--targets [0.5 0.6 0.7]] [--variant adam] [--lr 2e-3] [--lr-schedule cosine]
        [--batch-size 32] [--warmup-epochs 1] [--epsilon 0.9] [--out DIR] [--reuse] [--resume]
        [--lam L] [--lam-amplify A] [--lam-hat H] [--scratch-controls]
        [--architectures C1,C2,C5,G1 ...]
        [--finetune-epochs 0] [--finetune-targets 0.6] [--finetune-lr 1e-3] [--no-write]

Adam with a cosine decay to 0 is the default because a constant rate left the last epoch's
accuracy swinging between epochs, and epsilon 0.9 zeroes the redundant groups within the few
hundred steps a CPU budget allows. Each accuracy is shown with its binomial standard error, and
a drop with its paired error when both runs recorded their per-image results: on a test subset
of a few thousand images a single run cannot settle a 0.2-point difference, and seeds differ
more than that (benchmarks/demonet_seeds.py). What the runs on the former DemoNet showed:
benchmarks/README.md; ``make bench-demonet`` now runs benchmarks/demonet_official.py.

--scratch-controls trains each target's slim architecture from a fresh initialization on the
same budget, which splits a drop into what the smaller network costs and what DHSPG's path to it
costs. --architectures does the same for widths given by hand: how well a slim DemoNet of a
given shape can do on the budget, whichever way it is found.

Writes benchmarks/results/otov2_demonet.{json,md,png} (stem: --results-name); run folders
(trained.onnx, slim.onnx, metrics.json per run) go to --out, or to a temporary folder that is
removed at the end. --resume continues killed runs there from their last epoch.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS, markdown_table, write_results  # noqa: E402

STEM = "otov2_demonet"
PAPER = {"baseline_top1": 84.5, "pruned_top1": 84.3, "flops_pct": 24.0, "params_pct": 23.3}
GOAL = {"macs_pct_max": 24.0, "params_pct_max": 23.3, "drop_points_max": 0.2}
# DHSPG settings that act only on a redundant set; a target-0 run has none (see _train).
SPARSITY_ONLY = ("warmup_epochs", "period_steps", "reselect", "epsilon", "lam", "lam_amplify",
                 "lam_hat")
# Options added after runs were stored, with the value that reproduces those runs: before
# ``reselect`` existed, DHSPG always re-chose its redundant set.
BEFORE_OPTION = {"reselect": True}


def _options(args: argparse.Namespace, target: float, out: Path, *, finetune: bool = False):
    """Options of one run: from scratch, or (``finetune``) continuing from the baseline's
    weights for --finetune-epochs at --finetune-lr, with no warm-up."""
    from trainers.train import TrainOptions

    schedule = (dict(epochs=args.finetune_epochs, lr=args.finetune_lr, warmup_epochs=0)
                if finetune else dict(epochs=args.epochs, lr=args.lr,
                                      warmup_epochs=args.warmup_epochs))
    return TrainOptions(data="fashion-mnist-32", target=target, batch_size=args.batch_size,
                        lr_schedule=args.lr_schedule, variant=args.variant,
                        period_steps=args.period_steps, reselect=args.reselect,
                        epsilon=args.epsilon, lam=args.lam,
                        lam_amplify=args.lam_amplify, lam_hat=args.lam_hat,
                        limit_train=args.limit_train, limit_test=args.limit_test, seed=args.seed,
                        device="cpu", out=out, quiet=False, **schedule)


def _train(model: Path, args: argparse.Namespace, target: float, out: Path,
           finetune: bool = False) -> dict[str, Any]:
    """One run of the trainer; with --reuse, a finished run of the same model file (sha256) that
    agrees on every option that shapes its result (the resume fingerprint, epochs, test subset)
    is read back; options added since it ran count as their defaults, or as ``BEFORE_OPTION``
    when the default changed the behaviour. At target 0 DHSPG never
    pushes a group, so its own settings (``SPARSITY_ONLY``) cannot change the run and are not
    compared."""
    from onnxoto.graph import file_sha256
    from trainers.train import FILES, TrainOptions, run_dhspg

    options = _options(args, target, out, finetune=finetune)
    options.resume = args.resume and (out / FILES["checkpoint"]).is_file()
    options.overwrite = not options.resume  # not resumed: this run replaces the folder's run
    done = out / FILES["metrics"]
    if args.reuse and done.is_file():
        metrics = json.loads(done.read_text())
        stored = TrainOptions().to_dict() | BEFORE_OPTION | metrics["options"]
        wanted = options.to_dict()
        keys = {*options.fingerprint(), "epochs", "limit_test"}
        if target == 0:
            keys -= set(SPARSITY_ONLY)
        same_model = metrics["model"]["sha256"] == file_sha256(model)
        if same_model and all(stored[k] == wanted[k] for k in keys):
            print(f"[{out.name}] reusing {done}")
            return metrics
    label = out.name
    return run_dhspg(model, options, log=lambda line: print(f"[{label}] {line}", flush=True))


def _slim_widths(slim: Path) -> tuple[int, int, int, int]:
    """DemoNet widths (conv1, conv2/conv3, conv5, gemm1) that a slim.onnx kept."""
    import onnx

    dims = {t.name: t.dims[0] for t in onnx.load(str(slim)).graph.initializer}
    return tuple(dims[f"{name}.weight"] for name in ("conv1", "conv2", "conv5", "gemm1"))


def _from_scratch(widths: tuple[int, ...], args: argparse.Namespace,
                  root: Path) -> dict[str, Any]:
    """Capacity control: DemoNet at ``widths`` (conv1, conv2/conv3, conv5, gemm1), freshly
    initialized and trained densely on the same budget. For the widths a DHSPG run kept: near
    the baseline, the pruning trajectory costs the accuracy; near the DHSPG run, the smaller
    architecture itself does."""
    import torch

    from models.export import export_onnx
    from models.zoo import DemoNet

    out = root / ("scratch_" + "_".join(map(str, widths)))
    model = out.parent / f"{out.name}.onnx"
    if not ((args.reuse or args.resume) and model.is_file() and _slim_widths(model) == widths):
        torch.manual_seed(args.seed)
        export_onnx(DemoNet(widths), (1, 3, 32, 32), model)
    return _train(model, args, 0.0, out)


def _widths(text: str) -> tuple[int, int, int, int]:
    """--architectures item: four comma-separated DemoNet widths, e.g. 64,100,12,10."""
    try:
        widths = tuple(int(w) for w in text.split(","))
    except ValueError:
        widths = ()
    if len(widths) != 4 or min(widths) < 1:
        raise argparse.ArgumentTypeError(
            f"'{text}': give four positive widths conv1,conv2,conv5,gemm1 (e.g. 64,100,12,10)")
    return widths


def _se(p: float, n: int) -> float:
    """Binomial standard error of an accuracy p measured on n images, in points."""
    return 100 * (p * (1 - p) / n) ** 0.5


def _drop_se(metrics: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """Standard error of the accuracy drop, in points: paired (from both runs' right/wrong per
    test sample) when both stored them for the same test subset, else the unpaired binomial
    estimate, which ignores that the two models get mostly the same images right and so
    overstates the noise."""
    from trainers.train import unpack_correct

    n = metrics["data"]["test"]["samples"]
    records = [m["accuracy"].get("slim_correct") for m in (base, metrics)]
    if None not in records and metrics["data"]["test"] == base["data"]["test"] and (
            metrics["data"]["source"] == base["data"]["source"]):
        base_right, run_right = (unpack_correct(r, n).astype(float) for r in records)
        diff = base_right - run_right
        return {"drop_se": 100 * float(diff.std(ddof=1)) / n ** 0.5, "drop_se_kind": "paired",
                "discordant": {"only_baseline_right": int((diff > 0).sum()),
                               "only_run_right": int((diff < 0).sum())}}
    p0, p1 = base["accuracy"]["slim"], metrics["accuracy"]["slim"]
    return {"drop_se": (_se(p0, n) ** 2 + _se(p1, n) ** 2) ** 0.5, "drop_se_kind": "unpaired"}


def _row(name: str, metrics: dict[str, Any], base: dict[str, Any] | None) -> dict[str, Any]:
    """A table row; drop, MACs and params are relative to ``base`` (the equal-budget dense run)."""
    base = base or metrics
    top1 = 100 * metrics["accuracy"]["slim"]
    n = metrics["data"]["test"]["samples"]
    p0 = base["accuracy"]["slim"]
    return {
        "run": name,
        "target_group_sparsity": metrics["target_group_sparsity"],
        "group_sparsity": metrics["group_sparsity"],
        "top1_trained": 100 * metrics["accuracy"]["trained"],
        "top1": top1,
        "top1_se": _se(top1 / 100, n),
        "drop_points": 100 * p0 - top1,
        **_drop_se(metrics, base),
        "test_samples": n,
        "last_epoch_torch_top1": 100 * metrics["history"][-1]["test_accuracy"],
        "params": metrics["params"]["slim"],
        "macs": metrics["macs"]["slim"],
        "params_pct": 100 * metrics["params"]["slim"] / base["params"]["slim"],
        "macs_pct": 100 * metrics["macs"]["slim"] / base["macs"]["slim"],
        "train_seconds": metrics["train_seconds"],
        "wall_seconds": metrics["wall_seconds"],  # the last process only when resumed
        "resumed_at_epoch": metrics.get("resumed_at_epoch"),  # None: stored before it was
    }


def _wall(row: dict[str, Any]) -> str:
    """Wall seconds; a resumed run's count only its last process, and the cell says so. A run
    stored before metrics.json recorded resumes says so too when its wall seconds are below its
    train seconds, which only a resume can cause."""
    resumed = row.get("resumed_at_epoch")
    if resumed:
        note = f" (resumed after epoch {resumed})"
    elif resumed is None and row["wall_seconds"] < row["train_seconds"]:
        note = " (resumed)"
    else:
        note = ""
    return f"{row['wall_seconds']:.0f}{note}"


def _threads(runs: Sequence[dict[str, Any]]) -> str:
    """The torch thread counts the runs trained with (runs stored before metrics.json recorded
    it say so): train seconds are comparable only between runs with the same count."""
    counts = sorted({m["torch_threads"] for m in runs if "torch_threads" in m})
    text = "torch threads " + " or ".join(map(str, counts)) if counts else "torch threads"
    missing = sum("torch_threads" not in m for m in runs)
    return text + (f" (not recorded by {missing} run(s) stored before it was)" if missing else "")


def _meets(row: dict[str, Any]) -> dict[str, bool]:
    checks = {"macs": row["macs_pct"] <= GOAL["macs_pct_max"],
              "params": row["params_pct"] <= GOAL["params_pct_max"],
              "accuracy": row["drop_points"] <= GOAL["drop_points_max"]}
    return {**checks, "all": all(checks.values())}


def _table(rows: list[dict[str, Any]], paper: bool = True) -> str:
    headers = ["run", "group sparsity", "top-1 (%) ± SE", "drop vs baseline (points) ± SE",
               "MACs % of baseline", "params % of baseline", "train s", "wall s", "meets goal"]
    table = []
    for r in rows:
        baseline = "meets_goal" not in r
        goal = r.get("meets_goal", {})
        verdict = "-" if baseline else ("**yes**" if goal["all"] else "no (" + ", ".join(
            k for k in ("macs", "params", "accuracy") if not goal[k]) + ")")
        table.append([r["run"], f"{r['group_sparsity']:.1%}",
                      f"{r['top1']:.2f} ± {r['top1_se']:.2f}",
                      "-" if baseline else f"{r['drop_points']:+.2f} ± {r['drop_se']:.2f}",
                      f"{r['macs_pct']:.1f}",
                      f"{r['params_pct']:.1f}", f"{r['train_seconds']:.0f}",
                      _wall(r), verdict])
    if paper:
        table.append(["paper (OTOv2): baseline", "-", f"{PAPER['baseline_top1']:.1f}", "-",
                      "100.0", "100.0", "-", "-", "-"])
        table.append(["paper (OTOv2): DHSPG", "-", f"{PAPER['pruned_top1']:.1f}",
                      f"{PAPER['baseline_top1'] - PAPER['pruned_top1']:+.1f}",
                      f"{PAPER['flops_pct']:.1f} (FLOPs)", f"{PAPER['params_pct']:.1f}", "-",
                      "-", "(reference)"])
    return markdown_table(headers, table)


def _control_section(rows: list[dict[str, Any]]) -> str:
    """Capacity controls (--scratch-controls, --architectures): see ``_from_scratch``."""
    if not rows:
        return ""
    headers = ["run", "top-1 (%) ± SE", "drop vs baseline (points) ± SE", "MACs % of baseline",
               "params % of baseline", "train s"]
    table = [[r["run"], f"{r['top1']:.2f} ± {r['top1_se']:.2f}",
              f"{r['drop_points']:+.2f} ± {r['drop_se']:.2f}", f"{r['macs_pct']:.1f}",
              f"{r['params_pct']:.1f}", f"{r['train_seconds']:.0f}"] for r in rows]
    return ("\n\nCapacity control: DemoNet at the widths (conv1, conv2/conv3, conv5, gemm1) a "
            "DHSPG run kept, or given with --architectures, freshly initialized and trained "
            "densely on the same budget. For a DHSPG run's widths: close to the baseline means "
            "the pruning trajectory costs the accuracy; close to the DHSPG run means the "
            "smaller architecture does.\n\n" + markdown_table(headers, table))


def _finetune_section(rows: list[dict[str, Any]], first: dict[str, Any],
                      args: argparse.Namespace) -> str:
    """Second table: runs that start from the trained baseline (what a user with a trained
    model does). Drops are against the dense control trained for the same extra epochs; the
    drop against the baseline itself is given too, since both continued runs train longer."""
    if not rows:
        return ""
    against_first = "; ".join(f"{r['run']}: {r['drop_vs_first_baseline']:+.2f}"
                              for r in rows[1:])
    return (f"\n\nStarting from the trained baseline ({first['top1']:.2f} %): "
            f"{args.finetune_epochs} more epochs, {args.variant} lr {args.finetune_lr:g} "
            f"({args.lr_schedule}), no warm-up. The dense control continues the baseline on "
            f"the same schedule, so drops below are at equal budget; drop against the baseline "
            f"itself: {against_first} points.\n\n" + _table(rows, paper=False))


def _plot(rows: list[dict[str, Any]], budget: str, path: Path,
          tuned: Sequence[dict[str, Any]] = (), controls: Sequence[dict[str, Any]] = ()) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 5.2))
    base = rows[0]
    ax.errorbar([base["macs_pct"]], [base["top1"]], yerr=[base["top1_se"]], fmt="s",
                color="black", capsize=3, label="our baseline (target 0), ± SE", zorder=3)
    pruned = rows[1:]
    if pruned:
        ax.errorbar([r["macs_pct"] for r in pruned], [r["top1"] for r in pruned],
                    yerr=[r["top1_se"] for r in pruned], fmt="o-", color="tab:blue", capsize=3,
                    label="our DHSPG, ± SE", zorder=3)
    for r in pruned:
        ax.annotate(f"target {r['target_group_sparsity']:g}", (r["macs_pct"], r["top1"]),
                    textcoords="offset points", xytext=(5, 5), fontsize=8)
    if tuned:
        ax.errorbar([r["macs_pct"] for r in tuned], [r["top1"] for r in tuned],
                    yerr=[r["top1_se"] for r in tuned], fmt="D--", color="tab:green",
                    capsize=3, label="from the trained baseline: continued, DHSPG", zorder=3)
    if controls:
        ax.errorbar([r["macs_pct"] for r in controls], [r["top1"] for r in controls],
                    yerr=[r["top1_se"] for r in controls], fmt="x", color="tab:purple",
                    capsize=3, label="slim architectures trained from scratch", zorder=3)
    ax.plot([100.0, PAPER["flops_pct"]], [PAPER["baseline_top1"], PAPER["pruned_top1"]], "^--",
            color="tab:red", label="OTOv2 paper (baseline, DHSPG)", zorder=2)
    ax.axvline(GOAL["macs_pct_max"], color="gray", linestyle=":", linewidth=1)
    ax.axhline(base["top1"] - GOAL["drop_points_max"], color="gray", linestyle=":", linewidth=1,
               label="goal: <= 24% MACs, drop <= 0.2")
    ax.set_xlabel("MACs (% of baseline)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title("DemoNet on Fashion-MNIST\n" + textwrap.fill(budget, 90), fontsize=8)
    ax.set_xlim(0, 105)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit-train", type=int, default=8000,
                        help="first N Fashion-MNIST training images (60000 = all)")
    parser.add_argument("--limit-test", type=int, default=2000,
                        help="first N test images (10000 = all)")
    parser.add_argument("--epochs", type=int, default=5,
                        help="epochs of every run, baseline and DHSPG alike (warm-up included)")
    parser.add_argument("--targets", type=float, nargs="*", default=[0.5, 0.6, 0.7],
                        help="DHSPG target group sparsities (none: the baseline and the "
                             "--architectures controls only)")
    parser.add_argument("--variant", choices=["sgd", "adam"], default="adam")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--lr-schedule", choices=["constant", "cosine"], default="cosine")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--warmup-epochs", type=int, default=1,
                        help="plain epochs before DHSPG pushes groups to zero")
    parser.add_argument("--period-steps", type=int, default=100)
    parser.add_argument("--reselect", action="store_true",
                        help="let DHSPG release groups it is pushing (OTOv2's re-partition)")
    parser.add_argument("--epsilon", type=float, default=0.9)
    parser.add_argument("--lam", type=float, default=None,
                        help="DHSPG's smallest push (default: the variant's)")
    parser.add_argument("--lam-amplify", type=float, default=None,
                        help="push = amplify x the least push that shrinks a group "
                             "(default: the variant's)")
    parser.add_argument("--lam-hat", type=float, default=None,
                        help="ceiling of the push in units of lam, see python -m trainers "
                             "dhspg --help (default: the variant's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for the run folders (default: a temporary one)")
    parser.add_argument("--reuse", action="store_true",
                        help="read back runs in --out whose metrics.json has the same options")
    parser.add_argument("--resume", action="store_true",
                        help="continue killed runs in --out from their last epoch checkpoint")
    parser.add_argument("--scratch-controls", action="store_true",
                        help="also train each DHSPG run's slim architecture from scratch")
    parser.add_argument("--architectures", type=_widths, nargs="+", default=[],
                        metavar="C1,C2,C5,G1",
                        help="also train DemoNet at these widths from scratch (e.g. a slim "
                             "architecture chosen by hand), each on the same budget")
    parser.add_argument("--finetune-epochs", type=int, default=0,
                        help="also start from the trained baseline: DHSPG at --finetune-targets "
                             "and a dense control (target 0), each for this many epochs")
    parser.add_argument("--finetune-targets", type=float, nargs="+", default=[0.6])
    parser.add_argument("--finetune-lr", type=float, default=1e-3)
    parser.add_argument("--results-name", default=STEM,
                        help="file stem in benchmarks/results (to keep several budgets)")
    parser.add_argument("--no-write", action="store_true",
                        help="print only; leave benchmarks/results untouched (for tuning)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    args.targets = sorted(set(args.targets))  # table rows and the plot's line in target order

    from models.export import export_onnx
    from models.zoo import build

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.out or tmp)
        root.mkdir(parents=True, exist_ok=True)
        model = root / "demonet.onnx"
        if not ((args.reuse or args.resume) and model.is_file()):
            export_onnx(build("demonet", seed=args.seed), (1, 3, 32, 32), model)
        runs = {"baseline": _train(model, args, 0.0, root / "baseline")}
        for target in args.targets:
            runs[f"dhspg {target:g}"] = _train(model, args, target, root / f"target_{target:g}")
        controls = {}
        if args.scratch_controls:
            for target in args.targets:
                widths = _slim_widths(root / f"target_{target:g}" / "slim.onnx")
                name = f"dhspg {target:g} architecture {widths}, from scratch"
                controls[name] = _from_scratch(widths, args, root)
        for widths in args.architectures:
            controls[f"architecture {widths}, from scratch"] = _from_scratch(widths, args, root)
        tuned = {}
        if args.finetune_epochs:
            trained = root / "baseline" / "trained.onnx"
            tuned["baseline, continued"] = _train(trained, args, 0.0, root / "ft_control", True)
            for target in args.finetune_targets:
                tuned[f"baseline, then dhspg {target:g}"] = _train(
                    trained, args, target, root / f"ft_target_{target:g}", True)
    base = runs["baseline"]
    rows = [_row(name, m, base) for name, m in runs.items()]
    for row in rows[1:]:
        row["meets_goal"] = _meets(row)
    control_rows = [_row(name, m, base) for name, m in controls.items()]
    tuned_rows = [_row(name, m, tuned["baseline, continued"]) for name, m in tuned.items()]
    for row in tuned_rows[1:]:
        row["meets_goal"] = _meets(row)
        row["drop_vs_first_baseline"] = rows[0]["top1"] - row["top1"]
    data = base["data"]
    budget = (f"train {data['train']['samples']:,} of {data['train']['available']:,} images, "
              f"test {data['test']['samples']:,} of {data['test']['available']:,}, "
              f"{args.epochs} epochs per run ({args.warmup_epochs} warm-up), batch "
              f"{args.batch_size}, {args.variant} lr {args.lr:g} ({args.lr_schedule})")
    winners = [r["run"] for r in rows[1:] + tuned_rows[1:] if r["meets_goal"]["all"]]
    verdict = (f"Goal met (point estimates) by: {', '.join(winners)}" if winners else
               "Goal NOT met by any target on this budget" if rows[1:] else
               "No DHSPG run here (baseline and capacity controls only)")
    compared = rows[1:] or control_rows or rows
    noise = max(r["drop_se"] for r in compared)
    kinds = " and ".join(sorted({r["drop_se_kind"] for r in compared}))
    verdict += (f". Caution: the standard error of a drop is up to {noise:.1f} points on "
                f"{rows[0]['test_samples']:,} test images ({kinds} estimate; paired uses "
                f"both runs' right/wrong per image), "
                f"{'more' if noise > GOAL['drop_points_max'] else 'less'} than the "
                f"{GOAL['drop_points_max']}-point goal")
    threads = _threads([*runs.values(), *controls.values(), *tuned.values()])
    markdown = (
        f"DemoNet (OTOv2) on Fashion-MNIST, {budget}; CPU, {threads}, seed {args.seed}. "
        f"Baseline = same trainer at target 0 "
        f"(plain {args.variant}). top-1 = slim model in onnxruntime on the test subset "
        f"(equal to the trained model's, checked). Goal: <= {GOAL['macs_pct_max']}% MACs, "
        f"<= {GOAL['params_pct_max']}% params, drop <= {GOAL['drop_points_max']} points. "
        f"The paper trains on the full data; its row is for reference only.\n\n"
        + _table(rows) + _control_section(control_rows)
        + _finetune_section(tuned_rows, rows[0], args)
        + f"\n\n{verdict}. Wall time of the runs: "
        f"{sum(r['wall_seconds'] for r in rows + control_rows + tuned_rows):.0f} s in all.")
    print(markdown)
    if args.no_write:
        return 0
    payload = {
        "budget": budget,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "paper": PAPER,
        "goal": GOAL,
        "goal_met_by": winners,
        "verdict": verdict,
        "rows": rows,
        "scratch_control_rows": control_rows,
        "finetune_rows": tuned_rows,
        "runs": runs,
        "scratch_control_runs": controls,
        "finetune_runs": tuned,
        "runs_wall_seconds": sum(r["wall_seconds"] for r in rows + control_rows + tuned_rows),
        "this_invocation_seconds": time.perf_counter() - started,  # small when --reuse
    }
    stem = args.results_name
    out = write_results(stem, payload, markdown)
    _plot(rows, budget, RESULTS / f"{stem}.png", tuned_rows, control_rows)
    print(f"\nwrote {out}, {RESULTS / (stem + '.md')}, {RESULTS / (stem + '.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
