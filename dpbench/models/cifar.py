"""CIFAR-style VGG, ResNet and Wide-ResNet with a 32x32 stem and GroupNorm.

These are the common CIFAR definitions the paper benchmarks (its Table 4): VGG = the conv stacks of
the VGG configurations A/B/D/E with 2x2 max pools and one Linear(512 -> classes); ResNet = 3x3 stride-1
stem without max pool, four stages, global average pooling. Every BatchNorm of the usual definitions
is a GroupNorm here (see `dpbench.models.norm`), which has the same number of parameters.

Larger inputs: the classifier sits behind a global average pool (adaptive, to 1x1), so a model built for
32x32 (where the map is already 1x1 for VGG, 4x4 for ResNet) has the same parameters at any size. The
ImageNet VGG's 7x7x512 -> 4096 -> 4096 head is not used; its 120 M extra parameters are not what the
paper's CIFAR models have. No layer output is modified in place (Opacus and hooks need that).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dpbench.models.norm import group_norm

VGG_CONFIGS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"],
}


class VGG(nn.Module):
    """VGG conv stack (3x3 conv, GroupNorm, ReLU; 2x2 max pools), global average pool, one Linear."""

    def __init__(self, config: list[int | str], num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for item in config:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(channels, int(item), kernel_size=3, padding=1), group_norm(int(item)),
                           nn.ReLU()]
                channels = int(item)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class BasicBlock(nn.Module):
    """Two 3x3 convs with GroupNorm and an out-of-place residual add (ResNet18/34)."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.norm1 = group_norm(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.norm2 = group_norm(planes)
        self.shortcut = _shortcut(in_planes, planes * self.expansion, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 convs with GroupNorm, expansion 4, out-of-place residual add (ResNet50+)."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.norm1 = group_norm(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.norm2 = group_norm(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.norm3 = group_norm(out_planes)
        self.shortcut = _shortcut(in_planes, out_planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.norm1(self.conv1(x)))
        out = F.relu(self.norm2(self.conv2(out)))
        out = self.norm3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


def _shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Module:
    """Identity, or a strided 1x1 conv + GroupNorm when the shape changes."""
    if stride == 1 and in_planes == out_planes:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False), group_norm(out_planes))


RESNET_CONFIGS: dict[str, tuple[type[nn.Module], list[int]]] = {
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet34": (BasicBlock, [3, 4, 6, 3]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
    "resnet101": (Bottleneck, [3, 4, 23, 3]),
    "resnet152": (Bottleneck, [3, 8, 36, 3]),
}


class ResNet(nn.Module):
    """CIFAR ResNet: 3x3 stride-1 stem (no max pool), stages of 64/128/256/512 planes, global pool."""

    def __init__(self, block: type[nn.Module], num_blocks: list[int], num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        self.norm1 = group_norm(64)
        in_planes = 64
        stages = []
        for index, (planes, blocks) in enumerate(zip([64, 128, 256, 512], num_blocks)):
            strides = [1 if index == 0 else 2] + [1] * (blocks - 1)
            stage = []
            for stride in strides:
                stage.append(block(in_planes, planes, stride))
                in_planes = planes * block.expansion
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.norm1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(torch.flatten(self.pool(out), 1))


class WideBasicBlock(nn.Module):
    """Pre-activation wide block: norm, ReLU, 3x3 conv, norm, ReLU, 3x3 conv, plus shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.norm1 = group_norm(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.norm2 = group_norm(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut = (nn.Identity() if stride == 1 and in_planes == planes
                         else nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.norm1(x)))
        out = self.conv2(F.relu(self.norm2(out)))
        return out + self.shortcut(x)


class WideResNet(nn.Module):
    """Wide-ResNet-depth-k (Zagoruyko & Komodakis) for 32x32 inputs, GroupNorm, no dropout."""

    def __init__(self, depth: int, widen: int, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"Wide-ResNet depth must be 6n+4, got {depth}")
        blocks = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        layers = []
        in_planes = widths[0]
        for index, planes in enumerate(widths[1:]):
            for block in range(blocks):
                stride = 2 if index > 0 and block == 0 else 1
                layers.append(WideBasicBlock(in_planes, planes, stride))
                in_planes = planes
        self.blocks = nn.Sequential(*layers)
        self.norm = group_norm(in_planes)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.norm(self.blocks(self.conv1(x))))
        return self.linear(torch.flatten(self.pool(out), 1))
