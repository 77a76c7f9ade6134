"""Whole models against the oracle in float32 (1e-5 relative): in-place torchvision ResNet18 with
GroupNorm, the zoo's CIFAR ResNet18 and VGG11, timm ViT (cls_token, pos_embed) and ConvNeXt (LayerNorm2d,
layer-scale gamma, depthwise convs), plus the Opacus rows."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
import torchvision
from torch import nn

from dpbench.clipping import PrivacyEngine
from dpbench.errors import DpbenchError
from dpbench.models import create_model
from oracle import OWN_ALGORITHMS, check_algorithm, oracle, per_sample_loss

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
RTOL32 = 1e-5


def gn(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(32, channels) // 2 or 1, channels)


def randomise_norms(model: nn.Module) -> nn.Module:
    """Non-trivial affine parameters, so that their per-sample gradients matter."""
    torch.manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.GroupNorm, nn.LayerNorm)) and m.weight is not None:
                m.weight.uniform_(0.5, 1.5)
                if m.bias is not None:
                    m.bias.normal_(0, 0.1)
    return model


def batch(n=3, size=32, classes=10, channels=3):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, channels, size, size, generator=g), torch.randint(0, classes, (n,), generator=g)


def float64_reference(model, x, y):
    """The oracle in float64 on a copy of the model: the float32 oracle itself is off by ~1e-4 on
    deep models (measured: 1.8e-4 on ResNet18, where ours was within 4e-7), so it cannot judge 1e-5
    agreement; the comparison is made in float64 too (a float32 norm over 11M entries is itself off
    by ~1e-4)."""
    return oracle(copy.deepcopy(model).double(), x.double(), y)


MODELS = {
    "torchvision_resnet18_inplace": lambda: torchvision.models.resnet18(num_classes=10, norm_layer=gn),
    "zoo_resnet18": lambda: create_model("resnet18", num_classes=10),
    "zoo_vgg11": lambda: create_model("vgg11", num_classes=10),
    "timm_vit_tiny": lambda: timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8,
                                               num_classes=10, pretrained=False),
    "timm_convnext_atto": lambda: timm.create_model("convnext_atto", num_classes=10, pretrained=False),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_whole_model_own_algorithms_float32(name):
    torch.manual_seed(0)
    model = randomise_norms(MODELS[name]())
    x, y = batch()
    reference = float64_reference(model, x, y)
    for algorithm in OWN_ALGORITHMS:
        check_algorithm(model, x, y, algorithm, rtol=RTOL32, reference=reference)


@pytest.mark.parametrize("name", ["zoo_resnet18", "timm_vit_tiny"])
def test_whole_model_opacus_rows_match_oracle(name):
    """In float64 Opacus agrees with the oracle up to its own clip factor R/(‖g‖+1e-6). In float32 its
    per-sample norms differ from the float64 truth by up to ~1e-4 relative (measured 7.8e-5 on the
    zoo's ResNet18 in hooks mode), ten times our 1e-5: documented here, not a dpbench defect."""
    torch.manual_seed(0)
    model = randomise_norms(MODELS[name]())
    x, y = batch()
    reference = float64_reference(model, x, y)
    for algorithm in ["opacus", "opacus_ghost"]:
        check_algorithm(copy.deepcopy(model).double(), x.double(), y, algorithm, rtol=1e-6,
                        reference=reference)
        check_algorithm(model, x, y, algorithm, rtol=5e-4, reference=reference)


def test_opacus_in_place_model_error_is_one_clear_line():
    model = torchvision.models.resnet18(num_classes=10, norm_layer=gn)
    engine = PrivacyEngine(model, "opacus", max_grad_norm=1.0)
    x, y = batch(2)
    with pytest.raises(DpbenchError, match="in place") as err:
        engine.backward(per_sample_loss(model(x), y))
    assert "\n" not in str(err.value)
    engine.detach()


def test_vgg_at_224_mixed_choices_match_the_paper_table():
    """The paper's layerwise table (paper/reported.csv): at 224² only the 28² and 14² 512→512 convs use ghost norms."""
    model = create_model("vgg11", num_classes=10)
    x, y = batch(1, size=224)
    engine = PrivacyEngine(model, "mixed_ghost", max_grad_norm=1.0)
    engine.backward(per_sample_loss(model(x), y))
    convs = [r for r in engine.layer_report if r["type"] == "Conv2d"]
    assert [r["choice"] for r in convs] == ["instantiate"] * 5 + ["ghost"] * 3
    engine.detach()


@pytest.mark.parametrize("offset", [0.0, 10.0])
def test_groupnorm_float32_with_inputs_far_from_zero_mean(offset):
    """GroupNorm's per-sample affine gradients come from the library's fused Σ g·x - mean·Σ g: with
    inputs whose mean is far above their spread, still as close to the float64 truth as float32 allows.
    (At offset 30, PyTorch's own GroupNorm backward, which fastgradclip's second backward uses, is off by
    1.0e-5.)

    The tolerance grows with κ = |mean| / std of GroupNorm's input groups (19 at offset 10): the float32
    conv output x ≈ mean carries a rounding of u·|mean| (u = 2^-24), and GroupNorm subtracts the mean,
    forward and in its backward, so the normalised input and every gradient behind it are off by a few
    u·κ relative, whatever computes them. Measured at offset 10: the float32 oracle (plain autograd, no
    dpbench) is off by 5.2e-6 = 4.5 u·κ, the algorithms by 4.2e-6 to 5.5e-6 with 1 or 2 threads, half of
    a fixed 1e-5 and dependent on the reduction order (the CPU's vector width, the thread count). RTOL32 +
    8 u·κ (1.9e-5 at offset 10, 1.0e-5 at offset 0) is 3.4x the worst measured error. Statistics that
    cancel catastrophically (off by ~u·κ²) still fail it: the rule's group variance taken as E[x²] - E[x]²
    put per_sample and bk_mixed 2.1e-5 off at offset 10 (3.0e-4 at offset 30)."""
    torch.manual_seed(0)
    model = randomise_norms(nn.Sequential(nn.Conv2d(3, 8, 3), nn.GroupNorm(2, 8), nn.Tanh(), nn.Flatten(),
                                          nn.Linear(8 * 6 * 6, 10)))
    with torch.no_grad():
        model[0].bias.add_(offset)
    x, y = batch(n=5, size=8)
    with torch.no_grad():
        groups = copy.deepcopy(model[0]).double()(x.double()).flatten(1).unflatten(1, (2, -1))  # [N, G, -1]
    kappa = (groups.mean(-1).abs() / groups.std(-1)).max().item()
    reference = float64_reference(model, x, y)
    for algorithm in OWN_ALGORITHMS:
        check_algorithm(model, x, y, algorithm, rtol=RTOL32 + 8 * 2.0**-24 * kappa, reference=reference)
