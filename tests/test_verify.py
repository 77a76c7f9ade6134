"""dpbench.verify: an algorithm's per-sample norms and clipped sum against brute force, once per run.
Exact algorithms are reported exact, a corrupted computation wrong, nonprivate and refused models
skipped; the run's model, gradients and random state are never touched. A few seconds."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dpbench.clipping import ALGORITHMS, PrivacyEngine
from dpbench.models import create_model
from dpbench.verify import TOLERANCES, status_of, text, verify_algorithm

PRIVATE = [name for name, a in ALGORITHMS.items() if a.backend != "plain"]


def tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    return create_model("cnn", num_classes=3, image_size=8).train()


def batch(n: int = 6, channels: int = 3):
    generator = torch.Generator().manual_seed(1)
    return torch.randn(n, channels, 8, 8, generator=generator), torch.randint(0, 3, (n,), generator=generator)


@pytest.mark.parametrize("algorithm", PRIVATE)
def test_every_algorithm_is_exact_on_a_small_model_and_nothing_of_the_run_changes(algorithm):
    model = tiny_cnn()
    x, y = batch()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(123)
    rng = torch.get_rng_state()
    verified = verify_algorithm(model, algorithm, x, y)
    assert verified["status"] == "exact", verified
    assert verified["dtype"] == "float64" and verified["tolerance"] == TOLERANCES[torch.float64] == 1e-6
    assert verified["max_relative_error"] < 1e-12 and verified["samples"] == 4 and verified["seconds"] > 0
    assert verified["why"] is None and verified["max_grad_norm"] > 0
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters()) and model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert text(verified) == "exact" and status_of(text(verified)) == "exact"


def test_scaled_norms_are_reported_wrong(monkeypatch):
    """An engine whose per-sample norms are 1% too large (the clipped sum is then off too)."""
    backward = PrivacyEngine.backward

    def scaled(self, losses):
        backward(self, losses)
        self.per_sample_norms = self.per_sample_norms * 1.01

    monkeypatch.setattr(PrivacyEngine, "backward", scaled)
    verified = verify_algorithm(tiny_cnn(), "mixed_ghost", *batch())
    assert verified["status"] == "wrong"
    assert verified["norm_relative_error"] == pytest.approx(0.01, rel=1e-6)
    assert verified["max_relative_error"] >= 0.01 and "per-sample norms off by 1.0e-02" in verified["why"]
    assert text(verified).startswith("wrong (1.0e-02") and status_of(text(verified)) == "wrong"


def test_a_wrong_clipped_sum_with_right_norms_is_reported_wrong(monkeypatch):
    """Right norms, but one layer's share of the clipped sum lost (as if a layer were skipped)."""
    backward = PrivacyEngine.backward

    def lossy(self, losses):
        backward(self, losses)
        self.model.features[0].weight.grad.mul_(0.5)

    monkeypatch.setattr(PrivacyEngine, "backward", lossy)
    verified = verify_algorithm(tiny_cnn(), "bk_mixed", *batch())
    assert verified["status"] == "wrong"
    assert verified["norm_relative_error"] < 1e-12 and verified["sum_relative_error"] == pytest.approx(0.5)


@pytest.mark.skipif(not __import__("opacus").__version__.startswith("1.6"), reason="Opacus 1.6's behaviour")
def test_opacus_zero_per_sample_gradients_of_convolutions_on_channels_last_inputs_are_caught():
    """A real error this check found: Opacus 1.6's hooks give every Conv2d after the first a per-sample
    gradient of zero when the input is channels_last (a 1-channel image batch with strides (HW, 1, W, 1),
    as the digits dataset's is): its norms come out too small and its clipped sum lacks those layers."""
    torch.manual_seed(0)
    model = create_model("cnn", num_classes=10, image_size=8, in_channels=1).train()
    x = torch.randn(4, 8, 8, 1).permute(0, 3, 1, 2)  # channels_last for C = 1
    y = torch.randint(0, 10, (4,))
    assert verify_algorithm(model, "mixed_ghost", x, y)["status"] == "exact"
    verified = verify_algorithm(model, "opacus", x, y)
    assert verified["status"] == "wrong" and verified["sum_relative_error"] == pytest.approx(1.0)


def test_nonprivate_and_a_refused_model_are_skipped_with_the_reason():
    verified = verify_algorithm(tiny_cnn(), "nonprivate", *batch())
    assert verified["status"] == "skipped" and "no per-sample clipping" in verified["why"]
    assert text(verified) == "skipped (nonprivate: no per-sample clipping to verify)"
    with_batchnorm = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(144, 3))
    verified = verify_algorithm(with_batchnorm, "ghost", *batch())
    assert verified["status"] == "skipped" and "refuses" in verified["why"] and "BatchNorm" in verified["why"]


class NoFloat64(nn.Module):
    """A model that cannot run in float64 (as some fused kernels cannot)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(192, 16), nn.Tanh(), nn.Linear(16, 3))

    def forward(self, x):
        if x.dtype == torch.float64:
            raise RuntimeError("kernel not implemented for 'Double'")
        return self.body(x)


def test_a_model_that_cannot_run_in_float64_is_compared_in_float32_and_says_so():
    torch.manual_seed(0)
    verified = verify_algorithm(NoFloat64(), "ghost", *batch())
    assert verified["status"] == "exact" and verified["dtype"] == "float32"
    assert verified["tolerance"] == 1e-3 and "float64 failed (kernel not implemented" in verified["why"]
    assert text(verified) == "exact (float32)"


def test_dropout_is_deterministic_on_both_sides_and_stays_on_in_the_run():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(192, 32), nn.Tanh(), nn.Dropout(0.5), nn.Linear(32, 3)).train()
    verified = verify_algorithm(model, "mixed_ghost", *batch())
    assert verified["status"] == "exact", verified
    assert model[3].training


def test_texts_of_records():
    assert text(None) == "not recorded" and status_of(None) == "not recorded" and status_of(float("nan")) == "not recorded"
    assert text({"status": "skipped", "why": "disabled by --no-verify"}) == "skipped (disabled by --no-verify)"
    assert text({"status": "wrong", "max_relative_error": 0.0432}) == "wrong (4.3e-02)"
    assert status_of("wrong (4.3e-02)") == "wrong" and status_of("skipped (x)") == "skipped"
