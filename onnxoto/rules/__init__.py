"""The op registry: one explicit list of rules, each owning its op types, keyed by
(domain, op_type). Users add rules for their own ops with ``register_rule``; duplicates refused.
"""

from __future__ import annotations

import onnx

from onnxoto.errors import OnnxotoError
from onnxoto.rules.attention import AttentionRule
from onnxoto.rules.base import Rule
from onnxoto.rules.elementwise import (
    CastLikeRule,
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
    ZeroPreservingRule(), CastLikeRule(), NonZeroAtZeroRule(), ClipRule(), PReluRule(),
    PoolRule(), JoinRule(),
    PerChannelNormRule(), ChannelMixingNormRule(), GroupNormRule(), SoftmaxRule(), ReduceRule(),
    FlattenRule(), ReshapeRule(), TransposeRule(), SqueezeRule(), ConcatRule(), SplitRule(),
    SliceRule(), GatherRule(), PadRule(), ResizeRule(), ShapeOnlyRule(), DepthToSpaceRule(),
)

DEFAULT_DOMAINS = ("", "ai.onnx")
Key = tuple[str, str]


def _domain(domain: str) -> str:
    """"ai.onnx" and "" name the same default domain; the registry stores it as ""."""
    return "" if domain in DEFAULT_DOMAINS else domain


def build_registry(rules: tuple[Rule, ...], *, domain: str = "") -> dict[Key, Rule]:
    """(domain, op_type) -> rule; two rules claiming one op type is a programming error."""
    registry: dict[Key, Rule] = {}
    for rule in rules:
        for op_type in rule.op_types:
            key = (_domain(domain), op_type)
            if key in registry:
                raise ValueError(f"op type {op_type} claimed by {type(registry[key]).__name__}"
                                 f" and {type(rule).__name__}")
            registry[key] = rule
    return registry


REGISTRY = build_registry(RULES)


def register_rule(rule: Rule, *, domain: str = "", replace: bool = False) -> None:
    """Teach partition and shrink an op onnxoto lacks (a custom op, or a standard op with no
    rule): every op type in ``rule.op_types`` of ``domain`` is traced and rewritten by ``rule``
    instead of being a barrier.

    An op that already has a rule is refused unless ``replace=True``: a second registration
    silently winning would change every partition of models using that op, and two packages
    registering one op should hear of each other rather than depend on import order.
    For ``domain`` other than the default ("" or "ai.onnx"), the rule's opset range is not
    checked (a custom domain versions itself). Defaults to the default domain, no replacing.
    """
    if not isinstance(rule, Rule) or not rule.op_types:
        raise OnnxotoError(f"register_rule: {rule!r} is not an onnxoto Rule with op_types; "
                           f"subclass onnxoto.rules.base.Rule and set op_types")
    keys = [(_domain(domain), op_type) for op_type in rule.op_types]
    taken = [key for key in keys if key in REGISTRY and REGISTRY[key] is not rule]
    if taken and not replace:
        where, op_type = taken[0]
        raise OnnxotoError(f"register_rule: op {op_type} of domain '{where or 'ai.onnx'}' "
                           f"already has rule {type(REGISTRY[taken[0]]).__name__}; pass "
                           f"replace=True to override it")
    for key in keys:
        REGISTRY[key] = rule


def rule_for(node: onnx.NodeProto, opset: int) -> Rule | None:
    """The rule for a node, or None when onnxoto does not know it (then it is a barrier).
    ``opset`` is the model's default-domain opset."""
    domain = _domain(node.domain)
    rule = REGISTRY.get((domain, node.op_type))
    if rule is None or (not domain and not rule.min_opset <= opset <= rule.max_opset):
        return None
    return rule
