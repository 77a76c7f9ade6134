"""Linear maps y = x Wᵀ + b on inputs of any rank ≥ 2 (the positions between batch and feature dims
form T): nn.Linear, and the same maths for `F.linear` calls outside a Linear module (layers/ops.py)."""

from __future__ import annotations

import torch

from dpbench.clipping.layers.base import Call, LayerRule, LayerShape, gram_inner


def stacked(pairs: list[tuple[torch.Tensor, torch.Tensor]], d: int, p: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A [B, T, d] and G [B, T, p] from (input, output gradient) pairs, concatenated along T."""
    a = [x.reshape(x.shape[0], -1, d) for x, _ in pairs]
    g = [y.reshape(y.shape[0], -1, p) for _, y in pairs]
    if len(pairs) == 1:
        return a[0], g[0]
    return torch.cat(a, 1), torch.cat(g, 1)


def per_sample_weight(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Per-sample weight gradients GᵢᵀAᵢ, [B, p, d]."""
    return torch.bmm(g.transpose(1, 2), a)


def weighted_weight_sum(pairs, coef: torch.Tensor, d: int, p: int) -> torch.Tensor:
    """Σᵢ coefᵢ·GᵢᵀAᵢ over (input, output gradient) pairs, without per-sample gradients."""
    total = None
    for x, y in pairs:
        y = (y * coef.to(y.dtype).view(-1, *[1] * (y.dim() - 1))).reshape(-1, p)
        part = y.t() @ x.reshape(-1, d)
        total = part if total is None else total + part
    return total


def weighted_bias_sum(grads, coef: torch.Tensor, p: int) -> torch.Tensor:
    """Σᵢ coefᵢ·Σ_t Gᵢ over output gradients."""
    total = None
    for y in grads:
        part = (y * coef.to(y.dtype).view(-1, *[1] * (y.dim() - 1))).reshape(-1, p).sum(0)
        total = part if total is None else total + part
    return total


def _pairs(calls: list[Call]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(c.args[0], c.grads[0]) for c in calls]


class LinearRule(LayerRule):
    """y = x Wᵀ + b: per-sample weight gradient GᵀA, bias gradient Σ_t G."""

    has_ghost = True
    folds = True

    def shape(self, calls):
        T = sum(c.args[0][0].numel() // self.module.in_features for c in calls)
        return LayerShape(T, self.module.in_features, self.module.out_features)

    def instantiate(self, calls):
        a, g = stacked(_pairs(calls), self.module.in_features, self.module.out_features)
        out = {}
        if "weight" in self.params:
            out["weight"] = per_sample_weight(a, g)
        if "bias" in self.params:
            out["bias"] = g.sum(1)
        return out

    def ghost_norm_sq(self, calls):
        a, g = stacked(_pairs(calls), self.module.in_features, self.module.out_features)
        total = gram_inner(a, g) if "weight" in self.params else 0
        if "bias" in self.params:
            total = total + g.sum(1).pow(2).sum(1)
        return total

    def clipped_sum(self, calls, coef):
        d, p = self.module.in_features, self.module.out_features
        out = {}
        if "weight" in self.params:
            out["weight"] = weighted_weight_sum(_pairs(calls), coef, d, p)
        if "bias" in self.params:
            out["bias"] = weighted_bias_sum([c.grads[0] for c in calls], coef, p)
        return out
