"""Output equivalence of two models under onnxruntime: the proof that a slim model is right.

Both models get the same seeded random inputs; an output passes when
``max|candidate - reference| <= atol + rtol * max|reference|`` on every sample. The tolerance scales
with the output's largest magnitude rather than per element, so near-zero entries of a large output
do not fail on float rounding while a real change still does.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx

from onnxoto import runtime
from onnxoto.errors import OnnxotoError
from onnxoto.graph import ModelLike, load_model


@dataclass(frozen=True)
class Tolerance:
    """An output passes when ``max|candidate - reference| <= atol + rtol * max|reference|``."""

    rtol: float
    atol: float


# The one place defaults live (compare, Comparison, ShrinkOptions and the CLI all read it).
# Removing a channel instead of zeroing it changes the summation order of every reduction that
# read it, so a correct slim model still differs by rounding: a few units in the last place of
# the output's scale, times the depth of the graph. float32 keeps the documented 1e-4 / 1e-5
# (hundreds of ulps: deep graphs); half precision has 2^-10 (float16) and 2^-7 (bfloat16)
# relative precision and rounds every intermediate, so the same budget in ulps is 1e-2 and 5e-2;
# float64 runs in float64 and can be held tighter. Integer and bool outputs must match exactly.
# A wrong channel changes an output by the order of its scale, far above all of these.
FLOAT32_TOLERANCE = Tolerance(rtol=1e-4, atol=1e-5)
DEFAULT_TOLERANCES: dict[int, Tolerance] = {
    onnx.TensorProto.FLOAT: FLOAT32_TOLERANCE,
    onnx.TensorProto.FLOAT16: Tolerance(rtol=1e-2, atol=1e-3),
    onnx.TensorProto.BFLOAT16: Tolerance(rtol=5e-2, atol=1e-2),
    onnx.TensorProto.DOUBLE: Tolerance(rtol=1e-7, atol=1e-9),
}
EXACT = Tolerance(rtol=0.0, atol=0.0)


def default_tolerance(elem_type: int) -> Tolerance:
    """The default tolerance for outputs of an ONNX element type (float32's for unknown floats,
    exact for integers and bools)."""
    if elem_type in DEFAULT_TOLERANCES:
        return DEFAULT_TOLERANCES[elem_type]
    dtype = onnx.helper.tensor_dtype_to_np_dtype(elem_type) if elem_type else None
    if dtype is not None and np.dtype(dtype).kind in "biu":
        return EXACT
    return FLOAT32_TOLERANCE


def resolve_tolerance(elem_type: int, rtol: float | None, atol: float | None) -> Tolerance:
    """Given values win; None takes the default of the output's element type."""
    default = default_tolerance(elem_type)
    return Tolerance(rtol=default.rtol if rtol is None else rtol,
                     atol=default.atol if atol is None else atol)


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
    rtol: float = FLOAT32_TOLERANCE.rtol
    atol: float = FLOAT32_TOLERANCE.atol
    dtype: str = "float32"

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
            "dtype": self.dtype,
            "rtol": self.rtol,
            "atol": self.atol,
        }


@dataclass
class Comparison:
    """Per-output diffs of a candidate against a reference; truthy when every output passed.

    ``rtol``/``atol`` are what the caller asked for (None: each output's dtype default); the
    tolerance each output was held to is on its OutputDiff.
    """

    outputs: list[OutputDiff] = field(default_factory=list)
    rtol: float | None = None
    atol: float | None = None
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
        return "\n".join(_summary_line(out) for out in self.outputs)

    def tolerances(self) -> str:
        """The tolerances used, e.g. "float32 rtol 0.0001 atol 1e-05" (one entry per dtype)."""
        return describe_tolerances(out.to_dict() for out in self.outputs)


def describe_tolerances(outputs: Iterable[Mapping]) -> str:
    """One "dtype rtol R atol A" entry per distinct tolerance of OutputDiff dicts."""
    seen = dict.fromkeys(f"{o['dtype']} rtol {o['rtol']:g} atol {o['atol']:g}" for o in outputs)
    return ", ".join(seen) or "none"


def _summary_line(out: OutputDiff) -> str:
    verdict = "PASS" if out.passed else "FAIL"
    shape = "x".join(str(d) for d in out.shape) or "scalar"
    limit = out.atol + out.rtol * out.ref_scale
    return (
        f"{verdict} {out.name} [{shape}]: max_abs {out.max_abs:.3g}, max_rel {out.max_rel:.3g}, "
        f"limit {limit:.3g} ({out.dtype} atol {out.atol:g} + rtol {out.rtol:g} x max|ref| "
        f"{out.ref_scale:.3g}), worst sample {out.sample}"
    )


def compare(
    reference: ModelLike,
    candidate: ModelLike,
    *,
    samples: int = 3,
    seed: int = 0,
    rtol: float | None = None,
    atol: float | None = None,
    providers: Sequence[str] | None = None,
    dynamic_dim: int = 1,
    shapes: Mapping[str, Sequence[int]] | None = None,
) -> Comparison:
    """Run both models on the same seeded inputs and compare every output by name.

    Inputs follow the reference's declared inputs; sample i uses seed + i, and every dynamic dim
    (batch included) is ``dynamic_dim``. The candidate may drop inputs it no longer reads. Output
    names or shapes that differ raise OnnxotoError; NaN anywhere fails. Defaults: 3 samples, seed 0,
    rtol and atol per output dtype (``DEFAULT_TOLERANCES``: float32 1e-4 and 1e-5), CPU, dynamic
    dims 1, the declared input shapes unless ``shapes`` gives them by input name.
    """
    if samples < 1:
        raise OnnxotoError(f"compare needs at least 1 sample, got {samples}")
    ref_model, cand_model = load_model(reference), load_model(candidate)
    names = _matching_outputs(ref_model, cand_model)
    types = {o.name: o.type.tensor_type.elem_type for o in ref_model.graph.output}
    limits = {name: resolve_tolerance(types[name], rtol, atol) for name in names}
    cand_inputs = _candidate_inputs(ref_model, cand_model)

    def inputs(sample: int) -> dict[str, np.ndarray]:
        return runtime.random_inputs(ref_model, seed=seed + sample, batch=dynamic_dim,
                                     dynamic_dim=dynamic_dim, shapes=shapes)

    first = inputs(0)  # input sizes are checked before onnxruntime sets anything up
    ref_session = runtime.session(ref_model, providers=providers)
    cand_session = runtime.session(cand_model, providers=providers)
    worst: dict[str, OutputDiff] = {}
    for sample in range(samples):
        feed = first if sample == 0 else inputs(sample)
        ref_out = runtime.run(ref_session, feed)
        cand_out = runtime.run(cand_session, {k: v for k, v in feed.items() if k in cand_inputs})
        for name in names:
            limit = limits[name]
            diff = output_diff(name, ref_out[name], cand_out[name], rtol=limit.rtol,
                               atol=limit.atol)
            diff.sample = sample
            diff.dtype = _type_name(types[name])
            if name not in worst or _badness(diff) > _badness(worst[name]):
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
        rtol=rtol,
        atol=atol,
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


def _type_name(elem_type: int) -> str:
    """numpy's name of an ONNX element type (float32, float16, bfloat16, int64...)."""
    if not elem_type:
        return "unknown"
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).name


def _badness(diff: OutputDiff) -> float:
    """How far over its limit a diff is (> 1 fails); non-finite diffs are the worst."""
    if not (math.isfinite(diff.max_abs) and math.isfinite(diff.ref_scale)):
        return math.inf
    limit = diff.atol + diff.rtol * diff.ref_scale
    if limit == 0:
        return 0.0 if diff.max_abs == 0 else math.inf
    return diff.max_abs / limit


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None
