"""Output equivalence of two models under onnxruntime: the proof that a slim model is right.

Both models get the same seeded random inputs; an output passes when
``max|candidate - reference| <= atol + rtol * max|reference|`` on every sample. The tolerance scales
with the output's largest magnitude rather than per element, so near-zero entries of a large output
do not fail on float rounding while a real change still does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx

from onnxoto import runtime
from onnxoto.errors import OnnxotoError
from onnxoto.graph import ModelLike, load_model


@dataclass
class OutputDiff:
    """The worst sample of one output: the one furthest over (or closest to) its limit."""

    name: str
    max_abs: float
    max_rel: float
    ref_scale: float
    passed: bool
    shape: tuple[int, ...] = ()
    sample: int = 0

    def to_dict(self) -> dict:
        """JSON-ready; NaN and infinities become null (``passed`` is then false)."""
        return {
            "name": self.name,
            "max_abs": _finite_or_none(self.max_abs),
            "max_rel": _finite_or_none(self.max_rel),
            "ref_scale": _finite_or_none(self.ref_scale),
            "passed": self.passed,
            "shape": list(self.shape),
            "sample": self.sample,
        }


@dataclass
class Comparison:
    """Per-output diffs of a candidate against a reference; truthy when every output passed."""

    outputs: list[OutputDiff] = field(default_factory=list)
    rtol: float = 1e-4
    atol: float = 1e-5
    samples: int = 3
    seed: int = 0

    @property
    def passed(self) -> bool:
        return all(out.passed for out in self.outputs)

    def __bool__(self) -> bool:
        return self.passed

    def to_dict(self) -> dict:
        return {
            "passed": self.passed,
            "rtol": self.rtol,
            "atol": self.atol,
            "samples": self.samples,
            "seed": self.seed,
            "outputs": [out.to_dict() for out in self.outputs],
        }

    def summary(self) -> str:
        """One line per output: verdict, diffs and the limit they were held to."""
        return "\n".join(_summary_line(out, self.rtol, self.atol) for out in self.outputs)


def _summary_line(out: OutputDiff, rtol: float, atol: float) -> str:
    verdict = "PASS" if out.passed else "FAIL"
    shape = "x".join(str(d) for d in out.shape) or "scalar"
    limit = atol + rtol * out.ref_scale
    return (
        f"{verdict} {out.name} [{shape}]: max_abs {out.max_abs:.3g}, max_rel {out.max_rel:.3g}, "
        f"limit {limit:.3g} (atol {atol:g} + rtol {rtol:g} x max|ref| {out.ref_scale:.3g}), "
        f"worst sample {out.sample}"
    )


def compare(
    reference: ModelLike,
    candidate: ModelLike,
    *,
    samples: int = 3,
    seed: int = 0,
    rtol: float = 1e-4,
    atol: float = 1e-5,
    providers: Sequence[str] | None = None,
    dynamic_dim: int = 1,
) -> Comparison:
    """Run both models on the same seeded inputs and compare every output by name.

    Inputs follow the reference's declared inputs; sample i uses seed + i, and every dynamic dim
    (batch included) is ``dynamic_dim``. The candidate may drop inputs it no longer reads. Output
    names or shapes that differ raise OnnxotoError; NaN anywhere fails. Defaults: 3 samples, seed 0,
    rtol 1e-4, atol 1e-5, CPU, dynamic dims 1.
    """
    if samples < 1:
        raise OnnxotoError(f"compare needs at least 1 sample, got {samples}")
    ref_model, cand_model = load_model(reference), load_model(candidate)
    names = _matching_outputs(ref_model, cand_model)
    cand_inputs = _candidate_inputs(ref_model, cand_model)
    ref_session = runtime.session(ref_model, providers=providers)
    cand_session = runtime.session(cand_model, providers=providers)
    worst: dict[str, OutputDiff] = {}
    for sample in range(samples):
        feed = runtime.random_inputs(
            ref_model, seed=seed + sample, batch=dynamic_dim, dynamic_dim=dynamic_dim
        )
        ref_out = runtime.run(ref_session, feed)
        cand_out = runtime.run(cand_session, {k: v for k, v in feed.items() if k in cand_inputs})
        for name in names:
            diff = output_diff(name, ref_out[name], cand_out[name], rtol=rtol, atol=atol)
            diff.sample = sample
            if name not in worst or _badness(diff, rtol, atol) > _badness(worst[name], rtol, atol):
                worst[name] = diff
    return Comparison(
        outputs=[worst[name] for name in names],
        rtol=rtol,
        atol=atol,
        samples=samples,
        seed=seed,
    )


def _matching_outputs(reference: onnx.ModelProto, candidate: onnx.ModelProto) -> list[str]:
    ref_names = [o.name for o in reference.graph.output]
    cand_names = {o.name for o in candidate.graph.output}
    missing = [n for n in ref_names if n not in cand_names]
    extra = sorted(cand_names - set(ref_names))
    if missing or extra:
        raise OnnxotoError(
            f"output names differ: candidate lacks {missing or 'none'}, "
            f"has extra {extra or 'none'}; both models must have the same outputs"
        )
    return ref_names


def _candidate_inputs(reference: onnx.ModelProto, candidate: onnx.ModelProto) -> set[str]:
    ref_inputs = _real_inputs(reference)
    cand_inputs = _real_inputs(candidate)
    unknown = sorted(cand_inputs - ref_inputs)
    if unknown:
        raise OnnxotoError(f"candidate needs inputs the reference does not have: {unknown}")
    return cand_inputs


def _real_inputs(model: onnx.ModelProto) -> set[str]:
    initializers = {t.name for t in model.graph.initializer}
    return {i.name for i in model.graph.input if i.name not in initializers}


def output_diff(
    name: str, reference: np.ndarray, candidate: np.ndarray, *, rtol: float, atol: float
) -> OutputDiff:
    """Diff of one output array pair; shapes must match exactly (no broadcasting)."""
    ref, cand = np.asarray(reference), np.asarray(candidate)
    if ref.shape != cand.shape:
        raise OnnxotoError(
            f"output '{name}': shape {list(ref.shape)} in the reference but "
            f"{list(cand.shape)} in the candidate"
        )
    max_abs, scale = _max_abs_and_scale(ref, cand)
    if scale > 0 or math.isnan(scale):
        max_rel = max_abs / scale
    else:
        max_rel = 0.0 if max_abs == 0 else math.inf
    passed = math.isfinite(max_abs) and math.isfinite(scale) and max_abs <= atol + rtol * scale
    return OutputDiff(
        name=name,
        max_abs=max_abs,
        max_rel=max_rel,
        ref_scale=scale,
        passed=passed,
        shape=tuple(int(d) for d in ref.shape),
    )


def _max_abs_and_scale(ref: np.ndarray, cand: np.ndarray) -> tuple[float, float]:
    if ref.size == 0:
        return 0.0, 0.0
    if ref.dtype.kind not in "biuf" or cand.dtype.kind not in "biuf":
        return (0.0 if np.array_equal(ref, cand) else math.inf), 0.0
    ref64, cand64 = ref.astype(np.float64), cand.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        max_abs = float(np.max(np.abs(cand64 - ref64)))
    return max_abs, float(np.max(np.abs(ref64)))


def _badness(diff: OutputDiff, rtol: float, atol: float) -> float:
    """How far over its limit a diff is (> 1 fails); non-finite diffs are the worst."""
    if not (math.isfinite(diff.max_abs) and math.isfinite(diff.ref_scale)):
        return math.inf
    limit = atol + rtol * diff.ref_scale
    if limit == 0:
        return 0.0 if diff.max_abs == 0 else math.inf
    return diff.max_abs / limit


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None
