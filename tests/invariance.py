"""The zero-invariance check shared by the partition tests (no shrink involved).

For a group G and removed channels R: zeroing G's producers at R must give the same outputs as
zeroing its producers and consumers at R. A missed member (one branch of an Add) breaks this.
"""

from __future__ import annotations

import numpy as np
import onnx

from onnxoto import runtime
from onnxoto.groups import Group
from onnxoto.masking import zero_channels


def max_rel_diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    """Worst |a - b| over outputs, relative to max(1, max|a|) of each output."""
    worst = 0.0
    for name, ref in a.items():
        scale = max(1.0, float(np.abs(ref).max()))
        worst = max(worst, float(np.abs(ref - b[name]).max()) / scale)
    return worst


def removal_mask(group: Group, seed: int) -> np.ndarray:
    """A random keep mask for the group that removes at least one channel."""
    keep = np.random.default_rng(seed).random(group.size) < 0.5
    if keep.all():
        keep[0] = False
    return keep


def invariance_gap(model: onnx.ModelProto, group: Group, keep: np.ndarray,
                   inputs: dict[str, np.ndarray]) -> tuple[float, float]:
    """(gap between producer-zeroed and producer+consumer-zeroed, change vs the full model)."""
    masks = {group.id: keep}
    base = runtime.run(model, inputs)
    producers = runtime.run(zero_channels(model, [group], masks), inputs)
    everything = runtime.run(zero_channels(model, [group], masks,
                                           roles=("producer", "consumer")), inputs)
    return max_rel_diff(producers, everything), max_rel_diff(base, producers)
