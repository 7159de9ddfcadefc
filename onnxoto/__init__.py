"""onnxoto: zero-invariant channel groups of ONNX graphs, and slim models that provably match.

Public API: load_model, partition, shrink, validate (compare), report (measure).

The names load on first use (PEP 562): ``import onnxoto`` and the CLI's ``--help`` must not pay
for onnx, onnxruntime and graphsurgeon (seconds) before a command needs them. ``partition``,
``shrink``, ``validate`` and ``report`` are also submodule names; importing a submodule must not
replace the function of the same name (its module stays in ``sys.modules``).
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

from onnxoto.errors import OnnxotoError

if TYPE_CHECKING:
    from onnxoto.graph import load_model
    from onnxoto.metrics import measure, measure_latency
    from onnxoto.partition import Partition, explain, partition
    from onnxoto.shrink import ShrinkOptions, ShrinkResult, save_model, shrink
    from onnxoto.validate import Comparison, compare

    validate = compare
    report = measure

_LAZY = {
    "load_model": ("onnxoto.graph", "load_model"),
    "measure": ("onnxoto.metrics", "measure"),
    "measure_latency": ("onnxoto.metrics", "measure_latency"),
    "report": ("onnxoto.metrics", "measure"),
    "Partition": ("onnxoto.partition", "Partition"),
    "explain": ("onnxoto.partition", "explain"),
    "partition": ("onnxoto.partition", "partition"),
    "Rule": ("onnxoto.rules.base", "Rule"),
    "register_rule": ("onnxoto.rules", "register_rule"),
    "ShrinkOptions": ("onnxoto.shrink", "ShrinkOptions"),
    "ShrinkResult": ("onnxoto.shrink", "ShrinkResult"),
    "save_model": ("onnxoto.shrink", "save_model"),
    "shrink": ("onnxoto.shrink", "shrink"),
    "Comparison": ("onnxoto.validate", "Comparison"),
    "compare": ("onnxoto.validate", "compare"),
    "validate": ("onnxoto.validate", "compare"),
}

__all__ = [
    "Comparison", "OnnxotoError", "Partition", "ShrinkOptions", "ShrinkResult", "compare",
    "Rule", "explain", "load_model", "measure", "measure_latency", "partition", "register_rule",
    "report", "save_model", "shrink", "validate",
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'onnxoto' has no attribute {name!r}")
    module, attribute = _LAZY[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


class _Api(types.ModuleType):
    def __setattr__(self, name: str, value: Any) -> None:
        if name in _LAZY and isinstance(value, types.ModuleType):
            return  # the import system binding a submodule over the API's function
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Api
