"""The kernel families, in one list: importing this package registers every kernel in ``OPS``.

A kernel is ``(ctx, node, inputs) -> outputs`` registered with ``@op`` (see
``trainers.binding.registry``); a user adds an op the same way, before building a module.
"""

from trainers.binding.ops import elementwise, nn, resize, shape
from trainers.binding.registry import OPS

FAMILIES = (elementwise, nn, shape, resize)

__all__ = ["FAMILIES", "OPS"]
