"""What slim continuation saves per step: OTOv2's DemoNet against its slim network, side by side.

The slim network is what ``onnxoto train`` continues on after DHSPG's release: the partition's
canonical graph with a share of every prunable group's ZIGs zeroed (one kept per group, as
DHSPG's selection does), shrunk by ``onnxoto.shrink`` (validated) and bound as an OnnxModule.
Each network takes forward + backward + a plain SGD step (the released DHSPG's step) on the same
batches, interleaved step by step so machine load hits both alike; medians are reported.

    python benchmarks/slim_continuation.py [--widths 64 128 256 128] [--share 0.6]
        [--batch 16] [--steps 4]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from benchmarks.common import markdown_table, write_results  # noqa: E402
from models.export import export_onnx  # noqa: E402
from models.zoo import DemoNet  # noqa: E402
from onnxoto.metrics import measure  # noqa: E402
from onnxoto.shrink import shrink  # noqa: E402
from trainers.api import attach  # noqa: E402
from trainers.binding import OnnxModule, write_back  # noqa: E402


def _networks(widths: tuple[int, ...], share: float) -> tuple[dict, dict]:
    """The full DemoNet and its slim network with ``share`` of every group's ZIGs removed."""
    with tempfile.TemporaryDirectory() as tmp:
        job = attach(export_onnx(DemoNet(widths).eval(), (1, 3, 32, 32), Path(tmp) / "d.onnx"))
    zig = job.dhspg().zig
    zero = torch.zeros(zig.num_groups, dtype=torch.bool)
    start = 0
    for size in zig.group_sizes.values():
        zero[start:start + min(int(size * share), size - 1)] = True
        start += size
    zig.zero_(job.params, zero)
    full = write_back(job.module, job.parts.model)
    result = shrink(full, zig.masks(zero=zero), result=job.parts)
    if not result.passed:
        raise SystemExit("the slim network does not match the full one")
    sizes = {name: measure(model) for name, model in (("full", full), ("slim", result.model))}
    nets = {"full": job.module, "slim": OnnxModule(result.model)}
    return nets, {name: {"params": m.params, "macs": m.macs} for name, m in sizes.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs=4, default=[64, 128, 256, 128])
    parser.add_argument("--share", type=float, default=0.6)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    nets, sizes = _networks(tuple(args.widths), args.share)
    optimizers = {name: torch.optim.SGD(net.parameters(), lr=1e-3) for name, net in nets.items()}
    seconds: dict[str, list[float]] = {name: [] for name in nets}
    generator = torch.Generator().manual_seed(0)
    for step in range(args.steps + 1):  # the first step of each (allocation) is not timed
        x = torch.randn(args.batch, 3, 32, 32, generator=generator)
        y = torch.randint(0, 10, (args.batch,), generator=generator)
        for name, net in nets.items():
            started = time.perf_counter()
            optimizers[name].zero_grad()
            F.cross_entropy(net.train()(x), y).backward()
            optimizers[name].step()
            if step:
                seconds[name].append(time.perf_counter() - started)
    median = {name: statistics.median(times) for name, times in seconds.items()}
    rows = [[name, f"{sizes[name]['params']:,}", f"{sizes[name]['macs']:,}",
             f"{sizes[name]['macs'] / sizes['full']['macs']:.1%}", f"{median[name]:.3f}",
             f"{median[name] / median['full']:.2f}"] for name in nets]
    markdown = (f"DemoNet widths {tuple(args.widths)}, 3 x 32 x 32, {args.share:.0%} of every "
                f"group's channels removed (one kept), batch {args.batch}, {args.steps} "
                f"interleaved training steps (forward, backward, SGD), CPU threads "
                f"{torch.get_num_threads()}\n\n"
                + markdown_table(["network", "params", "MACs", "MACs / full", "step s (median)",
                                  "step / full"], rows))
    print(markdown)
    out = write_results("slim_continuation", {"args": vars(args), "sizes": sizes,
                                              "step_seconds": seconds, "median": median},
                        markdown)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
