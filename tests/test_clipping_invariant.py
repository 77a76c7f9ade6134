"""The clipping invariant itself, over generated layer stacks and usage patterns (several forwards,
views, shared modules, shape changes between steps, empty batches): for every sample k, the clipped
sum minus the clipped sum without k equals min(1, R/‖gₖ‖)·gₖ, with gₖ from torch.func brute force.
Float64, so that a difference is logic, not rounding."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from dpbench.clipping import PrivacyEngine
from oracle import OWN_ALGORITHMS, flat_norms
from test_clipping_usage import per_sample_oracle

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

LENGTH, CLASSES = 6, 3


class Tokens(nn.Module):
    """A module applied to [B, C, L] as tokens [B, L, C]."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x.transpose(1, 2)).transpose(1, 2)


class Scale(nn.Module):
    """A bare per-channel scale (an operation rule)."""

    def __init__(self, C):
        super().__init__()
        self.gamma = nn.Parameter(torch.linspace(0.5, 1.5, C).view(C, 1))

    def forward(self, x):
        return x * self.gamma


class Twice(nn.Module):
    """One module applied twice (a shared module: two calls of one layer)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(torch.tanh(self.inner(x)))


def block(kind: str, C: int, width: int) -> tuple[nn.Module, int]:
    """A generated block on [B, C, L] and its output channels."""
    if kind == "conv":
        return nn.Conv1d(C, width, 3, padding=1), width
    if kind == "conv_k1":
        return nn.Conv1d(C, width, 1), width
    if kind == "groupnorm":
        return nn.GroupNorm(1, C), C
    if kind == "linear":
        return Tokens(nn.Linear(C, width)), width
    if kind == "layernorm":
        return Tokens(nn.LayerNorm(C)), C
    if kind == "scale":
        return Scale(C), C
    return Twice(nn.Conv1d(C, C, 3, padding=1)), C


def build(kinds: list[str], widths: list[int], seed: int) -> nn.Module:
    torch.manual_seed(seed)
    layers, C = [], 3
    for kind, width in zip(kinds, widths):
        layer, C = block(kind, C, width)
        layers += [layer, nn.Tanh()]
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(C * LENGTH, CLASSES)).double()


PATTERNS = {
    "one_forward": lambda model, x, y: F.cross_entropy(model(x), y, reduction="none"),
    "two_views": lambda model, x, y: (F.cross_entropy(model(x), y, reduction="none")
                                      + 0.5 * F.cross_entropy(model(x.flip(-1)), y, reduction="none")),
}


def step(engine, model, pattern, x, y, extra_forward: bool, empty_first: bool) -> dict[str, torch.Tensor]:
    """One private step's clipped sum {name: tensor} (no noise), the usage pattern around it."""
    for p in model.parameters():
        p.grad = None
    if empty_first:
        engine.backward(PATTERNS[pattern](model, x[:0], y[:0]))
    losses = PATTERNS[pattern](model, x, y)
    if extra_forward:
        model(torch.randn_like(x))  # a forward the losses do not depend on
    engine.backward(losses)
    return {n: p.grad.clone() if p.grad is not None else torch.zeros_like(p) for n, p in model.named_parameters()}


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kinds=st.lists(st.sampled_from(["conv", "conv_k1", "groupnorm", "linear", "layernorm", "scale", "twice"]),
                      min_size=1, max_size=3),
       widths=st.lists(st.integers(2, 5), min_size=3, max_size=3),
       B=st.integers(2, 4), algorithm=st.sampled_from(OWN_ALGORITHMS), pattern=st.sampled_from(list(PATTERNS)),
       extra_forward=st.booleans(), empty_first=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_each_sample_adds_exactly_its_clipped_gradient(kinds, widths, B, algorithm, pattern, extra_forward,
                                                       empty_first, seed):
    model = build(kinds, widths, seed)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, 3, LENGTH, generator=g, dtype=torch.float64)
    y = torch.randint(0, CLASSES, (B,), generator=g)
    reference = per_sample_oracle(model, lambda f, x, y: PATTERNS[pattern](f, x, y), x, y)
    norms = flat_norms(reference)
    R = float(norms.median())
    engine = PrivacyEngine(model, algorithm, max_grad_norm=R)
    full = step(engine, model, pattern, x, y, extra_forward, empty_first)
    for k in range(B):  # the same engine: the batch shrinks and grows between steps
        keep = torch.tensor([i != k for i in range(B)])
        without = step(engine, model, pattern, x[keep], y[keep], extra_forward, empty_first)
        coef = min(1.0, R / float(norms[k]))
        for name, gk in reference.items():
            expected = coef * gk[k]
            got = full[name] - without[name]
            scale = max(float(full[name].norm()), 1e-30)
            assert float((got - expected).norm()) <= 1e-9 * scale, (name, k)
