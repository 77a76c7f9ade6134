"""Per-layer rules, one file per layer family, and the choice of rule for a module."""

from __future__ import annotations

from torch import nn

from dpbench.clipping.layers.base import Call, LayerRule, LayerShape
from dpbench.clipping.layers.conv import ConvRule
from dpbench.clipping.layers.embedding import EmbeddingRule
from dpbench.clipping.layers.generic import GenericRule
from dpbench.clipping.layers.linear import LinearRule
from dpbench.clipping.layers.norms import GroupNormRule, LayerNormRule

# (module class, the methods a subclass must not override for the rule to hold, rule)
RULES = [
    (nn.Linear, ("forward",), LinearRule),
    (nn.Conv1d, ("forward", "_conv_forward"), ConvRule),
    (nn.Conv2d, ("forward", "_conv_forward"), ConvRule),
    (nn.Conv3d, ("forward", "_conv_forward"), ConvRule),
    (nn.Embedding, ("forward",), EmbeddingRule),
    (nn.LayerNorm, ("forward",), LayerNormRule),
    (nn.GroupNorm, ("forward",), GroupNormRule),
]


def rule_for(module: nn.Module, name: str) -> LayerRule | None:
    """The rule for a module's own trainable parameters: a specific one when the module behaves
    exactly like a known layer, else the generic torch.func rule; None without trainable params."""
    if not any(p.requires_grad for p in module.parameters(recurse=False)):
        return None
    for cls, methods, rule in RULES:
        if isinstance(module, cls) and all(getattr(type(module), m) is getattr(cls, m) for m in methods):
            return rule(module, name)
    return GenericRule(module, name)


__all__ = ["Call", "LayerRule", "LayerShape", "rule_for", "RULES", "GenericRule"]
