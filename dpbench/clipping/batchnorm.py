"""BatchNorm mixes samples, so per-sample clipping is undefined with it: refuse, or convert."""

from __future__ import annotations

import torch
from torch import nn

from dpbench.errors import DpbenchError


def group_count(channels: int, max_groups: int = 32) -> int:
    """The largest number of groups ≤ max_groups that divides the channel count."""
    return next(g for g in range(min(max_groups, channels), 0, -1) if channels % g == 0)


def replace_batchnorm(model: nn.Module, max_groups: int = 32) -> nn.Module:
    """Replace every BatchNorm layer by a GroupNorm over the same channels (in place; returns model).
    The learned scale and shift carry over (a pretrained model keeps them); running statistics,
    which GroupNorm does not use, are dropped."""
    for name, child in list(model.named_children()):
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            c = child.num_features
            norm = nn.GroupNorm(group_count(c, max_groups), c, eps=child.eps, affine=child.affine)
            if child.affine:
                norm = norm.to(child.weight.device, child.weight.dtype)
                with torch.no_grad():
                    norm.weight.copy_(child.weight)
                    norm.bias.copy_(child.bias)
                norm.weight.requires_grad_(child.weight.requires_grad)
                norm.bias.requires_grad_(child.bias.requires_grad)
            setattr(model, name, norm)
        else:
            replace_batchnorm(child, max_groups)
    return model


def refuse_batchnorm(model: nn.Module) -> None:
    """Raise a clear error naming the first BatchNorm module, with the fix."""
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            raise DpbenchError(
                f"module '{name or type(model).__name__}' is {type(module).__name__}, which mixes the samples of "
                "a batch, so per-sample gradients are undefined; convert the model with "
                "dpbench.clipping.replace_batchnorm(model) (BatchNorm -> GroupNorm)")
