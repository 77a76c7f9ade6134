"""nn.Linear on inputs of any rank ≥ 2: the positions between batch and feature dims form T."""

from __future__ import annotations

import torch

from dpbench.clipping.layers.base import Call, LayerRule, LayerShape, gram_inner


def _stacked(calls: list[Call], d: int, p: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A [B, T, d] and G [B, T, p] with the calls concatenated along T."""
    a = [c.args[0].reshape(c.args[0].shape[0], -1, d) for c in calls]
    g = [c.grads[0].reshape(c.grads[0].shape[0], -1, p) for c in calls]
    if len(calls) == 1:
        return a[0], g[0]
    return torch.cat(a, 1), torch.cat(g, 1)


class LinearRule(LayerRule):
    """y = x Wᵀ + b: per-sample weight gradient GᵀA, bias gradient Σ_t G."""

    has_ghost = True

    def shape(self, calls):
        T = sum(c.args[0][0].numel() // self.module.in_features for c in calls)
        return LayerShape(T, self.module.in_features, self.module.out_features)

    def instantiate(self, calls):
        a, g = _stacked(calls, self.module.in_features, self.module.out_features)
        out = {}
        if "weight" in self.params:
            out["weight"] = torch.bmm(g.transpose(1, 2), a)
        if "bias" in self.params:
            out["bias"] = g.sum(1)
        return out

    def ghost_norm_sq(self, calls):
        a, g = _stacked(calls, self.module.in_features, self.module.out_features)
        total = gram_inner(a, g) if "weight" in self.params else 0
        if "bias" in self.params:
            total = total + g.sum(1).pow(2).sum(1)
        return total

    def clipped_sum(self, calls, coef):
        d, p = self.module.in_features, self.module.out_features
        out = {}
        for c in calls:
            a, g = c.args[0].reshape(-1, d), c.grads[0]
            g = (g * coef.to(g.dtype).view(-1, *[1] * (g.dim() - 1))).reshape(-1, p)
            part = {}
            if "weight" in self.params:
                part["weight"] = g.t() @ a
            if "bias" in self.params:
                part["bias"] = g.sum(0)
            for n, v in part.items():
                out[n] = out[n] + v if n in out else v
        return out


