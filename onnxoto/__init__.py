"""onnxoto: zero-invariant channel groups of ONNX graphs, and slim models that provably match.

Public API: load_model, partition, shrink, validate (compare), report (measure).
"""

from onnxoto.errors import OnnxotoError
from onnxoto.graph import load_model
from onnxoto.metrics import measure, measure_latency
from onnxoto.partition import Partition, explain, partition
from onnxoto.shrink import ShrinkOptions, ShrinkResult, save_model, shrink
from onnxoto.validate import Comparison, compare

validate = compare
report = measure

__all__ = [
    "Comparison", "OnnxotoError", "Partition", "ShrinkOptions", "ShrinkResult", "compare",
    "explain", "load_model", "measure", "measure_latency", "partition", "report", "save_model",
    "shrink", "validate",
]
