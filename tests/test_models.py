"""Model registry: Table 4 parameter counts, shapes, GroupNorm only, no in-place ops, timm offline."""

import pytest
import torch
from torch import nn

from dpbench.errors import DpbenchError
from dpbench.models import available_models, create_model, default_image_size

# Parameter counts in millions as the paper gives them (Table 4 and its notes), with the
# number of decimals the paper reports.
PAPER_PARAMS_M = {
    "cnn": (0.551, 3), "vgg11": (9.23, 2), "vgg13": (9.4, 1), "vgg16": (14.7, 1),
    "resnet18": (11.17, 2), "resnet34": (21, 0), "resnet50": (23.5, 1),
}

SMALL_ZOO = ["cnn", "vgg11", "resnet18", "wrn16_4"]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(PAPER_PARAMS_M))
def test_parameter_counts_match_table_4(name):
    millions, decimals = PAPER_PARAMS_M[name]
    assert round(n_params(create_model(name)) / 1e6, decimals) == millions


def test_cnn_has_exactly_the_papers_parameter_count():
    assert n_params(create_model("cnn")) == 550_570


@pytest.mark.parametrize("name", SMALL_ZOO + ["cnn_mnist", "resnet50"])
def test_forward_shape_at_default_size(name):
    model = create_model(name, num_classes=7)
    size = default_image_size(name)
    channels = model.features[0].in_channels if name == "cnn_mnist" else 3
    assert model(torch.randn(2, channels, size, size)).shape == (2, 7)


def test_larger_images_keep_the_parameters_of_vgg_and_resnet():
    for name in ["vgg11", "resnet18"]:
        big = create_model(name, image_size=64)
        assert n_params(big) == n_params(create_model(name))
        assert big(torch.randn(1, 3, 64, 64)).shape == (1, 10)


def test_cnn_on_fashion_mnist_shaped_input():
    model = create_model("cnn", in_channels=1, image_size=28)
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 10)
    assert n_params(create_model("cnn_mnist")) == 26_010  # Linear(512->32) behind the 32x4x4 map


def test_too_small_images_are_refused():
    with pytest.raises(DpbenchError, match="at least 32x32"):
        create_model("vgg11", image_size=16)


@pytest.mark.parametrize("name", ["vgg19", "resnet152", "wrn16_4", "timm:resnet18"])
def test_no_batchnorm_anywhere(name):
    model = create_model(name, image_size=32)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert any(isinstance(m, nn.GroupNorm) for m in model.modules())


@pytest.mark.parametrize("name", SMALL_ZOO + ["convnext_atto", "deit_tiny_patch16_224"])
def test_backward_hooks_survive_the_forward(name):
    """A full backward hook on every leaf layer fails if any layer output is modified in place."""
    model = create_model(name, image_size=32)
    assert not any(getattr(m, "inplace", False) for m in model.modules())
    seen = []
    for module in model.modules():
        if not list(module.children()) and list(module.parameters()):
            module.register_full_backward_hook(lambda mod, gin, gout: seen.append(mod))
    model(torch.randn(2, 3, 32, 32, requires_grad=True)).sum().backward()
    assert len(seen) == sum(1 for m in model.modules() if not list(m.children()) and list(m.parameters()))


def test_timm_vit_builds_offline_at_32_pixels():
    model = create_model("vit_tiny_patch16_224", num_classes=10, image_size=32)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert default_image_size("vit_tiny_patch16_224") == 224


def test_pretrained_offline_needs_permission_for_random_init():
    with pytest.raises(DpbenchError, match="cannot be reached"):
        create_model("vit_tiny_patch16_224", image_size=32, pretrained=True, allow_random_init=False)
    with pytest.warns(UserWarning, match="RANDOM initialisation"):
        create_model("vit_tiny_patch16_224", image_size=32, pretrained=True, allow_random_init=True)


def test_unknown_name_suggests_close_matches():
    with pytest.raises(DpbenchError, match="did you mean: .*resnet18"):
        create_model("resnet19")
    with pytest.raises(DpbenchError, match="vit_tiny_patch16_224"):
        create_model("vit_tiny_patch16_2244")


def test_available_models_lists_zoo_first_without_duplicates():
    names = available_models()
    assert names[:3] == ["cnn", "cnn_mnist", "resnet101"]
    assert len(names) == len(set(names))
    assert "deit_tiny_patch16_224" in names
