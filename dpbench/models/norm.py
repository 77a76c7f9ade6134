"""Normalisation choices shared by the model zoo: GroupNorm instead of BatchNorm.

DP-SGD needs per-sample gradients, and BatchNorm mixes samples, so every model here uses GroupNorm,
with the group count of `dpbench.clipping.replace_batchnorm`: the largest g <= 32 that divides the
channel count (32 groups for every width >= 32 in the zoo, one channel per group below).
"""

from __future__ import annotations

from torch import nn

from dpbench.clipping.batchnorm import group_count


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm over `channels` channels with the engine's group count and learnable affine."""
    return nn.GroupNorm(group_count(channels), channels)


def disable_inplace(model: nn.Module) -> nn.Module:
    """Set `inplace=False` on every module that has the flag (ReLU, Dropout, ...).

    In-place activations on a layer's output break backward hooks (Opacus, the clipping engine).
    """
    for module in model.modules():
        if getattr(module, "inplace", False) is True:
            module.inplace = False
    return model
