"""Training for onnxoto: DHSPG and WoodFisher over the zero-invariant groups of an ONNX graph.

``attach`` is the front door for users' own modules and loops (see ``trainers.api``); the CLI
trainer (``python -m trainers`` / ``onnxoto train``) is built on it. Names load lazily so that
``python -m trainers --help`` does not pay for torch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DHSPGOptions", "Job", "attach"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from trainers import api

        return getattr(api, name)
    raise AttributeError(f"module 'trainers' has no attribute {name!r}")
