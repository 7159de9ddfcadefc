"""The zero-invariance check shared by the partition tests (no shrink involved).

For a group G and removed channels R: zeroing G's producers at R must give the same outputs as
zeroing its producers and consumers at R. A missed member (one branch of an Add) breaks this.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence

import numpy as np
import onnx

from onnxoto import runtime
from onnxoto.groups import Group
from onnxoto.masking import zero_channels


def stable_seed(*parts: object) -> int:
    """A seed from the parts' text that is the same in every process (``hash()`` is salted per
    process, so a failure seeded from it cannot be rerun); print it in the failure message."""
    return zlib.crc32(":".join(str(p) for p in parts).encode())


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
    return joint_invariance_gap(model, [group], {group.id: keep}, inputs)


def joint_invariance_gap(model: onnx.ModelProto, groups: Sequence[Group],
                         masks: Mapping[int, np.ndarray],
                         inputs: dict[str, np.ndarray]) -> tuple[float, float]:
    """invariance_gap with channels of several groups removed at once: three onnxruntime runs
    for all of them, for models too large to check group by group. A member missed by any group
    still leaks its channels into the consumers that the second run zeroes."""
    base = runtime.run(model, inputs)
    producers = runtime.run(zero_channels(model, groups, masks), inputs)
    everything = runtime.run(zero_channels(model, groups, masks,
                                           roles=("producer", "consumer")), inputs)
    return max_rel_diff(producers, everything), max_rel_diff(base, producers)
