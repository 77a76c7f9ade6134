"""The engine's contract: noise, accumulation over physical batches, refusals with clear messages,
detach, the algorithm registry, and CUDA when a GPU is present."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dpbench.clipping import ALGORITHMS, PrivacyEngine, replace_batchnorm
from dpbench.errors import DpbenchError
from oracle import OWN_ALGORITHMS, check_algorithm, per_sample_loss

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def small_cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.ReLU(),
                         nn.Conv2d(4, 4, 3, stride=2, groups=2), nn.Flatten(), nn.Linear(4 * 3 * 3, 5))


def test_registry_names_every_algorithm():
    assert set(ALGORITHMS) == {"nonprivate", "opacus", "opacus_ghost", "per_sample", "fastgradclip", "ghost",
                               "mixed_ghost", "bk_ghost", "bk_mixed"}
    assert {a.backprops for a in ALGORITHMS.values()} == {1, 2}


# ---- noise -----------------------------------------------------------------------------------------
def noisy_grads(seed, sigma=1.5, R=2.0):
    model = nn.Sequential(nn.Linear(1000, 500), nn.Linear(500, 1000))
    engine = PrivacyEngine(model, "mixed_ghost", max_grad_norm=R, noise_multiplier=sigma,
                           generator=torch.Generator().manual_seed(seed))
    engine.add_noise()
    engine.detach()
    return [p.grad.clone() for p in model.parameters()]


def test_noise_std_is_sigma_times_R_per_coordinate():
    """1.5M standard normal draws (seeded, so deterministic): the sample std of N draws is within
    5/sqrt(2N) ≈ 0.3% of the true std with overwhelming probability; we allow 1%."""
    grads = noisy_grads(0)
    flat = torch.cat([g.flatten() for g in grads])
    assert flat.numel() == 1_001_500
    assert abs(flat.std().item() / 3.0 - 1) < 0.01
    assert abs(flat.mean().item()) < 5 * 3.0 / flat.numel() ** 0.5
    for g in grads:  # every parameter, not only in aggregate
        assert abs(g.std().item() / 3.0 - 1) < 0.05


def test_noise_is_independent_across_parameters_and_reproducible():
    w1, _, w2, _ = noisy_grads(1)
    n = 500_000
    corr = torch.corrcoef(torch.stack([w1.flatten()[:n], w2.flatten()[:n]]))[0, 1].item()
    assert abs(corr) < 10 / n ** 0.5
    assert all(torch.equal(a, b) for a, b in zip(noisy_grads(7), noisy_grads(7)))
    assert not torch.equal(noisy_grads(7)[0], noisy_grads(8)[0])


def test_noise_adds_to_existing_gradients():
    model = nn.Linear(3, 2)
    model.weight.grad = torch.ones_like(model.weight)
    PrivacyEngine(model, "bk_mixed", max_grad_norm=1.0, noise_multiplier=0.0).add_noise()
    assert torch.equal(model.weight.grad, torch.ones_like(model.weight))
    assert torch.equal(model.bias.grad, torch.zeros_like(model.bias))


def test_nonprivate_adds_no_noise():
    model = nn.Linear(3, 2)
    engine = PrivacyEngine(model, "nonprivate", max_grad_norm=1.0, noise_multiplier=5.0)
    engine.backward(model(torch.randn(4, 3)).sum(1))
    before = model.weight.grad.clone()
    engine.add_noise()
    assert torch.equal(model.weight.grad, before)


# ---- accumulation ----------------------------------------------------------------------------------
@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
def test_two_half_batches_equal_one_whole_batch(algorithm):
    x, y = torch.randn(6, 3, 8, 8, dtype=torch.float64), torch.randint(0, 5, (6,))
    whole, halves = small_cnn().double(), small_cnn().double()
    e1 = PrivacyEngine(whole, algorithm, max_grad_norm=0.5)
    e1.backward(per_sample_loss(whole(x), y))
    e2 = PrivacyEngine(halves, algorithm, max_grad_norm=0.5)
    norms = []
    for part in (slice(0, 3), slice(3, 6)):
        e2.backward(per_sample_loss(halves(x[part]), y[part]))
        norms.append(e2.per_sample_norms)
    for p, q in zip(whole.parameters(), halves.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=1e-12)
    if e1.per_sample_norms is not None:
        torch.testing.assert_close(torch.cat(norms), e1.per_sample_norms, rtol=1e-6, atol=0)


# ---- refusals -------------------------------------------------------------------------------------
def test_batchnorm_is_refused_with_the_module_name_and_the_fix():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Sequential(nn.BatchNorm2d(4)))
    with pytest.raises(DpbenchError, match=r"'1\.0' is BatchNorm2d.*replace_batchnorm"):
        PrivacyEngine(model, "mixed_ghost")
    with torch.no_grad():
        model[1][0].weight.uniform_()
    scale = model[1][0].weight.clone()
    replace_batchnorm(model)
    assert isinstance(model[1][0], nn.GroupNorm) and model[1][0].num_channels == 4
    assert torch.equal(model[1][0].weight, scale)
    PrivacyEngine(model, "mixed_ghost").detach()
    PrivacyEngine(nn.Sequential(nn.BatchNorm1d(3)), "nonprivate")  # non-private training may keep it


class TiedAcrossModules(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(7, 4)
        self.head = nn.Linear(4, 7, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, idx):
        return self.head(self.embed(idx)).sum(1)


class TiedInParentForward(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(7, 4)

    def forward(self, idx):
        return (self.embed(idx) @ self.embed.weight.t()).sum(1)


def test_a_parameter_registered_in_two_modules_is_refused_naming_both():
    with pytest.raises(DpbenchError, match=r"'head\.weight' is the same tensor as 'embed\.weight'"):
        PrivacyEngine(TiedAcrossModules(), "ghost")


def test_embedding_options_that_mix_samples_are_refused():
    with pytest.raises(DpbenchError, match=r"'0' \(Embedding\) uses scale_grad_by_freq"):
        PrivacyEngine(nn.Sequential(nn.Embedding(5, 2, scale_grad_by_freq=True)), "ghost")
    with pytest.raises(DpbenchError, match=r"'0' \(Embedding\) has sparse=True"):
        PrivacyEngine(nn.Sequential(nn.Embedding(5, 2, sparse=True)), "ghost")


class NoisyScale(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(4))
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        return self.drop(x) * self.scale


def test_random_forward_around_an_operation_rule_is_exact():
    """The mul rule reads the dropped-out input the forward used: no replay, so randomness is fine."""
    model, x = NoisyScale(), torch.randn(3, 4)
    engine = PrivacyEngine(model, "mixed_ghost", max_grad_norm=1e9)
    torch.manual_seed(5)
    engine.backward(model(x).sum(1))
    torch.manual_seed(5)
    expected = model.drop(x).norm(dim=1)  # the per-sample gradient of scale is drop(x)ᵢ
    assert torch.allclose(engine.per_sample_norms, expected)
    assert engine.layer_report[0]["path"] == "op"


class NoisySequenceFirst(nn.Module):
    """A bare parameter consumed sequence-first after dropout: only the module's replay can serve it."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(4, 1, 4))
        self.drop = nn.Dropout(0.5)

    def forward(self, x):  # [B, 4, 4]
        return (self.drop(x).transpose(0, 1) + self.scale).transpose(0, 1)


def test_random_forward_under_the_generic_rule_is_refused_by_name():
    model = nn.Sequential(nn.Linear(4, 4), NoisySequenceFirst())
    engine = PrivacyEngine(model, "mixed_ghost")
    with pytest.raises(DpbenchError, match=r"module '1' \(NoisySequenceFirst\).*random"):
        engine.backward(model(torch.randn(3, 4, 4)).sum((1, 2)))


class ModifiesInputAfterUse(nn.Module):
    def __init__(self):
        super().__init__()
        self.first = nn.Linear(3, 3)
        self.second = nn.Linear(3, 3)

    def forward(self, x):
        h = self.first(x).tanh()
        out = self.second(h)
        h.mul_(2)  # changes the input `second` saw
        return out + h


def test_input_modified_in_place_after_use_is_refused_by_name():
    model = ModifiesInputAfterUse()
    engine = PrivacyEngine(model, "bk_ghost")
    with pytest.raises(DpbenchError, match=r"module 'second' was modified in place"):
        engine.backward(model(torch.randn(2, 3)).sum(1))


class SequenceFirst(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)

    def forward(self, x):  # x [B, T, 3] processed as [T, B, 3]
        return self.lin(x.transpose(0, 1)).transpose(0, 1).flatten(1)


def test_layers_used_sequence_first_fall_back_to_the_exact_replay_of_the_batch_first_module():
    """The Linear's output is transposed outside it, so its rule cannot hold: the innermost module whose
    forward is batch-first (here the model) is replayed per sample."""
    torch.manual_seed(0)
    engine = check_algorithm(SequenceFirst().double(), torch.randn(2, 5, 3, dtype=torch.float64), algorithm="ghost")
    (row,) = engine.layer_report
    assert row["path"] == "replay" and row["params"] == ["lin.weight", "lin.bias"]


class SequenceFirstInside(nn.Module):
    """A Linear module called on a sequence-first input and nothing else."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)

    def forward(self, x):
        return self.lin(x.transpose(0, 1))


@pytest.mark.parametrize("T, match", [
    # the Linear's output does not carry the batch, so the model is replayed, and its output is refused
    (5, r"module 'SequenceFirstInside' \(SequenceFirstInside\) has an output with leading dimension 5, but the "
        r"batch has 2 losses"),
    # the sequence as long as the batch: sizes cannot tell, the layout probe can
    (2, r"module 'lin' \(Linear\) has an output whose dim 0 is not the batch"),
    (4, r"module 'lin' \(Linear\) has an output whose dim 0 is not the batch")])
@pytest.mark.parametrize("algorithm", OWN_ALGORITHMS)
def test_layers_that_are_not_batch_first_are_refused_by_name_whatever_the_sizes(T, match, algorithm):
    model = SequenceFirstInside()
    engine = PrivacyEngine(model, algorithm)
    with pytest.raises(DpbenchError, match=match):
        engine.backward(model(torch.randn(2, T, 3)).sum((0, 2)))
    assert all(p.grad is None for p in model.parameters())  # refused before anything was added


@pytest.mark.parametrize("kwargs, match", [
    ({"algorithm": "ghostly"}, r"unknown algorithm 'ghostly'; choose one of: nonprivate"),
    ({"max_grad_norm": 0}, r"max_grad_norm must be > 0"),
    ({"noise_multiplier": -1}, r"noise_multiplier must be >= 0"),
])
def test_bad_engine_arguments(kwargs, match):
    with pytest.raises(DpbenchError, match=match):
        PrivacyEngine(nn.Linear(2, 2), **kwargs)


def test_losses_must_be_per_sample():
    model = nn.Linear(3, 2)
    engine = PrivacyEngine(model, "mixed_ghost")
    with pytest.raises(DpbenchError, match=r"per-sample losses of shape \[B\].*got \(\)"):
        engine.backward(model(torch.randn(4, 3)).sum())


def test_detach_removes_every_hook():
    model = small_cnn()
    for algorithm in ALGORITHMS:
        engine = PrivacyEngine(model, algorithm)
        engine.backward(per_sample_loss(model(torch.randn(2, 3, 8, 8)), torch.tensor([0, 1])))
        engine.detach()
        for m in model.modules():
            assert not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks, algorithm
        assert "forward" not in model.__dict__
        model.zero_grad()


def test_layer_report_lists_every_parameterised_layer_in_forward_order():
    model = small_cnn()
    engine = PrivacyEngine(model, "mixed_ghost")
    engine.backward(per_sample_loss(model(torch.randn(2, 3, 8, 8)), torch.tensor([0, 1])))
    names = [r["name"] for r in engine.layer_report]
    assert names == ["0", "1", "3", "5"]
    conv = engine.layer_report[2]
    assert (conv["T"], conv["d"], conv["p"], conv["groups"]) == (9, 2 * 9, 2, 2)
    assert conv["path"] == "module" and conv["params"] == ["3.weight", "3.bias"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("algorithm", [a for a in ALGORITHMS if a != "nonprivate"])
def test_cuda_matches_oracle(algorithm):
    model = small_cnn().double().cuda()
    x = torch.randn(5, 3, 8, 8, dtype=torch.float64, device="cuda")
    y = torch.randint(0, 5, (5,), device="cuda")
    check_algorithm(model, x, y, algorithm, rtol=1e-6 if algorithm.startswith("opacus") else 1e-9)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_noise_with_cuda_generator():
    model = nn.Linear(100, 100).cuda()
    engine = PrivacyEngine(model, "bk_mixed", max_grad_norm=1.0, noise_multiplier=2.0,
                           generator=torch.Generator(device="cuda").manual_seed(0))
    engine.add_noise()
    assert abs(model.weight.grad.std().item() / 2.0 - 1) < 0.05


class Tokens(nn.Module):
    """A bare parameter (generic rule) around a linear layer."""

    def __init__(self, d=36):
        super().__init__()
        self.cls_token = nn.Parameter(torch.randn(1, 1, d))
        self.proj = nn.Linear(d, d)

    def forward(self, x):
        return self.proj(torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1))


@pytest.mark.parametrize("algorithm", ["per_sample", "fastgradclip", "ghost", "mixed_ghost", "bk_ghost", "bk_mixed"])
def test_bf16_autocast_matches_float32_to_bf16_precision(algorithm):
    """Under autocast, layers recorded in float32 ran in bfloat16: the rules follow the gradients'
    precision, and the generic rule replays under the same autocast."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4), nn.Flatten(), nn.Unflatten(1, (4, 36)),
                          Tokens())
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 4, (4,))
    results = []
    for use_autocast in (False, True):
        work = copy.deepcopy(model)
        engine = PrivacyEngine(work, algorithm, max_grad_norm=1.0)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_autocast):
            out = work(x)
        engine.backward(per_sample_loss(out.float().flatten(1)[:, :4], y))
        results.append((engine.per_sample_norms, [p.grad for p in work.parameters()]))
    (n32, g32), (n16, g16) = results
    torch.testing.assert_close(n16, n32, rtol=5e-2, atol=0)
    for a, b in zip(g16, g32):
        assert a.dtype == torch.float32 and (a - b).norm() <= 5e-2 * b.norm() + 1e-6
