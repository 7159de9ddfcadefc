"""Synthetic ONNX graphs of any size, built with onnx.helper and numpy only (no torch).

They exist for scaling benchmarks: the partitioner must stay near-linear in the node count, so we
need graphs of 10^3..10^5 nodes that build in seconds. Everything is made in one pass; weights
are drawn in bulk and sliced, so building is linear in the size.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["OPSET", "mlp_chain", "residual_chain"]

OPSET = 17
NUM_CLASSES = 10
_PADS1 = helper.make_attribute("pads", [1, 1, 1, 1])


def _model(
    name: str,
    nodes: list[onnx.NodeProto],
    inits: list[onnx.TensorProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
) -> onnx.ModelProto:
    """Fill a ModelProto in place (helper.make_graph + make_model would copy the graph twice)."""
    model = onnx.ModelProto(ir_version=8, producer_name="onnxoto.synthetic")
    model.opset_import.append(helper.make_opsetid("", OPSET))
    g = model.graph
    g.name = name
    g.node.extend(nodes)
    g.initializer.extend(inits)
    g.input.extend(inputs)
    g.output.extend(outputs)
    return model


def _conv3x3(x: str, w: str, out: str, name: str) -> onnx.NodeProto:
    """Same-padding 3x3 Conv; the shared ``pads`` attribute is appended, not rebuilt, per node."""
    node = helper.make_node("Conv", [x, w], [out], name)
    node.attribute.append(_PADS1)
    return node


def residual_chain(
    n_blocks: int, channels: int = 8, *, spatial: int = 4, seed: int = 0
) -> onnx.ModelProto:
    """A ResNet-like chain of ``n_blocks`` residual blocks: exactly ``7 * n_blocks + 4`` nodes.

    Layout: input [1, channels, spatial, spatial] -> stem Conv -> blocks of
    [Conv3x3, BatchNormalization, Relu, Conv3x3, BatchNormalization, Add(block input), Relu]
    -> GlobalAveragePool -> Flatten -> Gemm -> output [1, 10]. Float32 random weights, valid BN
    parameters (var > 0); the second BN of each block is damped by 1/sqrt(n_blocks) so values
    stay finite through long chains. Defaults to 8 channels, 4x4 spatial, seed 0.
    """
    if n_blocks < 0:
        raise ValueError(f"n_blocks must be >= 0, got {n_blocks}")
    c = channels
    rng = np.random.default_rng(seed)
    scale = np.float32(1.0 / np.sqrt(9 * c))
    # all block weights drawn at once, then sliced: no per-block RNG calls
    conv_w = rng.standard_normal((n_blocks, 2, c, c, 3, 3), dtype=np.float32) * scale
    bn_scale = rng.uniform(0.5, 1.5, (n_blocks, 2, c)).astype(np.float32)
    bn_scale[:, 1] /= np.float32(np.sqrt(max(n_blocks, 1)))
    bn_bias = rng.standard_normal((n_blocks, 2, c), dtype=np.float32) * np.float32(0.1)
    bn_mean = rng.standard_normal((n_blocks, 2, c), dtype=np.float32) * np.float32(0.1)
    bn_var = rng.uniform(0.5, 1.5, (n_blocks, 2, c)).astype(np.float32)

    inits = [
        numpy_helper.from_array(
            rng.standard_normal((c, c, 3, 3), dtype=np.float32) * scale, "stem.weight"
        ),
        numpy_helper.from_array(np.zeros(c, np.float32), "stem.bias"),
    ]
    nodes = [_conv3x3("input", "stem.weight", "x0", "stem")]
    nodes[0].input.append("stem.bias")
    x = "x0"
    for i in range(n_blocks):
        p = f"block{i}"
        h = x
        for j in range(2):
            w, bn = f"{p}.conv{j + 1}", f"{p}.bn{j + 1}"
            inits += [
                numpy_helper.from_array(conv_w[i, j], f"{w}.weight"),
                numpy_helper.from_array(bn_scale[i, j], f"{bn}.weight"),
                numpy_helper.from_array(bn_bias[i, j], f"{bn}.bias"),
                numpy_helper.from_array(bn_mean[i, j], f"{bn}.running_mean"),
                numpy_helper.from_array(bn_var[i, j], f"{bn}.running_var"),
            ]
            nodes += [
                _conv3x3(h, f"{w}.weight", f"{w}.out", w),
                helper.make_node(
                    "BatchNormalization",
                    [
                        f"{w}.out",
                        f"{bn}.weight",
                        f"{bn}.bias",
                        f"{bn}.running_mean",
                        f"{bn}.running_var",
                    ],
                    [f"{bn}.out"],
                    bn,
                ),
            ]
            h = f"{bn}.out"
            if j == 0:
                nodes.append(helper.make_node("Relu", [h], [f"{p}.relu1"], f"{p}.relu1"))
                h = f"{p}.relu1"
        nodes += [
            helper.make_node("Add", [h, x], [f"{p}.add"], f"{p}.add"),
            helper.make_node("Relu", [f"{p}.add"], [f"{p}.out"], f"{p}.relu2"),
        ]
        x = f"{p}.out"

    inits += [
        numpy_helper.from_array(
            rng.standard_normal((NUM_CLASSES, c), dtype=np.float32) / np.float32(np.sqrt(c)),
            "fc.weight",
        ),
        numpy_helper.from_array(np.zeros(NUM_CLASSES, np.float32), "fc.bias"),
    ]
    nodes += [
        helper.make_node("GlobalAveragePool", [x], ["pooled"], "pool"),
        helper.make_node("Flatten", ["pooled"], ["flat"], "flatten", axis=1),
        helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["output"], "fc", transB=1),
    ]
    return _model(
        f"residual_chain_{n_blocks}",
        nodes,
        inits,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, c, spatial, spatial])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, NUM_CLASSES])],
    )


def mlp_chain(n_layers: int, width: int = 16, seed: int = 0) -> onnx.ModelProto:
    """``n_layers`` x [Gemm (transB=1, torch Linear layout), Relu]: exactly ``2 * n_layers`` nodes.

    Input and output are [1, width]. OTO's 3,404-node MLP is ``mlp_chain(1702)``.
    Defaults to width 16, seed 0.
    """
    if n_layers < 1:
        raise ValueError(f"n_layers must be >= 1, got {n_layers}")
    rng = np.random.default_rng(seed)
    weights = rng.standard_normal((n_layers, width, width), dtype=np.float32)
    weights *= np.float32(np.sqrt(2.0 / width))
    biases = rng.standard_normal((n_layers, width), dtype=np.float32) * np.float32(0.1)
    inits, nodes = [], []
    x = "input"
    for i in range(n_layers):
        p = f"fc{i}"
        inits += [
            numpy_helper.from_array(weights[i], f"{p}.weight"),
            numpy_helper.from_array(biases[i], f"{p}.bias"),
        ]
        out = "output" if i == n_layers - 1 else f"{p}.relu"
        nodes += [
            helper.make_node("Gemm", [x, f"{p}.weight", f"{p}.bias"], [f"{p}.out"], p, transB=1),
            helper.make_node("Relu", [f"{p}.out"], [out], f"{p}.relu"),
        ]
        x = out
    return _model(
        f"mlp_chain_{n_layers}",
        nodes,
        inits,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, width])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, width])],
    )
