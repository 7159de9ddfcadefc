"""Run an ONNX graph as a trainable torch module, and write the trained weights back.

Why an interpreter of our own: training must not depend on which framework wrote the ONNX file,
and converters we measured (onnx2torch) fail on dynamo exports and leave MatMul weights frozen.
``OnnxModule`` executes the nodes in graph order with torch ops; every float initializer that
feeds a differentiable input is an ``nn.Parameter`` keyed by its ONNX name, so pruning code can
talk about ``conv1.weight`` exactly as ``partition.json`` does.

All knowledge of an op lives in one place: ``OPS`` maps op_type to a small function
``(ctx, node, inputs) -> outputs``, registered with ``@op``, which also declares the inputs that
are configuration (shapes, scales, running statistics) rather than trainable data.

Layout: ``registry`` (the op table and node/context types), ``convert`` (ONNX tensors and
arguments as torch values), ``ops/`` (kernels by family: elementwise, nn, shape, resize),
``module`` (``OnnxModule``), ``writeback`` (values back into ONNX, binding a user's module).
"""

from trainers.binding.module import OnnxModule
from trainers.binding.ops import OPS
from trainers.binding.registry import BindingError, OnnxNode, RunContext, UnsupportedOp, op
from trainers.binding.writeback import bind_state_dict, copy_to_onnx, write_back

__all__ = [
    "OPS",
    "BindingError",
    "OnnxModule",
    "OnnxNode",
    "RunContext",
    "UnsupportedOp",
    "bind_state_dict",
    "copy_to_onnx",
    "op",
    "write_back",
]
