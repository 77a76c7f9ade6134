"""nn.LayerNorm and nn.GroupNorm (exact types and subclasses that keep their forward): y = x̂·w + b,
so the per-sample gradients are Σ g·x̂ and Σ g over the positions that share a weight. They are as
small as the layer's parameters, so they are always instantiated."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from dpbench.clipping.layers.base import LayerRule, LayerShape, chunked_weighted_sum


class _AffineNormRule(LayerRule):
    """Per-sample gradients as small as the parameters: always instantiated, so the clipped sum is their
    weighted sum."""

    def channels(self) -> int:
        """C: the affine parameters' size (the channels normalised with their own weight)."""
        raise NotImplementedError

    def shape(self, calls):
        """T positions per channel (summed over calls), d = 1, p = C: the geometry the cost model reads;
        there is no ghost norm."""
        C = self.channels()
        return LayerShape(sum(c.args[0][0].numel() // C for c in calls), 1, C)

    def clipped_sum(self, calls, coef):
        return chunked_weighted_sum([self.instantiate(calls)], coef)


class LayerNormRule(_AffineNormRule):
    """LayerNorm over the trailing normalized_shape: Σ g·x̂ and Σ g over the leading positions."""

    folds = True

    def channels(self):
        return math.prod(self.module.normalized_shape)

    def working_space(self, calls, choice):
        """x̂ and g·x̂ are input-sized per sample."""
        return 2 * sum(c.args[0][0].numel() for c in calls) + sum(p.numel() for p in self.params.values())

    def instantiate(self, calls):
        out = {}
        for c in calls:
            part = layer_norm_grads(c.args[0], c.grads[0], self.module.normalized_shape, self.module.eps,
                                    "weight" in self.params, "bias" in self.params)
            for n, v in part.items():
                out[n] = out[n] + v if n in out else v
        return out


def layer_norm_grads(x, g, normalized_shape, eps: float, weight: bool, bias: bool) -> dict[str, torch.Tensor]:
    """Per-sample gradients of a layer norm's affine parameters: Σ g·x̂ and Σ g over the positions
    between the batch and the normalized dims."""
    k = len(normalized_shape)

    def reduce(t):
        lead = tuple(range(1, t.dim() - k))
        return t.sum(lead) if lead else t

    out = {}
    if weight:
        out["weight"] = reduce(g * F.layer_norm(x, normalized_shape, None, None, eps))
    if bias:
        out["bias"] = reduce(g)
    return out


class GroupNormRule(_AffineNormRule):
    """GroupNorm on [B, C, *]: one weight per channel. The per-sample gradients come from the library's
    fused GroupNorm weight backward with the batch folded into the channels (one "sample" of B·C
    channels in B·groups groups): Σ g·x and Σ g in one pass, and no product tensor (faster than the generic
    x̂ route on CIFAR ResNet18's GroupNorms: paper/engine_timings.md)."""

    def channels(self):
        return self.module.num_channels

    def working_space(self, calls, choice):
        """The statistics' forward writes an input-sized output."""
        return sum(c.args[0][0].numel() for c in calls) + sum(p.numel() for p in self.params.values())

    def instantiate(self, calls):
        module = self.module
        wanted = ["weight" in self.params, "bias" in self.params]
        out = {}
        for c in calls:
            x, g = c.args[0], c.grads[0]
            B, C = x.shape[:2]
            positions = x[0, 0].numel()
            # the library's forward for the group statistics (torch.var_mean is slower: paper/engine_timings.md)
            _, mean, rstd = torch.ops.aten.native_group_norm(x, None, None, B, C, positions, module.num_groups,
                                                             module.eps)
            _, dw, db = torch.ops.aten.native_group_norm_backward(
                g.reshape(1, B * C, positions), x.reshape(1, B * C, positions), mean.view(1, -1),
                rstd.view(1, -1), None, 1, B * C, positions, B * module.num_groups, [False, *wanted])
            for n, v in (("weight", dw), ("bias", db)):
                if n in self.params:
                    out[n] = out[n] + v.view(B, C) if n in out else v.view(B, C)
        return out
