"""Output equivalence of two models under onnxruntime: the check that a slim model is right.

Both models get the same inputs (seeded random ones, or real ones from an .npz). The default
"scale" check passes an output when ``max|candidate - reference| <= atol + rtol * max|reference|``
on every sample: the tolerance scales with the output's largest magnitude rather than per
element, so near-zero entries of a large output do not fail on float rounding while a real change
still does. The "elementwise" check (Polygraphy's) holds every element to
``|candidate - reference| <= atol + rtol * |reference|`` and counts the elements over, for
deployments that care about small outputs too.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields

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
CHECKS = ("scale", "elementwise")


@dataclass(frozen=True)
class CompareOptions:
    """How two models are compared.

    ``check``: "scale" (one limit per output, from max|reference|) or "elementwise" (each
    element against its own |reference|). ``provider``: "cpu", "cuda", "tensorrt" or an
    onnxruntime provider name (see runtime.providers_for). ``data``: real inputs (an .npz path
    or a mapping, keys = input names) used as the one sample instead of random ones.
    ``shapes``: whole input shapes by name for the random inputs. Defaults: 3 samples from seed
    0, each output dtype's tolerance (DEFAULT_TOLERANCES), the scale check, CPU, dynamic dims 1,
    the declared shapes, random inputs.
    """

    samples: int = 3
    seed: int = 0
    rtol: float | None = None
    atol: float | None = None
    check: str = "scale"
    provider: str = "cpu"
    dynamic_dim: int = 1
    shapes: Mapping[str, Sequence[int]] | None = None
    data: Mapping[str, np.ndarray] | str | os.PathLike | None = None

    def __post_init__(self) -> None:
        if self.samples < 1:
            raise OnnxotoError(f"compare needs at least 1 sample, got {self.samples}")
        if self.check not in CHECKS:
            raise OnnxotoError(f"unknown check '{self.check}'; use one of {', '.join(CHECKS)}")
        if self.data is not None and self.shapes:
            raise OnnxotoError("give real inputs (--data) or input shapes (--input-shape), not "
                               "both: the data's arrays fix the shapes")


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
    check: str = "scale"
    over: int = 0
    elements: int = 0
    ratio: float = 0.0

    def to_dict(self) -> dict:
        """JSON-ready; NaN and infinities become null (``passed`` is then false). ``ratio`` is
        the worst diff over its limit (> 1 fails); ``over`` counts elements over their limit
        (elementwise check only)."""
        out = {
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
            "check": self.check,
            "ratio": _finite_or_none(self.ratio),
        }
        if self.check == "elementwise":
            out.update(over=self.over, elements=self.elements,
                       over_share=self.over / self.elements if self.elements else 0.0)
        return out


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
    check: str = "scale"
    provider: str = "CPUExecutionProvider"
    inputs: str = "random"

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
            "check": self.check,
            "provider": self.provider,
            "inputs": self.inputs,
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
    if out.check == "elementwise":
        share = out.over / out.elements if out.elements else 0.0
        return (f"{verdict} {out.name} [{shape}]: max_abs {out.max_abs:.3g}, max_rel "
                f"{out.max_rel:.3g}, {out.over:,} of {out.elements:,} elements ({share:.2%}) "
                f"over {out.dtype} atol {out.atol:g} + rtol {out.rtol:g} x |ref|, worst "
                f"sample {out.sample}")
    limit = out.atol + out.rtol * out.ref_scale
    return (
        f"{verdict} {out.name} [{shape}]: max_abs {out.max_abs:.3g}, max_rel {out.max_rel:.3g}, "
        f"limit {limit:.3g} ({out.dtype} atol {out.atol:g} + rtol {out.rtol:g} x max|ref| "
        f"{out.ref_scale:.3g}), worst sample {out.sample}"
    )


def compare(
    reference: ModelLike | runtime.WithTensors | runtime.HandedOver,
    candidate: ModelLike,
    options: CompareOptions | None = None,
    *,
    samples: int = 3,
    seed: int = 0,
    rtol: float | None = None,
    atol: float | None = None,
    dynamic_dim: int = 1,
    shapes: Mapping[str, Sequence[int]] | None = None,
) -> Comparison:
    """Run both models on the same inputs and compare every output by name.

    ``options`` says how (see CompareOptions); the keywords are shorthands for its most used
    fields when no ``options`` is given. Inputs follow the reference's declared inputs; random
    sample i uses seed + i; with ``options.data`` the given inputs are the one sample. The
    candidate may drop inputs it no longer reads. Output names or shapes that differ raise
    OnnxotoError; NaN anywhere fails. A ``runtime.WithTensors`` reference runs its model with
    the tensors it gives (a zeroed reference without a zeroed copy of the model); a
    ``runtime.HandedOver`` one runs the model it wrote out.
    """
    given = {"samples": samples, "seed": seed, "rtol": rtol, "atol": atol,
             "dynamic_dim": dynamic_dim, "shapes": shapes}
    if options is None:
        options = CompareOptions(**given)
    elif given != _SHORTHAND_DEFAULTS:
        raise TypeError("compare() takes options or its keyword shorthands, not both")
    ref_model = _model_of(reference)
    cand_model = load_model(candidate)
    _matching_outputs(ref_model, cand_model)  # mismatches fail before anything runs
    _candidate_inputs(ref_model, cand_model)
    return _check(_record(reference, ref_model, options), cand_model)


@dataclass
class Recording:
    """A reference model's outputs on the comparison's inputs: what ``check`` holds a candidate
    to. Recording first lets a caller drop the reference's session (and build the candidate)
    before the candidate runs, so the two models never share the memory peak."""

    model: onnx.ModelProto
    options: CompareOptions
    feeds: list[dict[str, np.ndarray]]
    outputs: list[dict[str, np.ndarray]]
    provider: str


def record(reference: ModelLike | runtime.WithTensors | runtime.HandedOver,
           options: CompareOptions | None = None) -> Recording:
    """Run the reference on the inputs ``options`` describe (defaults: CompareOptions())."""
    return _record(reference, _model_of(reference), options or CompareOptions())


def check(recording: Recording, candidate: ModelLike) -> Comparison:
    """Run the candidate on the recorded inputs and compare every output by name (see
    compare)."""
    return _check(recording, load_model(candidate))


def _model_of(reference: ModelLike | runtime.WithTensors | runtime.HandedOver,
              ) -> onnx.ModelProto:
    if isinstance(reference, (runtime.WithTensors, runtime.HandedOver)):
        return reference.model
    return load_model(reference)


def _record(reference: ModelLike | runtime.WithTensors | runtime.HandedOver,
            ref_model: onnx.ModelProto,
            options: CompareOptions) -> Recording:
    if options.data is not None:
        feeds = [runtime.given_inputs(ref_model, options.data)]
    else:  # input sizes are checked before onnxruntime sets anything up
        feeds = [runtime.random_inputs(ref_model, seed=options.seed + i,
                                       batch=options.dynamic_dim,
                                       dynamic_dim=options.dynamic_dim, shapes=options.shapes)
                 for i in range(options.samples)]
    handed = isinstance(reference, (runtime.WithTensors, runtime.HandedOver))
    source = reference if handed else ref_model
    outputs, provider = _run_all(source, feeds, runtime.providers_for(options.provider))
    return Recording(ref_model, options, feeds, outputs, provider)


def _check(recording: Recording, cand_model: onnx.ModelProto) -> Comparison:
    ref_model, options = recording.model, recording.options
    names = _matching_outputs(ref_model, cand_model)
    types = {o.name: o.type.tensor_type.elem_type for o in ref_model.graph.output}
    limits = {name: resolve_tolerance(types[name], options.rtol, options.atol) for name in names}
    cand_inputs = _candidate_inputs(ref_model, cand_model)
    cand_feeds = [{k: v for k, v in feed.items() if k in cand_inputs} for feed in recording.feeds]
    cand_outs, _ = _run_all(cand_model, cand_feeds, runtime.providers_for(options.provider))
    worst: dict[str, OutputDiff] = {}
    for sample, (ref_out, cand_out) in enumerate(zip(recording.outputs, cand_outs, strict=True)):
        for name in names:
            limit = limits[name]
            diff = output_diff(name, ref_out[name], cand_out[name], rtol=limit.rtol,
                               atol=limit.atol, check=options.check)
            diff.sample = sample
            diff.dtype = _type_name(types[name])
            if name not in worst or diff.ratio > worst[name].ratio:
                worst[name] = diff
    return Comparison(
        outputs=[worst[name] for name in names],
        rtol=options.rtol,
        atol=options.atol,
        samples=len(recording.feeds),
        seed=options.seed,
        check=options.check,
        provider=recording.provider,
        inputs="random" if options.data is None else _describe_data(options.data),
    )


def _run_all(model: onnx.ModelProto | runtime.WithTensors | runtime.HandedOver,
             feeds: list[dict[str, np.ndarray]], providers: list[str],
             ) -> tuple[list[dict[str, np.ndarray]], str]:
    """Every sample's outputs, and the provider that ran them. One model's session at a time:
    the reference's is gone before the candidate's is built, so the two never share the
    peak; no weight copies in faster layouts (see runtime.session)."""
    sess = runtime.session(model, providers=providers, weight_copies=False)
    outputs = [runtime.run(sess, feed) for feed in feeds]
    provider = sess.get_providers()[0]
    del sess  # refcounted: freed here, no gc pass needed
    return outputs, provider


_SHORTHAND_DEFAULTS = {f.name: f.default for f in fields(CompareOptions)
                       if f.name in ("samples", "seed", "rtol", "atol", "dynamic_dim", "shapes")}


def _describe_data(data: Mapping[str, np.ndarray] | str | os.PathLike) -> str:
    return str(data) if isinstance(data, (str, os.PathLike)) else "given arrays"


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
    name: str, reference: np.ndarray, candidate: np.ndarray, *, rtol: float, atol: float,
    check: str = "scale",
) -> OutputDiff:
    """Diff of one output array pair; shapes must match exactly (no broadcasting). Defaults to
    the scale check."""
    ref, cand = np.asarray(reference), np.asarray(candidate)
    if ref.shape != cand.shape:
        raise OnnxotoError(
            f"output '{name}': shape {list(ref.shape)} in the reference but "
            f"{list(cand.shape)} in the candidate"
        )
    diff = OutputDiff(name=name, max_abs=0.0, max_rel=0.0, ref_scale=0.0, passed=True,
                      shape=tuple(int(d) for d in ref.shape), rtol=rtol, atol=atol, check=check,
                      elements=int(ref.size))
    if ref.size == 0:
        return diff
    if ref.dtype.kind not in "biuf" or cand.dtype.kind not in "biuf":
        same = np.array_equal(ref, cand)
        diff.max_abs = diff.ratio = 0.0 if same else math.inf
        diff.over = 0 if same else int(ref.size)
        diff.passed = same
        return diff
    ref64, cand64 = ref.astype(np.float64), cand.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        abs_diff = np.abs(cand64 - ref64)
        abs_ref = np.abs(ref64)
        diff.max_abs = float(np.max(abs_diff))
        diff.ref_scale = float(np.max(abs_ref))
        if check == "elementwise":
            _elementwise(diff, abs_diff, abs_ref)
        else:
            _scale(diff)
    return diff


def _scale(diff: OutputDiff) -> None:
    scale, max_abs = diff.ref_scale, diff.max_abs
    if scale > 0 or math.isnan(scale):
        diff.max_rel = max_abs / scale
    else:
        diff.max_rel = 0.0 if max_abs == 0 else math.inf
    finite = math.isfinite(max_abs) and math.isfinite(scale)
    limit = diff.atol + diff.rtol * scale
    diff.passed = finite and max_abs <= limit
    if not finite:
        diff.ratio = math.inf
    elif limit == 0:
        diff.ratio = 0.0 if max_abs == 0 else math.inf
    else:
        diff.ratio = max_abs / limit


def _elementwise(diff: OutputDiff, abs_diff: np.ndarray, abs_ref: np.ndarray) -> None:
    """Per element: over when ``|c - r| > atol + rtol * |r|`` or not finite; max_rel over the
    elements with a nonzero reference."""
    limit = diff.atol + diff.rtol * abs_ref
    bad = ~(abs_diff <= limit) | ~np.isfinite(abs_ref)  # NaN compares False: counted over
    diff.over = int(np.count_nonzero(bad))
    diff.passed = diff.over == 0
    nonzero = abs_ref > 0
    diff.max_rel = float(np.max(abs_diff[nonzero] / abs_ref[nonzero])) if nonzero.any() else (
        0.0 if diff.max_abs == 0 else math.inf)
    ratios = abs_diff / limit  # x / 0 is inf, 0 / 0 is NaN: an exact zero is not over
    ratios[abs_diff == 0] = 0.0
    diff.ratio = float(np.nan_to_num(np.max(ratios), nan=np.inf))


def _type_name(elem_type: int) -> str:
    """numpy's name of an ONNX element type (float32, float16, bfloat16, int64...)."""
    if not elem_type:
        return "unknown"
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).name


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None
