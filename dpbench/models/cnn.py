"""The small tanh CNNs of Papernot et al. / Tramèr & Boneh (ICLR 2021) used for DP-SGD.

`cnn`: their CIFAR-10 CNN, the paper's "CNN (0.551M)": six 3x3 convs (padding 1) 3->32->32, pool,
32->64->64, pool, 64->128->128, pool, tanh after each conv; Linear(2048->128), tanh, Linear(128->10).
`cnn_mnist`: their MNIST / Fashion-MNIST CNN: Conv(1->16, 8x8, stride 2, padding 3), tanh,
MaxPool(2, stride 1), Conv(16->32, 4x4, stride 2), tanh, MaxPool(2, stride 1), Linear(512->32), tanh,
Linear(32->10).

Other input sizes or channel counts keep the architecture and size the first Linear to the flattened
feature map (so `cnn` has exactly 550,570 parameters at 3x32x32 and `cnn_mnist` 26,010 at 1x28x28).
"""

from __future__ import annotations

import torch
from torch import nn


def _too_small(name: str, image_size: int, minimum: int) -> ValueError:
    return ValueError(f"{name} needs images of at least {minimum}x{minimum}, got {image_size}x{image_size}")


class TanhCNN(nn.Module):
    """The CIFAR-10 tanh CNN (six 3x3 convs in three pooled stages, two Linear layers)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, image_size: int = 32):
        super().__init__()
        if image_size < 8:
            raise _too_small("cnn", image_size, 8)
        layers: list[nn.Module] = []
        channels = in_channels
        for width in (32, 64, 128):
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.Tanh(),
                       nn.Conv2d(width, width, 3, padding=1), nn.Tanh(),
                       nn.MaxPool2d(2, 2)]
            channels = width
        self.features = nn.Sequential(*layers)
        side = image_size // 2 // 2 // 2
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(channels * side * side, 128), nn.Tanh(),
                                        nn.Linear(128, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class MnistCNN(nn.Module):
    """The MNIST / Fashion-MNIST tanh CNN (two strided convs, max pools with stride 1, two Linear)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 28):
        super().__init__()
        side = (image_size + 2 * 3 - 8) // 2 + 1 - 1  # conv 8x8 stride 2 pad 3, then pool 2 stride 1
        side = (side - 4) // 2 + 1 - 1  # conv 4x4 stride 2, then pool 2 stride 1
        if side < 1:
            raise _too_small("cnn_mnist", image_size, 14)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 16, 8, stride=2, padding=3), nn.Tanh(), nn.MaxPool2d(2, 1),
            nn.Conv2d(16, 32, 4, stride=2), nn.Tanh(), nn.MaxPool2d(2, 1),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(32 * side * side, 32), nn.Tanh(),
                                        nn.Linear(32, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
