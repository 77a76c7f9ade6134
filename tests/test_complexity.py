"""dpbench complexity: the mixed choices against the paper's VGG11 table and against the engine's own
choices, the structure of the cost model, and the command line."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dpbench.cli import main
from dpbench.clipping import PrivacyEngine
from dpbench.complexity import (ALGORITHM_NAMES, algorithm_costs, collect_layers, model_complexity, primitives,
                                )
from dpbench.models import create_model

# The paper's layerwise choice for VGG11 (paper/reported.csv, source "layerwise table", recomputed from
# the architecture): the eight 3x3 convs.
I, G = "instantiate", "ghost"
PAPER_VGG11_CHOICES = {224: [I, I, I, I, I, G, G, G], 32: [I, I, G, G, G, G, G, G]}


@pytest.mark.parametrize("image_size", [32, 224])
def test_vgg11_conv_choices_match_the_paper(image_size):
    table = model_complexity("vgg11", image_size)
    convs = table[table["type"] == "Conv2d"]
    assert list(convs["choice"]) == PAPER_VGG11_CHOICES[image_size]
    first = convs.iloc[0]
    assert (first["T"], first["d"], first["p"]) == (image_size**2, 27, 64)
    assert first["ghost_space"] == 2 * image_size**4 and first["instantiate_space"] == 1728


class Mixed(nn.Module):
    """Dense, grouped and depthwise convs, norms, Linear on tokens, a bare parameter, a reused layer."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.grouped = nn.Conv2d(8, 16, 3, stride=2, groups=4, bias=False)
        self.depthwise = nn.Conv2d(16, 16, 5, padding=2, groups=16)
        self.gn = nn.GroupNorm(4, 16)
        self.token_mix = nn.Linear(16, 64)
        self.ln = nn.LayerNorm(64)
        self.shift = nn.Parameter(torch.zeros(64))
        self.refine = nn.Linear(64, 64)
        self.head = nn.Linear(64, 5)

    def forward(self, x):
        x = self.gn(self.depthwise(F.relu(self.grouped(F.relu(self.stem(x))))))
        tokens = self.ln(self.token_mix(x.flatten(2).transpose(1, 2))) + self.shift
        return self.head(self.refine(torch.tanh(self.refine(tokens))).mean(1))


class Tokens(nn.Module):
    """An embedding followed by a Linear on tokens and a classifier."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(50, 8)
        self.mix = nn.Linear(8, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, ids):
        return self.head(self.mix(self.embed(ids)).mean(1))


def engine_report(model: nn.Module, batch: torch.Tensor, classes: int) -> dict[str, dict]:
    engine = PrivacyEngine(model, algorithm="mixed_ghost", max_grad_norm=1.0, noise_multiplier=0.0)
    losses = F.cross_entropy(model(batch), torch.arange(batch.shape[0]) % classes, reduction="none")
    engine.backward(losses)
    report = {entry["name"]: entry for entry in engine.layer_report}
    engine.detach()
    return report


# The registry's architectures: each model of dpbench's zoo that brings a block of its own (vgg13-19 and
# resnet34/101/152 stack the blocks of vgg11, resnet18 and resnet50), at its smallest input, and one timm
# model of each family the configs name (ViT/DeiT, BEiT, CrossViT) at a small input.
REGISTRY_CASES = [("cnn", 8), ("cnn_mnist", 14), ("wrn16_4", 8), ("vgg11", 32), ("resnet18", 8), ("resnet50", 8),
                  ("deit_tiny_patch16_224", 32), ("beit_base_patch16_224", 32), ("crossvit_tiny_240", 120)]


def _registry_cases():
    from dpbench.models import ZOO

    cases = []
    for name, size in REGISTRY_CASES:
        channels = ZOO[name].in_channels if name in ZOO else 3
        cases.append(pytest.param(lambda name=name, size=size: create_model(name, image_size=size),
                                  lambda b, c=channels, size=size: torch.randn(b, c, size, size), 10, id=name))
    return cases


@pytest.mark.parametrize("build,example,classes", [
    *_registry_cases(),
    pytest.param(Mixed, lambda b: torch.randn(b, 3, 12, 12), 5, id="mixed"),
    pytest.param(Tokens, lambda b: torch.randint(0, 50, (b, 30)), 3, id="tokens"),
])
def test_geometry_and_choices_equal_the_engines(build, example, classes):
    """Every layer of the cost model has the geometry (T, d, p, groups per sample) and the mixed choice
    that the engine's rules give it in a training step at another batch size."""
    torch.manual_seed(0)
    model = build()
    layers = {layer.name: layer for layer in collect_layers(model, example(1))}
    report = engine_report(model, example(3), classes)
    assert set(layers) == set(report)
    for name, entry in report.items():
        layer = layers[name]
        assert layer.choice == entry["choice"], name
        assert (layer.T, layer.d, layer.p, layer.groups) == (entry["T"], entry["d"], entry["p"], entry["groups"]), name
        if layer.family in ("linear", "conv", "embedding", "norm"):
            assert None not in (layer.T, layer.d, layer.p, layer.groups), name


def test_depthwise_convs_always_instantiate_and_parameters_are_all_covered():
    model = Mixed()
    layers = {layer.name: layer for layer in collect_layers(model, torch.randn(1, 3, 12, 12))}
    depthwise = layers["depthwise"]
    assert (depthwise.d, depthwise.p, depthwise.groups) == (25, 1, 16) and depthwise.choice == "instantiate"
    assert (layers["grouped"].d, layers["grouped"].p, layers["grouped"].groups) == (18, 4, 4)
    assert layers["token_mix"].T == 25 and layers["refine"].T == 50  # called twice: one layer, T summed
    assert not layers["stem"].input_grad and layers["grouped"].input_grad
    shift = layers["shift"]  # a bare parameter added to the tokens: the add operation's rule, no replay
    assert shift.family == "op" and shift.params == 64 and "Mixed" not in layers
    assert algorithm_costs(shift, 2)["per_sample"].time == 4 * 2 * 64 + 2 * 2 * 64
    assert sum(layer.params for layer in layers.values()) == sum(p.numel() for p in model.parameters())


def test_costs_follow_the_documented_formulas():
    model = create_model("vgg11", image_size=32)
    layers = {layer.name: layer for layer in collect_layers(model, torch.randn(1, 3, 32, 32))}
    conv = layers["features.18"]  # 512 -> 512, 3x3, on a 4x4 map, bias
    T, d, p, B = conv.T, conv.d, conv.p, 3
    F_ = 2 * B * T * p * d
    costs = algorithm_costs(conv, B)
    assert costs["nonprivate"].time == 3 * F_ + 2 * B * T * p and costs["nonprivate"].memory == 0
    ghost_time = B * (2 * T * T * d + 2 * T * T * p + 2 * T * T) + B * T * p + 2 * B * p
    assert costs["ghost"].time == F_ + B * T * p + 2 * F_ + F_ + B * T * p + ghost_time
    assert costs["ghost"].memory == 2 * B * T * T + B * T * d  # Grams + unfolded input
    assert costs["fastgradclip"].memory == B * (p * d + p) + B * T * d  # 8T < d: instantiated via unfold
    first = algorithm_costs(layers["features.0"], B)  # T = 1024, d = 27: batch-grouped weight backward
    assert first["fastgradclip"].memory == B * (64 * 27 + 64)
    assert costs["opacus"].held == B * (p * d + p)


@pytest.mark.parametrize("batch_size", [1, 16])
def test_mixed_and_bookkeeping_columns_take_the_chosen_branch(batch_size):
    for layer in collect_layers(create_model("resnet18", image_size=32), torch.randn(1, 3, 32, 32)):
        costs = algorithm_costs(layer, batch_size)
        ghost_chosen = layer.choice == "ghost"
        assert costs["mixed_ghost"] == costs["ghost" if ghost_chosen else "fastgradclip"]
        assert costs["bk_mixed"] == costs["bk_ghost" if ghost_chosen else "per_sample"]
        assert all(costs[a].time >= costs["nonprivate"].time for a in ALGORITHM_NAMES)


def test_totals(tmp_path):
    table = model_complexity("cnn", 32, batch_size=4)
    rows, total = table.iloc[:-1], table.iloc[-1]
    assert total["layer"] == "TOTAL" and total["params"] == sum(p.numel() for p in create_model("cnn").parameters())
    for a in ALGORITHM_NAMES:
        assert total[f"time_{a}"] == pytest.approx(rows[f"time_{a}"].sum())
        assert rows[f"mem_{a}"].max() <= total[f"mem_{a}"] <= rows[f"mem_{a}"].sum()
    assert total["mem_nonprivate"] == 0


def test_cli_writes_csv_and_markdown(tmp_path, capsys):
    csv, md = tmp_path / "c.csv", tmp_path / "c.md"
    assert main(["complexity", "--model", "cnn", "--image-size", "16", "--out-csv", str(csv), "--out-md", str(md)]) == 0
    table = pd.read_csv(csv)
    expected = {"model", "image_size", "layer", "type", "T", "d", "p", "groups", "ghost_space", "instantiate_space",
                "choice"} | {f"{kind}_{a}" for kind in ("time", "mem") for a in
                             ("nonprivate", "opacus", "fastgradclip", "ghost", "mixed_ghost", "bk_ghost", "bk_mixed")}
    assert expected <= set(table.columns)
    assert table["layer"].iloc[-1] == "TOTAL" and set(table["choice"].dropna()) <= {"ghost", "instantiate"}
    assert (table["image_size"] == 16).all()
    text = md.read_text()
    assert text.startswith("# Complexity of cnn at 16×16") and "| mixed_ghost" in text
    assert "mixed_ghost" in capsys.readouterr().out


@pytest.mark.parametrize("args,culprit", [
    (["--model", "no_such_net", "--image-size", "32"], "no_such_net"),
    (["--model", "cnn", "--image-size", "0"], "--image-size"),
])
def test_cli_bad_arguments(args, culprit, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        raise SystemExit(main(["complexity", *args, "--out-csv", str(tmp_path / "c.csv")]))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and culprit in err[0]
