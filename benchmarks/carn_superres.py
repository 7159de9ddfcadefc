"""CARN-style x2 super-resolution as a user's own torch module, trained in a plain loop.

Fashion-MNIST 28x28 images are the targets, their 2x2 average pools (14x14) the inputs; L1 loss,
Adam. Two runs from the same seeded initialisation: a baseline (torch.optim.Adam) and DHSPG
through ``trainers.attach`` (Adam variant, target group sparsity 0.5). Reported: test PSNR of
the torch module and of slim.onnx in onnxruntime, params and MACs of slim over full, train wall
time; bilinear upsampling as the floor. The network's upsampling conv feeds PixelShuffle
(DepthToSpace): its channels are pruned in blocks of r*r = 4, one per output channel.

Budget (2 CPU cores shared with other jobs): 2,000 training and 500 test images, 3 epochs of
batch 32 (189 steps), 24 channels. DHSPG: Adam variant, a quarter of the steps as warm-up,
lam 0.1 and epsilon 0.9 so the groups reach zero within this short run (OTOv2's defaults need
far more steps). Larger budgets: --train/--test/--epochs.

Usage: ``python -m benchmarks.carn_superres [--train N] [--test N] [--epochs E] [--out DIR]``
Writes benchmarks/results/carn_superres.{json,md,png}.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import trainers
from benchmarks.common import RESULTS, markdown_table, write_results
from models.zoo import ResidualBlock
from onnxoto.runtime import session
from trainers.data import DATASETS
from trainers.dhspg import DHSPGOptions


class CarnSR(nn.Module):
    """CARN x2 for one gray channel: cascading residual blocks fused by 1x1 convs, conv C -> 4C,
    PixelShuffle(2), ReLU, exit conv; plus the bilinear upsample of the input (global skip)."""

    def __init__(self, c: int = 24, n_blocks: int = 3) -> None:
        super().__init__()
        self.entry = nn.Conv2d(1, c, 3, padding=1)
        self.blocks = nn.ModuleList(ResidualBlock(c) for _ in range(n_blocks))
        self.fuse = nn.ModuleList(nn.Conv2d(c * (i + 2), c, 1) for i in range(n_blocks))
        self.upsample = nn.Conv2d(c, 4 * c, 3, padding=1)
        self.shuffle = nn.PixelShuffle(2)
        self.exit = nn.Conv2d(c, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        x = F.relu(self.entry(x))
        cascade = x
        for block, fuse in zip(self.blocks, self.fuse, strict=True):
            cascade = torch.cat([cascade, block(x)], dim=1)
            x = F.relu(fuse(cascade))
        x = F.relu(self.shuffle(self.upsample(x)))
        return skip + self.exit(x)


def load(split: str, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(14x14 inputs, 28x28 targets) in [0, 1]: the first ``count`` images of the split."""
    raw, _ = DATASETS["fashion-mnist"].read(split)
    hr = torch.from_numpy(np.asarray(raw[:count], dtype=np.float32)).reshape(-1, 1, 28, 28)
    hr = hr / 255.0 if hr.max() > 1 else hr
    return F.avg_pool2d(hr, 2), hr


def psnr(pred: np.ndarray, target: np.ndarray) -> float:
    """Mean over images of 10 log10(1 / MSE), predictions clipped to [0, 1]."""
    mse = ((np.clip(pred, 0, 1) - target) ** 2).reshape(len(target), -1).mean(axis=1)
    return float(np.mean(10 * np.log10(1.0 / np.maximum(mse, 1e-10))))


def predict(module: nn.Module, lr: torch.Tensor) -> np.ndarray:
    module.eval()
    with torch.no_grad():
        out = torch.cat([module(lr[i:i + 250]) for i in range(0, len(lr), 250)])
    module.train()
    return out.numpy()


def train(module: nn.Module, optimizer: torch.optim.Optimizer, lr: torch.Tensor,
          hr: torch.Tensor, epochs: int, batch: int, seed: int) -> float:
    """The user's plain loop; returns its wall seconds."""
    generator = torch.Generator().manual_seed(seed)
    started = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(len(lr), generator=generator)
        for i in range(0, len(lr), batch):
            idx = order[i:i + batch]
            loss = F.l1_loss(module(lr[idx]), hr[idx])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    return time.perf_counter() - started


def plot(path: Path, lr: np.ndarray, hr: np.ndarray, columns: dict[str, np.ndarray]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["input 14x14", *columns, "target 28x28"]
    rows = len(lr)
    fig, axes = plt.subplots(rows, len(names), figsize=(1.6 * len(names), 1.6 * rows))
    for r in range(rows):
        images = [lr[r, 0], *(v[r, 0] for v in columns.values()), hr[r, 0]]
        for c, (name, image) in enumerate(zip(names, images, strict=True)):
            ax = axes[r, c]
            ax.imshow(np.clip(image, 0, 1), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--test", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--channels", type=int, default=24)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="job.save folder (default: temp)")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    train_lr, train_hr = load("train", args.train)
    test_lr, test_hr = load("test", args.test)
    initial = CarnSR(args.channels)
    hr_np = test_hr.numpy()
    bilinear = F.interpolate(test_lr, scale_factor=2, mode="bilinear", align_corners=False)

    baseline = copy.deepcopy(initial)
    base_seconds = train(baseline, torch.optim.Adam(baseline.parameters(), lr=args.lr),
                         train_lr, train_hr, args.epochs, args.batch, args.seed)
    base_pred = predict(baseline, test_lr)

    job = trainers.attach(copy.deepcopy(initial), example_inputs=test_lr[:1])
    steps = args.epochs * -(-args.train // args.batch)
    options = DHSPGOptions(variant="adam", epsilon=0.9, lam=0.1, warmup_steps=steps // 4)
    opt = job.dhspg(lr=args.lr, target=0.5, options=options)
    dhspg_seconds = train(job.module, opt, train_lr, train_hr, args.epochs, args.batch,
                          args.seed)
    dhspg_pred = predict(job.module, test_lr)
    with tempfile.TemporaryDirectory() as work:
        out = args.out or Path(work)
        metrics = job.save(out)
        runner = session(str(out / "slim.onnx"))
        name = runner.get_inputs()[0].name
        slim_pred = np.concatenate([runner.run(None, {name: test_lr[i:i + 1].numpy()})[0]
                                    for i in range(len(test_lr))])

    rows = [
        ["bilinear", f"{psnr(bilinear.numpy(), hr_np):.2f}", "-", "-", "-", "-"],
        ["baseline (Adam)", f"{psnr(base_pred, hr_np):.2f}", "-", "100.0%", "100.0%",
         f"{base_seconds:.0f}"],
        ["DHSPG 0.5 (Adam)", f"{psnr(dhspg_pred, hr_np):.2f}", f"{psnr(slim_pred, hr_np):.2f}",
         f"{metrics['params']['slim_over_input']:.1%}",
         f"{metrics['macs']['slim_over_input']:.1%}", f"{dhspg_seconds:.0f}"],
    ]
    headers = ["model", "PSNR torch (dB)", "PSNR slim.onnx (dB)", "params", "MACs",
               "train s"]
    table = markdown_table(headers, rows)
    budget = (f"{args.train} train / {args.test} test images, {args.epochs} epochs of batch "
              f"{args.batch}, {args.channels} channels, {torch.get_num_threads()} torch threads")
    markdown = (f"# CARN x2 super-resolution, Fashion-MNIST 14x14 -> 28x28\n\n{budget}; group "
                f"sparsity {metrics['group_sparsity']:.1%}, "
                f"{metrics['channels']['removed']} of {metrics['channels']['prunable']} "
                f"prunable channels removed; slim.onnx validated against the module (max "
                f"abs diff {metrics['module_vs_slim_max_abs']:.2g}). Every conv but the "
                f"exit conv is in a prunable group (the upsampling conv's in blocks of 4 through "
                f"PixelShuffle). train s: wall time on CPU cores shared with other jobs, not "
                f"comparable between rows.\n\n{table}")
    payload = {"budget": vars(args) | {"out": str(args.out)}, "rows": rows, "headers": headers,
               "attach_metrics": metrics, "dhspg_options": options.__dict__}
    path = write_results("carn_superres", payload, markdown)
    show = slice(0, 6)
    plot(RESULTS / "carn_superres.png", test_lr[show].numpy(), hr_np[show],
         {"bilinear": bilinear[show].numpy(), "baseline": base_pred[show],
          "DHSPG full": dhspg_pred[show], "DHSPG slim.onnx": slim_pred[show]})
    print(markdown)
    print(f"\nwrote {path}, {RESULTS / 'carn_superres.md'}, {RESULTS / 'carn_superres.png'}")


if __name__ == "__main__":
    main()
