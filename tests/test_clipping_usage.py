"""The clipping bound in every training loop: several forwards and views per step, detach, empty
batches, parameters frozen or added later, loss terms outside the model, layouts whose dim 0 is not
(only) the batch. Float64 against torch.func brute force; every own algorithm."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from dpbench.clipping import PrivacyEngine
from dpbench.errors import DpbenchError
from oracle import OWN_ALGORITHMS, flat_norms

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def per_sample_oracle(model: nn.Module, loss_of_one, *batch) -> dict[str, torch.Tensor]:
    """Per-sample gradients of `loss_of_one(forward, *sample)` (forward: the model on a batch of one),
    by vmap(grad) over the samples."""
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    rest = {**{n: p.detach() for n, p in model.named_parameters() if not p.requires_grad},
            **dict(model.named_buffers())}

    def loss(p, *sample):
        return loss_of_one(lambda x: functional_call(model, {**p, **rest}, (x,)), *(s.unsqueeze(0) for s in sample))[0]

    return vmap(grad(loss), in_dims=(None, *[0] * len(batch)))(params, *batch)


def assert_clipped_sum(model: nn.Module, reference: dict, R: float, rtol: float = 1e-9) -> torch.Tensor:
    """p.grad of every parameter equals Σ min(1, R/‖gᵢ‖)·gᵢ of the reference; returns the norms."""
    norms = flat_norms(reference)
    coef = (R / norms).clamp(max=1.0)
    params = dict(model.named_parameters())
    for name, g in reference.items():
        expected = torch.einsum("b,b...->...", coef, g)
        got = params[name].grad
        got = torch.zeros_like(expected) if got is None else got
        scale = max(expected.norm().item(), 1e-30)
        assert (got - expected).norm().item() <= rtol * scale + 1e-300, name
    return norms


def cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 5)).double()


class TokenModel(nn.Module):
    """A class token, position embedding and layer scale (operation rules) around Linear/LayerNorm."""

    def __init__(self, dim=6, tokens=4, classes=3):
        super().__init__()
        self.embed = nn.Linear(5, dim)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, tokens + 1, dim))
        self.gamma = nn.Parameter(torch.randn(dim))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):  # x [B, tokens, 5]
        t = self.embed(x)
        t = torch.cat((self.cls_token.expand(t.shape[0], -1, -1), t), 1) + self.pos_embed
        t = t + self.gamma * torch.tanh(t)
        return self.head(self.norm(t)[:, 0])


def token_model():
    torch.manual_seed(1)
    return TokenModel().double()


MODELS = {"cnn": (cnn, lambda g, b: torch.randn(b, 3, 8, 8, generator=g, dtype=torch.float64), 5),
          "tokens": (token_model, lambda g, b: torch.randn(b, 4, 5, generator=g, dtype=torch.float64), 3)}


def data(kind, B, seed=0):
    g = torch.Generator().manual_seed(seed)
    build, inputs, classes = MODELS[kind]
    return build(), inputs(g, B), torch.randint(0, classes, (B,), generator=g)


# ---- one step = every forward since the last backward ----------------------------------------------
@pytest.mark.parametrize("kind", MODELS)
@pytest.mark.parametrize("algorithm", OWN_ALGORITHMS)
def test_a_forward_the_losses_do_not_depend_on_adds_nothing(kind, algorithm):
    model, x, y = data(kind, 8)
    reference = per_sample_oracle(model, lambda f, x, y: F.cross_entropy(f(x), y, reduction="none"), x, y)
    engine = PrivacyEngine(model, algorithm, max_grad_norm=0.01)
    losses = F.cross_entropy(model(x), y, reduction="none")
    model(torch.randn_like(x))  # a second forward before the backward
    engine.backward(losses)
    norms = assert_clipped_sum(model, reference, 0.01)
    torch.testing.assert_close(engine.per_sample_norms, norms, rtol=1e-9, atol=0)
    total = torch.cat([p.grad.flatten() for p in model.parameters()]).norm()
    assert total <= 8 * 0.01 * (1 + 1e-9)  # the clipping bound B·R


def two_views(f, x, y):
    return (F.cross_entropy(f(x), y, reduction="none") + F.cross_entropy(f(x.flip(-1)), y, reduction="none")) / 2


@pytest.mark.parametrize("kind", MODELS)
@pytest.mark.parametrize("algorithm", OWN_ALGORITHMS)
def test_several_views_per_sample_give_the_per_sample_gradient_of_the_combined_loss(kind, algorithm):
    model, x, y = data(kind, 6)
    reference = per_sample_oracle(model, two_views, x, y)
    R = float(flat_norms(reference).median())
    engine = PrivacyEngine(model, algorithm, max_grad_norm=R)
    engine.backward(two_views(model, x, y))
    norms = assert_clipped_sum(model, reference, R)
    torch.testing.assert_close(engine.per_sample_norms, norms, rtol=1e-9, atol=0)


def test_losses_of_an_earlier_forward_after_another_backward_are_refused():
    model, x, y = data("cnn", 4)
    engine = PrivacyEngine(model, "bk_mixed")
    first = F.cross_entropy(model(x), y, reduction="none")
    second = F.cross_entropy(model(x), y, reduction="none")
    engine.backward(second)
    with pytest.raises(DpbenchError, match="no forward pass was recorded before backward"):
        engine.backward(first)


@pytest.mark.parametrize("algorithm", ["opacus", "opacus_ghost"])
def test_the_opacus_rows_refuse_a_second_forward_by_name(algorithm):
    pytest.importorskip("opacus")
    model, x, y = data("cnn", 4)
    engine = PrivacyEngine(model, algorithm)
    model(x)
    with pytest.raises(DpbenchError, match="the opacus baselines take one forward of the model per backward"):
        model(x.flip(-1))


# ---- a closed engine state ---------------------------------------------------------------------------
@pytest.mark.parametrize("algorithm", ["nonprivate", "mixed_ghost", "bk_mixed"])
def test_a_detached_engine_refuses_backward_and_noise(algorithm):
    model, x, y = data("cnn", 4)
    engine = PrivacyEngine(model, algorithm, noise_multiplier=1.0)
    engine.detach()
    losses = F.cross_entropy(model(x), y, reduction="none")
    with pytest.raises(DpbenchError, match="this PrivacyEngine was detached"):
        engine.backward(losses)
    with pytest.raises(DpbenchError, match="this PrivacyEngine was detached"):
        engine.add_noise()
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("kind", MODELS)
@pytest.mark.parametrize("algorithm", OWN_ALGORITHMS)
def test_an_empty_batch_adds_nothing_and_the_next_step_is_exact(kind, algorithm):
    """An empty first batch (Poisson sampling) is no ground for the engine's survey of the forward."""
    model, x, y = data(kind, 5)
    engine = PrivacyEngine(model, algorithm, max_grad_norm=0.5, noise_multiplier=0.0)
    engine.backward(F.cross_entropy(model(x[:0]), y[:0], reduction="none"))
    assert engine.per_sample_norms.shape == (0,)
    assert all(p.grad is None for p in model.parameters())
    engine.add_noise()  # σ = 0: zero gradients
    assert all(p.grad is not None and not p.grad.any() for p in model.parameters())
    reference = per_sample_oracle(model, lambda f, x, y: F.cross_entropy(f(x), y, reduction="none"), x, y)
    engine.backward(F.cross_entropy(model(x), y, reduction="none"))
    assert_clipped_sum(model, reference, 0.5)


def test_parameters_frozen_after_construction_are_refused_by_name():
    model, x, y = data("cnn", 4)
    engine = PrivacyEngine(model, "mixed_ghost")
    model[4].bias.requires_grad_(False)
    with pytest.raises(DpbenchError, match=r"parameter '4.bias' was frozen after the PrivacyEngine was built"):
        engine.backward(F.cross_entropy(model(x), y, reduction="none"))
    assert all(p.grad is None for p in model.parameters())


def test_parameters_unfrozen_or_added_after_construction_are_refused_by_name():
    model, x, y = data("cnn", 4)
    model[0].weight.requires_grad_(False)
    engine = PrivacyEngine(model, "bk_mixed")
    model[0].weight.requires_grad_(True)
    with pytest.raises(DpbenchError, match=r"parameter '0.weight' became trainable \(unfrozen or added\)"):
        engine.backward(F.cross_entropy(model(x), y, reduction="none"))
    model[0].weight.requires_grad_(False)
    model.append(nn.Linear(5, 5).double())
    with pytest.raises(DpbenchError, match=r"parameter '5.weight' became trainable"):
        engine.backward(F.cross_entropy(model(x), y, reduction="none"))


@pytest.mark.parametrize("algorithm", OWN_ALGORITHMS)
def test_loss_terms_outside_the_model_forward_are_refused(algorithm):
    model, x, y = data("cnn", 4)
    engine = PrivacyEngine(model, algorithm)
    temperature = nn.Parameter(torch.tensor(2.0, dtype=torch.float64))
    with pytest.raises(DpbenchError, match=r"the losses depend on a trainable parameter of shape \(\) that is not"):
        engine.backward(F.cross_entropy(model(x) / temperature, y, reduction="none"))
    # a model parameter used again in the loss (an L2 term per sample): its module's rule does not see it
    losses = F.cross_entropy(model(x), y, reduction="none") + 0.1 * model[4].weight.pow(2).sum()
    with pytest.raises(DpbenchError, match=r"parameter '4.weight' gets a gradient from the losses that no recorded"):
        engine.backward(losses)
    assert all(p.grad is None for p in model.parameters())


# ---- parameters registered twice, modules used twice -------------------------------------------------
class Aliased(nn.Module):
    """A parameter registered again under another name in an enclosing module (as Opacus' DPLSTM does)."""

    def __init__(self):
        super().__init__()
        self.inner = nn.Linear(4, 3)
        self.weight_alias = self.inner.weight
        self.shared = nn.Linear(3, 3)

    def forward(self, x):
        return self.shared(torch.tanh(self.shared(self.inner(x))))


@pytest.mark.parametrize("algorithm", OWN_ALGORITHMS)
def test_a_parameter_registered_twice_and_a_module_used_twice_are_one_parameter(algorithm):
    torch.manual_seed(2)
    model = Aliased().double()
    x, y = torch.randn(5, 4, dtype=torch.float64), torch.randint(0, 3, (5,))
    reference = per_sample_oracle(model, lambda f, x, y: F.cross_entropy(f(x), y, reduction="none"), x, y)
    engine = PrivacyEngine(model, algorithm, max_grad_norm=float(flat_norms(reference).median()))
    engine.backward(F.cross_entropy(model(x), y, reduction="none"))
    assert_clipped_sum(model, reference, engine.max_grad_norm)


# ---- layouts: the batch folded into dim 0 --------------------------------------------------------------
class WindowAttentionLike(nn.Module):
    """[B, H, W, C] cut into w×w windows folded with the batch into dim 0 (as Swin does), Linear and
    LayerNorm on the windows, a bias table added to every window's logits, then unfolded."""

    def __init__(self, C=4, w=2, classes=3, conv=False):
        super().__init__()
        self.w = w
        self.norm = nn.LayerNorm(C)
        self.qk = nn.Linear(C, 2 * C)
        self.bias_table = nn.Parameter(torch.randn(w * w, w * w))
        self.proj = nn.Conv1d(C, C, 1) if conv else nn.Linear(C, C)
        self.head = nn.Linear(C, classes)

    def forward(self, x):
        B, H, W, C = x.shape
        w = self.w
        win = x.view(B, H // w, w, W // w, w, C).permute(0, 1, 3, 2, 4, 5).reshape(-1, w * w, C)
        q, k = self.qk(self.norm(win)).chunk(2, -1)
        attn = (q @ k.transpose(1, 2) + self.bias_table).softmax(-1)
        out = attn @ win
        out = self.proj(out.transpose(1, 2)).transpose(1, 2) if isinstance(self.proj, nn.Conv1d) else self.proj(out)
        return self.head(out.reshape(B, -1, C).mean(1))


@pytest.mark.parametrize("algorithm", OWN_ALGORITHMS)
@pytest.mark.parametrize("B", [1, 3, 4])  # 4: as many samples as windows per sample
def test_a_batch_folded_with_windows_into_dim_0_is_exact(algorithm, B):
    torch.manual_seed(3)
    model = WindowAttentionLike().double()
    x, y = torch.randn(B, 4, 4, 4, dtype=torch.float64), torch.randint(0, 3, (B,))
    reference = per_sample_oracle(model, lambda f, x, y: F.cross_entropy(f(x), y, reduction="none"), x, y)
    R = float(flat_norms(reference).median())
    engine = PrivacyEngine(model, algorithm, max_grad_norm=R)
    for step in range(2):  # the second step reuses the probed layout
        for p in model.parameters():
            p.grad = None
        engine.backward(F.cross_entropy(model(x), y, reduction="none"))
        assert_clipped_sum(model, reference, R)
    folded = {r["name"]: r["slices_per_sample"] for r in engine.layer_report}
    assert folded["qk"] == folded["norm"] == 4 and folded["head"] == 1


def test_a_rule_that_cannot_regroup_a_folded_batch_refuses_by_name():
    torch.manual_seed(3)
    model = WindowAttentionLike(conv=True).double()
    engine = PrivacyEngine(model, "ghost")
    x, y = torch.randn(2, 4, 4, 4, dtype=torch.float64), torch.randint(0, 3, (2,))
    with pytest.raises(DpbenchError, match=r"module 'proj' \(Conv1d\) gets the batch folded with 4 slices per sample"):
        engine.backward(F.cross_entropy(model(x), y, reduction="none"))


def test_the_layout_probe_runs_once_per_input_signature_not_per_batch_size():
    """Sizes equal to the batch are written symbolically, so Poisson batches of other sizes share the
    signature; a size that coincides with the batch (here 5 tokens + 1) makes a signature of its own."""
    model, x, y = data("tokens", 8)
    engine = PrivacyEngine(model, "bk_mixed")
    engine.backward(F.cross_entropy(model(x), y, reduction="none"))
    first = engine._backend.probe_seconds
    assert first > 0
    for B in (8, 7, 2):
        engine.backward(F.cross_entropy(model(x[:B]), y[:B], reduction="none"))
    assert engine._backend.probe_seconds == first
    engine.backward(F.cross_entropy(model(x[:5]), y[:5], reduction="none"))
    assert engine._backend.probe_seconds > first


WINDOW_MODELS = {  # timm window-attention families, shrunk (random weights, BatchNorm replaced)
    "swin": ("swin_tiny_patch4_window7_224", 32, dict(img_size=32, window_size=4, embed_dim=12, depths=(2, 1),
                                                      num_heads=(2, 2), patch_size=4)),
    "swinv2": ("swinv2_tiny_window8_256", 32, dict(img_size=32, window_size=4, embed_dim=12, depths=(2, 1),
                                                   num_heads=(2, 2), patch_size=4)),
    "davit": ("davit_tiny", 32, dict(embed_dims=(8, 16), depths=(1, 1), num_heads=(2, 2), window_size=2)),
}


@pytest.mark.parametrize("family", WINDOW_MODELS)
@pytest.mark.parametrize("algorithm", OWN_ALGORITHMS)
def test_timm_window_attention_is_exact_through_the_layer_rules(family, algorithm):
    """Swin, SwinV2 and DaViT fold the windows with the batch into dim 0: their attention layers take the
    Linear, LayerNorm and operation rules with the probed layout, and no module is replayed."""
    timm = pytest.importorskip("timm")
    from dpbench.clipping import replace_batchnorm
    from oracle import check_algorithm

    name, size, kwargs = WINDOW_MODELS[family]
    torch.manual_seed(0)
    model = replace_batchnorm(timm.create_model(name, num_classes=3, drop_rate=0.0, drop_path_rate=0.0,
                                                **kwargs)).double()
    x, y = torch.randn(3, 3, size, size, dtype=torch.float64), torch.randint(0, 3, (3,))
    engine = check_algorithm(model, x, y, algorithm, rtol=1e-8)
    assert {r["path"] for r in engine.layer_report} <= {"module", "op"}
    assert max(r["slices_per_sample"] for r in engine.layer_report) > 1
