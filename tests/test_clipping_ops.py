"""Operation rules (clipping/layers/ops.py): parameters outside a module rule get their per-sample
gradients from the operations that consume them, exactly, on every timm family the project lists, and
the generic module replay remains only where no operation rule applies."""

from __future__ import annotations

import math
import random

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from dpbench.clipping.layers.ops import unbroadcast
from oracle import OWN_ALGORITHMS, check_algorithm, oracle

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

# small members of each family, with the operations that must take an operation rule
FAMILIES = {
    "vit_layer_scale": (lambda: timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2,
                                                  no_embed_class=True, init_values=0.1, num_classes=10),
                        32, {"add", "expand", "mul", "layer_norm"}),
    "deit_distilled": (lambda: timm.create_model("deit_tiny_distilled_patch16_224", img_size=32, patch_size=8,
                                                 depth=2, num_classes=10), 32, {"add", "expand", "layer_norm"}),
    "beit": (lambda: timm.create_model("beit_base_patch16_224", img_size=32, patch_size=8, embed_dim=32, depth=2,
                                       num_heads=2, num_classes=10),
             32, {"expand", "mul", "layer_norm", "linear", "attention_mask"}),
    "crossvit": (lambda: timm.create_model("crossvit_tiny_240", img_size=32, img_scale=(1.0, 1.0), patch_size=[8, 16],
                                           embed_dim=[16, 32], depth=[[1, 1, 0]], num_heads=[2, 2],
                                           mlp_ratio=[2, 2, 1], num_classes=10), 32, {"add", "expand"}),
    "convit": (lambda: timm.create_model("convit_tiny", img_size=32, patch_size=8, embed_dim=32, num_heads=2, depth=2,
                                         local_up_to_layer=1, num_classes=10), 32, {"add", "expand", "mul", "layer_norm"}),
    "convnext": (lambda: timm.create_model("convnext_atto", depths=(1, 1, 1, 1), dims=(8, 16, 24, 32), num_classes=10),
                 32, {"mul", "layer_norm"}),
}


def perturbed(model: nn.Module) -> nn.Module:
    """Parameters away from their initial values (zero biases and unit scales hide mistakes)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def kinds(engine) -> set[str]:
    return {kind for r in engine.layer_report if r["path"] == "op" for kind in r["type"].split("+")}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_timm_families_are_exact_without_module_replay_float64(family):
    make, size, expected = FAMILIES[family]
    torch.manual_seed(0)
    model = perturbed(make()).double()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(3, 3, size, size, generator=g, dtype=torch.float64), torch.randint(0, 10, (3,), generator=g)
    reference = oracle(model, x, y)
    for algorithm in OWN_ALGORITHMS:
        engine = check_algorithm(model, x, y, algorithm, rtol=1e-9, reference=reference)
        assert not [r["name"] for r in engine.layer_report if r["path"] == "replay"]
        assert expected <= kinds(engine)
        covered = {n for r in engine.layer_report for n in r["params"]}
        assert covered == set(reference)  # every trainable parameter, each in exactly one rule
        assert sum(len(r["params"]) for r in engine.layer_report) == len(reference)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_timm_families_float32_within_1e5_of_float64(family):
    make, size, _ = FAMILIES[family]
    torch.manual_seed(0)
    model = perturbed(make())
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(4, 3, size, size, generator=g), torch.randint(0, 10, (4,), generator=g)
    reference = oracle(model.double(), x.double(), y)
    model.float()
    for algorithm in ("mixed_ghost", "bk_mixed"):
        check_algorithm(model, x, y, algorithm, rtol=1e-5, reference=reference)


class TwoUses(nn.Module):
    """Parameters consumed by two operations each, through computed operands and directly."""

    def __init__(self, d=5):
        super().__init__()
        self.pos = nn.Parameter(torch.randn(1, 4, d))
        self.gamma = nn.Parameter(torch.randn(d))
        self.w = nn.Parameter(torch.randn(d, d))
        self.b = nn.Parameter(torch.randn(d))
        self.table = nn.Parameter(torch.randn(7, 2))
        self.register_buffer("index", torch.randint(0, 7, (16,)))
        self.head = nn.Linear(d, 3)

    def forward(self, x):  # x [B, 4, d]
        h = x + self.pos
        h = h * self.gamma + self.gamma.tanh() - self.pos  # gamma twice, pos again (subtracted)
        h = F.linear(h, self.w, self.b) + F.linear(h.flip(1), self.w * 0.5) + self.b.exp()
        bias = self.table[self.index].view(4, 4, 2).permute(2, 0, 1).unsqueeze(0)  # [1, 2, 4, 4]
        q = h[:, :, :2]
        scores = ((q @ q.transpose(1, 2)).unsqueeze(1) + bias).softmax(-1)  # a table indexed by a buffer
        return self.head(h + scores.sum((1, 2)).unsqueeze(-1))


def test_parameters_consumed_by_two_operations_are_exact():
    torch.manual_seed(0)
    model = TwoUses().double()
    x = torch.randn(3, 4, 5, dtype=torch.float64)
    reference = oracle(model, x)
    for algorithm in OWN_ALGORITHMS:
        engine = check_algorithm(model, x, algorithm=algorithm, rtol=1e-9, reference=reference)
        paths = {n: r["path"] for r in engine.layer_report for n in r["params"]}
        assert {paths[n] for n in ("pos", "gamma", "w", "b", "table")} == {"op"}


class Broadcasts(nn.Module):
    """One bare parameter of a random broadcast shape, consumed by a random elementwise operation."""

    def __init__(self, shape, op):
        super().__init__()
        self.theta = nn.Parameter(torch.randn(shape))
        self.op = op

    def forward(self, x):
        t = self.theta
        if self.op == "add":
            return (x + t).tanh()
        if self.op == "radd":
            return (t + x).tanh()
        if self.op == "sub":
            return (x - t).tanh()
        if self.op == "rsub":
            return (t - x).tanh()
        if self.op == "iadd":
            y = x * 1.0
            y += t
            return y.tanh()
        if self.op == "mul":
            return (x * t).tanh()
        if self.op == "imul":
            y = x.tanh()
            y *= t
            return y
        return torch.cat([t.expand(x.shape[0], *t.shape[1:]) if t.dim() == x.dim() else
                          t.expand(x.shape[0], *t.shape), x], -1).tanh()


@pytest.mark.parametrize("seed", range(12))
def test_elementwise_operation_rules_on_random_broadcast_shapes(seed):
    rng = random.Random(seed)
    op = rng.choice(["add", "radd", "sub", "rsub", "iadd", "mul", "imul", "expand"])
    B, dims = rng.randint(2, 4), [rng.randint(1, 4) for _ in range(rng.randint(1, 3))]
    shape = [n if rng.random() < 0.6 else 1 for n in dims]
    shape = shape[rng.randint(0, len(shape) - 1):]  # fewer leading dims than the input
    if op == "expand" or rng.random() < 0.3:
        shape = [1, *dims] if op != "expand" else [1, *dims[:-1], rng.randint(1, 3)]
    torch.manual_seed(seed)
    model = Broadcasts(shape, op).double()
    x = torch.randn(B, *dims, dtype=torch.float64)
    for engine in [check_algorithm(model, x, algorithm=a, rtol=1e-9) for a in ("mixed_ghost", "bk_mixed")]:
        (row,) = engine.layer_report
        assert row["path"] == "op", (op, shape, row)


def test_unbroadcast_matches_autograd_per_sample():
    rng = random.Random(0)
    for _ in range(20):
        B, out = rng.randint(1, 3), [rng.randint(1, 3) for _ in range(rng.randint(1, 3))]
        shape = [n if rng.random() < 0.5 else 1 for n in out][rng.randint(0, len(out) - 1):]
        if rng.random() < 0.3:
            shape = [1, *shape[-len(out):]] if len(shape) == len(out) else shape
        theta = torch.randn(shape, dtype=torch.float64, requires_grad=True)
        g = torch.randn(B, *out, dtype=torch.float64)
        expected = torch.stack([torch.autograd.grad((theta.expand(out) if len(shape) <= len(out) else theta)
                                                    .expand(B, *out)[i:i + 1].mul(g[i:i + 1]).sum(), theta)[0]
                                for i in range(B)])
        assert torch.allclose(unbroadcast(g, theta.shape), expected)


class SequenceFirst(nn.Module):
    """A bare parameter added to a sequence-first view: no batch-first operation consumes it, so the
    module around it is replayed (the exact fallback)."""

    def __init__(self):
        super().__init__()
        self.inner = nn.Linear(3, 3)
        self.pos = nn.Parameter(torch.randn(4, 1, 3))

    def forward(self, x):  # [B, 4, 3]
        h = self.inner(x).transpose(0, 1) + self.pos
        return h.transpose(0, 1).tanh()


def test_operations_without_a_batch_first_output_fall_back_to_the_module_replay():
    torch.manual_seed(0)
    engine = check_algorithm(SequenceFirst().double(), torch.randn(3, 4, 3, dtype=torch.float64),
                             algorithm="bk_mixed")
    report = {r["name"]: r for r in engine.layer_report}
    assert report["SequenceFirst"]["path"] == "replay" and report["SequenceFirst"]["params"] == ["pos"]
    assert report["inner"]["path"] == "module"


class MaskedAttention(nn.Module):
    """Attention whose additive mask is a parameter, or a table indexed by a buffer, of a random
    broadcast shape, passed by position or by keyword (BEiT's relative-position bias)."""

    def __init__(self, mask_shape, indexed: bool, keyword: bool, heads=2, tokens=4, dim=6):
        super().__init__()
        self.heads, self.keyword, self.indexed = heads, keyword, indexed
        self.qkv = nn.Linear(dim, 3 * dim)
        numel = math.prod(mask_shape)
        self.mask = nn.Parameter(torch.randn(numel + 3 if indexed else mask_shape) * 0.5)
        self.register_buffer("index", torch.randperm(numel + 3)[:numel])
        self.mask_shape = mask_shape
        self.head = nn.Linear(dim, 3)

    def forward(self, x):  # [B, T, d]
        B, T, d = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        mask = self.mask[self.index].view(self.mask_shape) if self.indexed else self.mask
        out = (F.scaled_dot_product_attention(q, k, v, attn_mask=mask) if self.keyword
               else F.scaled_dot_product_attention(q, k, v, mask))
        return self.head(out.transpose(1, 2).reshape(B, T, d).tanh())


@pytest.mark.parametrize("seed", range(6))
def test_attention_mask_parameters_take_the_mask_rule_without_replay(seed):
    rng = random.Random(seed)
    heads, tokens = 2, 4
    mask_shape = rng.choice([(tokens, tokens), (heads, tokens, tokens), (1, heads, tokens, tokens),
                             (1, 1, tokens, tokens), (heads, 1, tokens)])
    torch.manual_seed(seed)
    model = MaskedAttention(mask_shape, indexed=rng.random() < 0.5, keyword=rng.random() < 0.5).double()
    x = torch.randn(rng.randint(2, 4), tokens, 6, dtype=torch.float64)
    reference = oracle(model, x)
    for algorithm in OWN_ALGORITHMS:
        engine = check_algorithm(model, x, algorithm=algorithm, rtol=1e-9, reference=reference)
        row = next(r for r in engine.layer_report if r["params"] == ["mask"])
        assert (row["path"], row["type"]) == ("op", "attention_mask"), (mask_shape, row)
