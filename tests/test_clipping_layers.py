"""Every layer rule against the brute-force oracle, over seeded random configurations (float64)."""

from __future__ import annotations

import random
import zlib

import pytest
import torch
from torch import nn

from dpbench.clipping.layers import conv as conv_rules
from oracle import OWN_ALGORITHMS, check_algorithm, oracle

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
SEEDS = range(12)


@pytest.fixture(autouse=True)
def float64_by_default():
    """These tests isolate the rules' logic from rounding: float64, restored afterwards."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def run_all(model, x, target=None, algorithms=OWN_ALGORITHMS, rtol=1e-9):
    model = model.double()
    reference = oracle(model, x, target)
    return [check_algorithm(model, x, target, a, rtol=rtol, reference=reference) for a in algorithms]


def random_linear(rng: random.Random):
    d, p = rng.randint(1, 9), rng.randint(1, 9)
    B = rng.randint(2, 5)
    middle = [rng.randint(1, 4) for _ in range(rng.randint(0, 2))]
    layer = nn.Linear(d, p, bias=rng.random() < 0.6)
    return layer, torch.randn(B, *middle, d)


def random_conv(rng: random.Random):
    nd = rng.choice([1, 2, 2, 3])
    groups = rng.choice([1, 1, 2, 3])
    c_in = groups * rng.randint(1, 3)
    c_out = groups * rng.randint(1, 3)
    k = tuple(rng.randint(1, 3) for _ in range(nd))
    dilation = tuple(rng.randint(1, 2) for _ in range(nd))
    mode = rng.choice(["zeros", "zeros", "reflect", "replicate", "circular"])
    padding = rng.choice(["int", "same", "valid"])
    stride = tuple(rng.randint(1, 2) for _ in range(nd)) if padding != "same" else 1
    size = [dil * (kk - 1) + 1 + rng.randint(0, 4 if nd < 3 else 2) for kk, dil in zip(k, dilation)]
    if padding == "int":  # reflect/circular padding must stay below the input size
        padding = tuple(min(rng.randint(0, 2), n - 1 if mode != "zeros" else 2) for n in size)
    cls = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[nd]
    layer = cls(c_in, c_out, k, stride=stride, padding=padding, dilation=dilation, groups=groups,
                bias=rng.random() < 0.5, padding_mode=mode)
    return layer, torch.randn(rng.randint(2, 4), c_in, *size)


def random_embedding(rng: random.Random):
    V, D = rng.randint(2, 7), rng.randint(1, 5)
    padding_idx = rng.choice([None, rng.randrange(V)])
    shape = [rng.randint(2, 4)] + [rng.randint(1, 5) for _ in range(rng.randint(0, 2))]
    layer = nn.Embedding(V, D, padding_idx=padding_idx)
    return layer, torch.randint(0, V, shape)


def random_layernorm(rng: random.Random):
    shape = [rng.randint(2, 5) for _ in range(rng.randint(1, 2))]
    lead = [rng.randint(1, 3) for _ in range(rng.randint(0, 2))]
    layer = nn.LayerNorm(shape, elementwise_affine=True, bias=rng.random() < 0.7)
    with torch.no_grad():
        layer.weight.normal_()
    return layer, torch.randn(rng.randint(2, 4), *lead, *shape)


def random_groupnorm(rng: random.Random):
    groups = rng.choice([1, 2, 3])
    C = groups * rng.randint(1, 3)
    spatial = [rng.randint(2, 4)] + [rng.randint(1, 3) for _ in range(rng.randint(0, 2))]
    layer = nn.GroupNorm(groups, C)
    with torch.no_grad():
        layer.weight.normal_()
        layer.bias.normal_()
    return layer, torch.randn(rng.randint(2, 4), C, *spatial)


@pytest.mark.parametrize("make", [random_linear, random_conv, random_layernorm, random_groupnorm],
                         ids=lambda f: f.__name__)
@pytest.mark.parametrize("seed", SEEDS)
def test_layer_matches_oracle(make, seed):
    rng = random.Random(seed * 7919 + zlib.crc32(make.__name__.encode()) % 1000)  # str hash() varies per run
    torch.manual_seed(seed)
    layer, x = make(rng)
    run_all(nn.Sequential(layer, nn.Tanh()), x)


@pytest.mark.parametrize("seed", range(40))
def test_patch_gram_equals_the_gram_of_the_unfolded_input(seed):
    layer, x = random_conv(random.Random(seed * 104729 + 17))
    a = conv_rules.unfold(layer, x)  # [B, groups, d, T]
    expected = a.transpose(2, 3) @ a
    out_shape = tuple(layer(x).shape[2:])
    torch.testing.assert_close(conv_rules.patch_gram(layer, x, out_shape), expected, rtol=1e-12, atol=1e-12)
    n = conv_rules.pixel_positions(layer, tuple(x.shape[2:]))
    assert n == conv_rules.pixel_input(layer, x)[0][0, 0].numel()


@pytest.mark.parametrize("pixel_gram", [True, False], ids=["pixel-gram", "im2col-gram"])
@pytest.mark.parametrize("seed", SEEDS)
def test_conv_ghost_norms_are_exact_by_either_gram(seed, pixel_gram, monkeypatch):
    monkeypatch.setattr(conv_rules, "patch_gram_is_faster", lambda *shape: pixel_gram)
    rng = random.Random(seed * 6007 + 3)
    torch.manual_seed(seed)
    layer, x = random_conv(rng)
    run_all(nn.Sequential(layer, nn.Tanh()), x, algorithms=["ghost", "bk_ghost"])


ROUTES = [("instantiation_route", route, ["per_sample", "fastgradclip"])
          for route in (conv_rules.LOOP, conv_rules.UNFOLD, conv_rules.GROUPED)]
ROUTES += [("unfolded_weight_grad_is_faster", unfolded, ["bk_ghost"]) for unfolded in (True, False)]


@pytest.mark.parametrize("rule, forced, algorithms", ROUTES, ids=lambda v: str(v) if not isinstance(v, list) else "")
@pytest.mark.parametrize("seed", SEEDS)
def test_conv_is_exact_by_every_route(seed, rule, forced, algorithms, monkeypatch):
    """Per-sample instantiation (loop / unfold / grouped) and the book-kept weight sum (unfold+matmul /
    weight backward), each forced on random convolutions."""
    monkeypatch.setattr(conv_rules, rule, lambda *args: forced)
    rng = random.Random(seed * 7121 + 5)
    torch.manual_seed(seed)
    layer, x = random_conv(rng)
    run_all(nn.Sequential(layer, nn.Tanh()), x, algorithms=algorithms)


def test_conv_routes_follow_the_measured_rules():
    """Unfold for 8T < d, else the loop on CPU for ≥ 2^25 multiply-adds per sample, else grouped; the
    unfolded book-kept weight gradient on CPU at ≤ 16 positions; other devices keep the library's."""
    big, small = conv_rules.LayerShape(256, 1152, 128), conv_rules.LayerShape(256, 576, 128)
    assert conv_rules.instantiation_route("cpu", big) == conv_rules.LOOP
    assert conv_rules.instantiation_route("cuda", big) == conv_rules.GROUPED
    assert conv_rules.instantiation_route("cpu", small) == conv_rules.GROUPED
    assert conv_rules.instantiation_route("cpu", conv_rules.LayerShape(16, 4608, 512)) == conv_rules.UNFOLD
    g4, g64 = torch.zeros(2, 3, 2, 2), torch.zeros(2, 3, 8, 8)
    assert conv_rules.unfolded_weight_grad_is_faster("cpu", g4)
    assert not conv_rules.unfolded_weight_grad_is_faster("cpu", g64)
    assert not conv_rules.unfolded_weight_grad_is_faster("cuda", g4)


@pytest.mark.parametrize("conv, pixel", [
    (nn.Conv2d(3, 64, 3, padding=1), False),  # the 3-channel stem: little to multiply, n×n buffers to sum
    (nn.Conv2d(64, 64, 3, padding=1), True),
    (nn.Conv2d(64, 128, 3, stride=2, padding=1), False),
    (nn.Conv2d(128, 256, 3, stride=2, padding=1), True),
    (nn.Conv2d(128, 256, 1, stride=2), False),
    (nn.Conv2d(512, 512, 3, padding=1), True),
], ids=["stem@32", "64-64@32", "64-128s2@32", "128-256s2@16", "128-256k1s2@16", "512-512@4"])
def test_ghost_gram_route_follows_the_measured_cost_model(conv, pixel):
    """The pixel Gram where `scripts/conv_routes.py` timed it faster on CIFAR ResNet18's layers, else im2col."""
    side = {3: 32, 64: 32, 128: 16, 512: 4}[conv.in_channels]
    x = torch.zeros(1, conv.in_channels, side, side, dtype=conv.weight.dtype)
    rule = conv_rules.ConvRule(conv, "conv")
    assert rule._pixel_gram([conv_rules.Call((x,), {}, (0,), grads=[conv(x)])]) == pixel


@pytest.mark.parametrize("seed", SEEDS)
def test_embedding_matches_oracle(seed):
    rng = random.Random(seed)
    torch.manual_seed(seed)
    layer, idx = random_embedding(rng)
    run_all(nn.Sequential(layer, nn.Tanh()), idx)


@pytest.mark.parametrize("seed", SEEDS)
def test_conv_mixed_choice_follows_the_group_rule(seed):
    """The engine's choice equals 2T²·groups ≤ p_g·d_g·groups, decided per input shape."""
    from dpbench.clipping import mixed_choice

    rng = random.Random(1000 + seed)
    torch.manual_seed(seed)
    layer, x = random_conv(rng)
    for engine in run_all(nn.Sequential(layer), x, algorithms=["mixed_ghost"]):
        (row,) = engine.layer_report
        assert row["choice"] == mixed_choice(row["T"], row["d"], row["p"], row["groups"])
        assert row["groups"] == layer.groups
        assert row["d"] == layer.in_channels // layer.groups * layer.weight[0, 0].numel()


def test_depthwise_conv_always_instantiates_and_is_exact():
    layer = nn.Conv2d(6, 6, 3, padding=1, groups=6)
    x = torch.randn(3, 6, 4, 4)
    for engine in run_all(nn.Sequential(layer), x):
        (row,) = engine.layer_report
        if engine.algorithm.norms == "mixed":
            assert row["choice"] == "instantiate"


def test_mixed_choice_is_made_per_input_shape():
    conv = nn.Conv2d(4, 4, 3, padding=1)
    model = nn.Sequential(conv)
    small = run_all(model, torch.randn(2, 4, 2, 2), algorithms=["mixed_ghost"])[0].layer_report[0]
    large = run_all(model, torch.randn(2, 4, 9, 9), algorithms=["mixed_ghost"])[0].layer_report[0]
    assert (small["choice"], large["choice"]) == ("ghost", "instantiate")


class TokenModel(nn.Module):
    """A bare cls token and position embedding (like timm's ViT) around a linear layer."""

    def __init__(self, d=4, n=3):
        super().__init__()
        self.cls_token = nn.Parameter(torch.randn(1, 1, d))
        self.pos_embed = nn.Parameter(torch.randn(1, n + 1, d))
        self.proj = nn.Linear(d, d)
        self.gamma = nn.Parameter(torch.randn(d))

    def forward(self, x):
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1) + self.pos_embed
        return self.proj(x).tanh() * self.gamma


class TwoOutputs(nn.Module):
    """A module without a rule that returns a tuple and takes a keyword argument."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.randn(5))
        self.shift = nn.Parameter(torch.randn(5))

    def forward(self, x, *, power=2):
        return x * self.scale, (x + self.shift).pow(power)


class UsesTwoOutputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = TwoOutputs()

    def forward(self, x):
        a, b = self.inner(x, power=3)
        return a.tanh() + b.sin()


class LayerNorm2d(nn.LayerNorm):
    """timm-style channels-first LayerNorm: a subclass whose forward permutes."""

    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        x = nn.functional.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


@pytest.mark.parametrize("case", ["tokens", "tuple_kwargs", "layernorm2d", "conv_transpose", "prelu"])
def test_parameters_without_a_module_rule_take_operation_rules_exactly(case):
    torch.manual_seed(3)
    if case == "tokens":
        model, x = TokenModel(), torch.randn(3, 3, 4)
    elif case == "tuple_kwargs":
        model, x = UsesTwoOutputs(), torch.randn(4, 5)
    elif case == "layernorm2d":
        norm = LayerNorm2d(3)
        with torch.no_grad():
            norm.weight.normal_()
        model, x = nn.Sequential(nn.Conv2d(2, 3, 1), norm), torch.randn(3, 2, 4, 4)
    elif case == "conv_transpose":
        model, x = nn.Sequential(nn.ConvTranspose2d(2, 3, 3, stride=2)), torch.randn(3, 2, 3, 3)
    else:
        model, x = nn.Sequential(nn.Linear(4, 4), nn.PReLU(4)), torch.randn(3, 4)
    engines = run_all(model, x)
    paths = {r["name"]: r["path"] for r in engines[0].layer_report}
    assert "replay" not in paths.values() and "op" in paths.values()


class Reused(nn.Module):
    """Each layer called twice in one forward: a weight used twice by the same module."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(5, 3)
        self.conv = nn.Conv1d(3, 3, 2, padding=1)
        self.norm = nn.GroupNorm(1, 3)
        self.lin = nn.Linear(3, 3)
        self.token = TwoOutputs()

    def forward(self, idx):
        h = self.emb(idx) + self.emb(idx.flip(1))  # [B, T, 3]
        h = self.conv(self.conv(h.transpose(1, 2)).tanh())  # lengths T+1, then T+2
        h = self.norm(self.norm(h))
        h = self.lin(self.lin(h.transpose(1, 2)).tanh())
        a, b = self.token(h.mean(1)[:, :3].repeat(1, 2)[:, :5])
        a2, _ = self.token(a)
        return torch.cat([h.flatten(1), a2, b], 1)


def test_modules_called_twice_are_exact():
    torch.manual_seed(0)
    run_all(Reused(), torch.randint(0, 5, (3, 4)))


class WithUnusedAndFrozen(nn.Module):
    def __init__(self):
        super().__init__()
        self.used = nn.Linear(3, 2)
        self.unused = nn.Linear(3, 2)
        self.frozen = nn.Linear(3, 3)
        self.frozen.weight.requires_grad_(False)

    def forward(self, x):
        self.unused(x)  # computed, never reaches the loss
        return self.used(self.frozen(x))


def test_unused_outputs_and_frozen_parameters():
    torch.manual_seed(0)
    model = WithUnusedAndFrozen()
    x = torch.randn(4, 3)
    reference = oracle(model.double(), x)
    assert "frozen.weight" not in reference
    for algorithm in OWN_ALGORITHMS:
        engine = check_algorithm(model, x, algorithm=algorithm, reference=reference)
        assert engine.model.frozen.weight.grad is None
        assert engine.model.unused.weight.grad is None or not engine.model.unused.weight.grad.any()


class TiedInParentForward(nn.Module):
    """An output layer tied to the embedding, used in the parent's forward."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(7, 4)
        self.mix = nn.Linear(4, 4)

    def forward(self, idx):
        return (self.mix(self.embed(idx)) @ self.embed.weight.t()).sum(1)


class BeitLikeAttention(nn.Module):
    """timm's BEiT: the qkv Linear's weight is used directly with a bias built from own parameters."""

    def __init__(self, d=6):
        super().__init__()
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.q_bias = nn.Parameter(torch.randn(d))
        self.v_bias = nn.Parameter(torch.randn(d))
        self.proj = nn.Linear(d, d)

    def forward(self, x):
        bias = torch.cat([self.q_bias, torch.zeros_like(self.q_bias), self.v_bias])
        q, k, v = nn.functional.linear(x, self.qkv.weight, bias).chunk(3, -1)
        attn = (q @ k.transpose(-1, -2)).softmax(-1)
        return self.proj(attn @ v)


class Beitish(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(3, 6)
        self.attn = BeitLikeAttention()
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        return self.head(self.attn(self.embed(x)).mean(1))


@pytest.mark.parametrize("case", ["tied_in_parent", "beit_attention"])
def test_parameters_used_outside_their_module_take_the_consuming_operations(case):
    """Every use of such a parameter (its module's own included) goes to one operation rule."""
    torch.manual_seed(0)
    if case == "tied_in_parent":
        model, x = TiedInParentForward(), torch.randint(0, 7, (3, 5))
        name, params, ops = "embed.weight", ["embed.weight"], "replay:embedding+replay:matmul"
    else:
        model, x = Beitish(), torch.randn(3, 4, 3)
        name, params, ops = "attn.q_bias+attn.v_bias+attn.qkv.weight", ["attn.q_bias", "attn.v_bias", "attn.qkv.weight"], "linear"
    engines = run_all(model, x)
    report = {r["name"]: r for r in engines[0].layer_report}
    assert report[name]["path"] == "op" and report[name]["params"] == params and report[name]["type"] == ops
    assert not any(r["path"] == "replay" for r in report.values())
    if case == "beit_attention":  # F.linear on one weight has the Linear rule's ghost norm
        ghost = engines[OWN_ALGORITHMS.index("ghost")]
        assert {r["name"]: r["choice"] for r in ghost.layer_report}[name] == "ghost"


def test_norms_computed_in_batch_chunks_are_exact(monkeypatch):
    """With a tiny working-memory budget every layer's norm (and book-keeping's kept per-sample gradients)
    is computed a few samples at a time."""
    import dpbench.clipping.own as own

    monkeypatch.setattr(own, "CHUNK_ELEMENTS", 1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.Tanh(), nn.Conv2d(4, 4, 3),
                          nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    run_all(model, torch.randn(5, 3, 6, 6))
    run_all(Reused(), torch.randint(0, 5, (4, 4)))
    run_all(TokenModel(), torch.randn(3, 3, 4))


class TinyTransformer(nn.Module):
    """torch's own TransformerEncoder: MultiheadAttention uses out_proj.weight in its own forward."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(11, 8, padding_idx=0)
        layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(8, 3)

    def forward(self, idx):
        return self.head(self.enc(self.emb(idx)).mean(1))


def test_torch_transformer_encoder_is_exact():
    torch.manual_seed(0)
    engines = run_all(TinyTransformer(), torch.randint(0, 11, (3, 5)))
    rules = {r["name"]: r["rule"] for r in engines[0].layer_report}
    # MultiheadAttention works sequence-first: no batch-first operation consumes its in_proj_weight, so its
    # forward is replayed per sample (the exact fallback)
    assert rules["enc.layers.0.self_attn"] == "GenericRule" and rules["emb"] == "EmbeddingRule"
