"""Model registry: CIFAR-style models written here, and any timm model by name.

    create_model("resnet18")                                   # CIFAR ResNet18 with GroupNorm, 32x32
    create_model("cnn", in_channels=1, image_size=28)           # the tanh CNN on Fashion-MNIST-sized input
    create_model("vit_tiny_patch16_224", image_size=32)         # timm, BatchNorm -> GroupNorm if any

Names of the dpbench zoo shadow timm's (vgg11, resnet18, ...); prefix "timm:" to get timm's model.
Every model is DP-ready: no BatchNorm (GroupNorm, groups as in dpbench.clipping.replace_batchnorm), no
in-place operation on a layer's output. See `dpbench.models.cifar`, `dpbench.models.cnn` and `dpbench.models.timm_models`.
"""

from __future__ import annotations

import difflib
import warnings
from dataclasses import dataclass
from typing import Callable

from torch import nn

from dpbench.errors import DpbenchError
from dpbench.models.cifar import RESNET_CONFIGS, VGG_CONFIGS, VGG, ResNet, WideResNet
from dpbench.models.cnn import MnistCNN, TanhCNN

__all__ = ["create_model", "available_models", "default_image_size"]

TIMM_PREFIX = "timm:"  # "timm:resnet18" = timm's ImageNet ResNet18; plain "resnet18" = the CIFAR one here


@dataclass(frozen=True)
class ZooEntry:
    """A model written in dpbench: builder(num_classes, in_channels, image_size), its defaults."""

    builder: Callable[[int, int, int], nn.Module]
    image_size: int = 32
    in_channels: int = 3
    min_image_size: int = 8


def _zoo() -> dict[str, ZooEntry]:
    zoo = {
        "cnn": ZooEntry(lambda c, ch, s: TanhCNN(c, ch, s)),
        "cnn_mnist": ZooEntry(lambda c, ch, s: MnistCNN(c, ch, s), image_size=28, in_channels=1, min_image_size=14),
        "wrn16_4": ZooEntry(lambda c, ch, s: WideResNet(16, 4, c, ch)),
    }
    for name, config in VGG_CONFIGS.items():
        zoo[name] = ZooEntry(lambda c, ch, s, config=config: VGG(config, c, ch), min_image_size=32)
    for name, (block, blocks) in RESNET_CONFIGS.items():
        zoo[name] = ZooEntry(lambda c, ch, s, block=block, blocks=blocks: ResNet(block, blocks, c, ch))
    return zoo


ZOO = _zoo()


def available_models(include_timm: bool = True) -> list[str]:
    """The dpbench zoo's names, followed by every timm architecture name when include_timm."""
    names = sorted(ZOO)
    if not include_timm:
        return names
    import timm  # imported only when asked: it costs seconds (torchvision with it)

    return names + [n for n in timm.list_models() if n not in ZOO]


def default_image_size(name: str) -> int:
    """The input size (side of a square image) a model is built for when image_size is None."""
    if name in ZOO:
        return ZOO[name].image_size
    from dpbench.models.timm_models import is_timm_model, timm_default_image_size

    if is_timm_model(name.removeprefix(TIMM_PREFIX)):
        return timm_default_image_size(name.removeprefix(TIMM_PREFIX))
    raise _unknown(name)


def create_model(name: str, num_classes: int = 10, image_size: int | None = None, in_channels: int | None = None,
                 pretrained: bool = False, allow_random_init: bool = True) -> nn.Module:
    """Build model `name` for `num_classes` classes and square inputs of `image_size` pixels.

    image_size None = the model's default (`default_image_size`); in_channels None = the model's default
    (1 for cnn_mnist, else 3). `pretrained` loads timm weights (the dpbench zoo has none); without them
    it raises DpbenchError unless `allow_random_init`, in which case it warns and uses random weights.
    """
    if num_classes < 1:
        raise DpbenchError(f"num_classes must be at least 1, got {num_classes}")
    if image_size is not None and image_size < 1:
        raise DpbenchError(f"image_size must be positive, got {image_size}")
    if name in ZOO:
        entry = ZOO[name]
        if pretrained:
            message = f"{name} is a dpbench CIFAR model without pretrained weights"
            if not allow_random_init:
                raise DpbenchError(f"{message}; use a timm model for pretrained weights, or allow random initialisation")
            warnings.warn(f"{message}: continuing with RANDOM initialisation", stacklevel=2)
        size = entry.image_size if image_size is None else image_size
        if size < entry.min_image_size:
            raise DpbenchError(f"{name} needs images of at least {entry.min_image_size}x{entry.min_image_size}, "
                               f"got {size}x{size}")
        return entry.builder(num_classes, entry.in_channels if in_channels is None else in_channels, size)
    from dpbench.models.timm_models import create_timm_model, is_timm_model

    timm_name = name.removeprefix(TIMM_PREFIX)
    if is_timm_model(timm_name):
        return create_timm_model(timm_name, num_classes, image_size, 3 if in_channels is None else in_channels,
                                 pretrained, allow_random_init)
    raise _unknown(name)


def _unknown(name: str) -> DpbenchError:
    close = difflib.get_close_matches(name, available_models(), n=6, cutoff=0.6)
    hint = f"; did you mean: {', '.join(close)}?" if close else f"; dpbench models: {', '.join(sorted(ZOO))}, or any timm model name"
    return DpbenchError(f"unknown model {name!r}{hint}")
