"""nn.LayerNorm and nn.GroupNorm (exact types and subclasses that keep their forward): y = x̂·w + b,
so the per-sample gradients are Σ g·x̂ and Σ g over the positions that share a weight. They are as
small as the layer's parameters, so they are always instantiated."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dpbench.clipping.layers.base import LayerRule


class _AffineNormRule(LayerRule):
    """Shared logic: instantiate from the normalised input x̂ and the output gradient."""

    def _normalised(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _reduce(self, t: torch.Tensor) -> torch.Tensor:
        """Sum a [B, ...] tensor down to [B, *param.shape]."""
        raise NotImplementedError

    def working_space(self, calls, choice):
        """x̂ and g·x̂ are input-sized per sample."""
        return 2 * sum(c.args[0][0].numel() for c in calls) + sum(p.numel() for p in self.params.values())

    def instantiate(self, calls):
        out = {}
        for c in calls:
            g = c.grads[0]
            part = {}
            if "weight" in self.params:
                part["weight"] = self._reduce(g * self._normalised(c.args[0]))
            if "bias" in self.params:
                part["bias"] = self._reduce(g)
            for n, v in part.items():
                out[n] = out[n] + v if n in out else v
        return out

    def clipped_sum(self, calls, coef):
        return {n: torch.tensordot(coef.to(g.dtype), g, dims=1) for n, g in self.instantiate(calls).items()}


class LayerNormRule(_AffineNormRule):
    """LayerNorm over the trailing normalized_shape."""

    def _normalised(self, x):
        return F.layer_norm(x, self.module.normalized_shape, None, None, self.module.eps)

    def _reduce(self, t):
        k = len(self.module.normalized_shape)
        lead = tuple(range(1, t.dim() - k))
        return t.sum(lead) if lead else t


class GroupNormRule(_AffineNormRule):
    """GroupNorm on [B, C, *]: one weight per channel."""

    def _normalised(self, x):
        return F.group_norm(x, self.module.num_groups, None, None, self.module.eps)

    def _reduce(self, t):
        return t.flatten(2).sum(2) if t.dim() > 2 else t
