"""Normalisation choices shared by the model zoo: GroupNorm instead of BatchNorm.

DP-SGD needs per-sample gradients, and BatchNorm mixes samples, so every model here uses GroupNorm.
The group count follows Opacus' BatchNorm conversion: min(32, C) groups for C channels.
"""

from __future__ import annotations

from torch import nn

MAX_GROUPS = 32


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm over `channels` channels with min(32, channels) groups and learnable affine."""
    return nn.GroupNorm(min(MAX_GROUPS, channels), channels)


def disable_inplace(model: nn.Module) -> nn.Module:
    """Set `inplace=False` on every module that has the flag (ReLU, Dropout, ...).

    In-place activations on a layer's output break backward hooks (Opacus, the clipping engine).
    """
    for module in model.modules():
        if getattr(module, "inplace", False) is True:
            module.inplace = False
    return model
