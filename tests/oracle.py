"""Brute-force reference: per-sample gradients from torch.func.vmap(grad) on the same model, and a
checker comparing an algorithm's norms and clipped sums against it."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from dpbench.clipping import PrivacyEngine


def per_sample_loss(out: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
    """Cross-entropy for [B, C] outputs with targets; otherwise a nonlinear function of the output."""
    if target is not None:
        return F.cross_entropy(out, target, reduction="none")
    flat = out.flatten(1)
    weights = torch.linspace(-1.0, 1.0, flat.shape[1], dtype=flat.dtype, device=flat.device)
    return (flat * weights).sum(1) + 0.25 * flat.pow(2).sum(1)


def oracle(model: nn.Module, x, target=None) -> dict[str, torch.Tensor]:
    """Per-sample gradients {name: [B, *shape]} of every trainable parameter."""
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
    buffers = dict(model.named_buffers())

    def loss(p, xi, ti):
        out = functional_call(model, {**p, **frozen, **buffers}, (xi.unsqueeze(0),))
        return per_sample_loss(out, None if ti is None else ti.unsqueeze(0))[0]

    in_dims = (None, 0, None if target is None else 0)
    return vmap(grad(loss), in_dims=in_dims)(params, x, target)


def flat_norms(grads: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.flatten(1) for g in grads.values()], 1).norm(dim=1)


def check_algorithm(model: nn.Module, x, target=None, algorithm="mixed_ghost", rtol=1e-9,
                    max_grad_norm=None, reference=None):
    """Run `algorithm` on a copy of `model` and assert norms and p.grad equal the oracle's.

    R defaults to the median oracle norm, so some samples are clipped and some are not. The reference
    may be in a higher precision than the model (float64 truth for a float32 run); comparisons are made
    in the reference's precision.
    Returns the engine (detached) for further inspection."""
    reference = reference if reference is not None else oracle(model, x, target)
    norms = flat_norms(reference)
    positive = norms[norms > 0]
    if max_grad_norm is not None:
        R = max_grad_norm
    else:
        R = float(positive.median()) if len(positive) else 1.0
    coef = (R / norms).clamp(max=1.0)
    work = copy.deepcopy(model)
    engine = PrivacyEngine(work, algorithm=algorithm, max_grad_norm=R)
    engine.backward(per_sample_loss(work(x), target))
    if engine.per_sample_norms is not None:
        err = ((engine.per_sample_norms.to(norms.dtype) - norms).abs() / norms.clamp_min(1e-30)).max().item()
        assert err <= rtol, f"{algorithm}: per-sample norms off by {err:.2e} (rtol {rtol})"
    params = dict(work.named_parameters())
    for name, g in reference.items():
        expected = torch.einsum("b,b...->...", coef, g) if engine.per_sample_norms is not None else g.sum(0)
        got = params[name].grad
        got = got.to(expected.dtype) if got is not None else None
        if got is None:  # autograd leaves unused parameters without a gradient
            assert not expected.any(), f"{algorithm}: parameter {name} got no gradient"
            continue
        scale = max(expected.norm().item(), norms.max().item() * 1e-3, 1e-30)  # all-zero: exact
        err = (got - expected).norm().item() / scale
        assert err <= rtol, f"{algorithm}: gradient of {name} off by {err:.2e} (rtol {rtol})"
    engine.detach()
    return engine


OWN_ALGORITHMS = ["per_sample", "fastgradclip", "ghost", "mixed_ghost", "bk_ghost", "bk_mixed"]
