"""Per-layer rules, one file per layer family, and the choice of rule for a module."""

from __future__ import annotations

from torch import nn

from dpbench.clipping.layers.base import Call, LayerRule, LayerShape
from dpbench.clipping.layers.conv import ConvRule
from dpbench.clipping.layers.embedding import EmbeddingRule
from dpbench.clipping.layers.embedding_bag import EmbeddingBagRule
from dpbench.clipping.layers.generic import GenericRule
from dpbench.clipping.layers.linear import LinearRule
from dpbench.clipping.layers.norms import GroupNormRule, LayerNormRule
from dpbench.clipping.layers.ops import OpRule

# (module class, the methods a subclass must not override for the rule to hold, rule)
RULES = [
    (nn.Linear, ("forward",), LinearRule),
    (nn.Conv1d, ("forward", "_conv_forward"), ConvRule),
    (nn.Conv2d, ("forward", "_conv_forward"), ConvRule),
    (nn.Conv3d, ("forward", "_conv_forward"), ConvRule),
    (nn.Embedding, ("forward",), EmbeddingRule),
    (nn.EmbeddingBag, ("forward",), EmbeddingBagRule),
    (nn.LayerNorm, ("forward",), LayerNormRule),
    (nn.GroupNorm, ("forward",), GroupNormRule),
]


def specific_rule(module: nn.Module, name: str) -> LayerRule | None:
    """The specific rule for a module's own trainable parameters when the module behaves exactly like a
    known layer; None otherwise (or without trainable parameters)."""
    if not any(p.requires_grad for p in module.parameters(recurse=False)):
        return None
    for cls, methods, rule in RULES:
        if isinstance(module, cls) and all(getattr(type(module), m) is getattr(cls, m) for m in methods):
            return rule(module, name)
    return None


def rule_for(module: nn.Module, name: str) -> LayerRule | None:
    """The module-level rule for a module's own trainable parameters: a specific one, else the generic
    torch.func replay; None without trainable params. (The engine may still move parameters to
    operation rules after watching the first forward, see clipping/usage.py.)"""
    if not any(p.requires_grad for p in module.parameters(recurse=False)):
        return None
    return specific_rule(module, name) or GenericRule(module, name)


__all__ = ["Call", "LayerRule", "LayerShape", "rule_for", "specific_rule", "RULES", "GenericRule", "OpRule"]
