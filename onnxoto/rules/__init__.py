"""The op registry: one explicit list of rules, each owning its op types. Duplicates refused."""

from __future__ import annotations

import onnx

from onnxoto.rules.attention import AttentionRule
from onnxoto.rules.base import Rule
from onnxoto.rules.elementwise import (
    ClipRule,
    JoinRule,
    NonZeroAtZeroRule,
    PoolRule,
    PReluRule,
    ZeroPreservingRule,
)
from onnxoto.rules.layout import (
    ConcatRule,
    DepthToSpaceRule,
    FlattenRule,
    GatherRule,
    PadRule,
    ReshapeRule,
    ResizeRule,
    ShapeOnlyRule,
    SliceRule,
    SplitRule,
    SqueezeRule,
    TransposeRule,
)
from onnxoto.rules.norms import (
    ChannelMixingNormRule,
    GroupNormRule,
    PerChannelNormRule,
    ReduceRule,
    SoftmaxRule,
)
from onnxoto.rules.stems import ConvRule, ConvTransposeRule, GemmRule, MatMulRule

RULES: tuple[Rule, ...] = (
    ConvRule(), ConvTransposeRule(), GemmRule(), MatMulRule(), AttentionRule(),
    ZeroPreservingRule(), NonZeroAtZeroRule(), ClipRule(), PReluRule(), PoolRule(), JoinRule(),
    PerChannelNormRule(), ChannelMixingNormRule(), GroupNormRule(), SoftmaxRule(), ReduceRule(),
    FlattenRule(), ReshapeRule(), TransposeRule(), SqueezeRule(), ConcatRule(), SplitRule(),
    SliceRule(), GatherRule(), PadRule(), ResizeRule(), ShapeOnlyRule(), DepthToSpaceRule(),
)

DEFAULT_DOMAINS = ("", "ai.onnx")


def build_registry(rules: tuple[Rule, ...]) -> dict[str, Rule]:
    """op_type -> rule; two rules claiming one op type is a programming error."""
    registry: dict[str, Rule] = {}
    for rule in rules:
        for op_type in rule.op_types:
            if op_type in registry:
                raise ValueError(f"op type {op_type} claimed by {type(registry[op_type]).__name__}"
                                 f" and {type(rule).__name__}")
            registry[op_type] = rule
    return registry


REGISTRY = build_registry(RULES)


def rule_for(node: onnx.NodeProto, opset: int) -> Rule | None:
    """The rule for a node, or None when onnxoto does not know it (then it is a barrier)."""
    if node.domain not in DEFAULT_DOMAINS:
        return None
    rule = REGISTRY.get(node.op_type)
    if rule is None or not rule.min_opset <= opset <= rule.max_opset:
        return None
    return rule
