"""Fine-tuning: --freeze / --train-only patterns, the engine skipping frozen parameters (no gradient,
no noise, no per-sample work), weights from a local file, and the Opacus rows refusing to invent a
per-sample gradient."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from dpbench.clipping import PrivacyEngine
from dpbench.clipping.layers.linear import LinearRule
from dpbench.errors import DpbenchError
from dpbench.finetune import freeze_parameters, load_weights_file
from oracle import check_algorithm, per_sample_loss

OWN = ["mixed_ghost", "bk_mixed", "per_sample"]
# the reference code's BEiT list (../shared/PAPER.md, "Training recipe of the reference code"; timm's
# BEiT has no pos_embed, and a pattern that matches nothing is refused)
PAPER_BEIT_FREEZE = ["*cls_token*", "*gamma_*", "*relative_position_bias_table*", "*attn.qkv.weight*",
                     "*attn.q_bias*", "*attn.v_bias*"]


class Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(6, 8)
        self.middle = nn.Linear(8, 5)
        self.head = nn.Linear(5, 3)

    def forward(self, x):
        return self.head(torch.tanh(self.middle(torch.tanh(self.body(x)))))


class WeightInParent(nn.Module):
    """fc1's weight is used through F.linear in the parent's forward: fc1's own forward never runs."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(6, 5)
        self.fc2 = nn.Linear(5, 3)

    def forward(self, x):
        return self.fc2(torch.tanh(F.linear(x, self.fc1.weight, self.fc1.bias)))


def tiny_beit() -> nn.Module:
    return timm.create_model("beit_base_patch16_224", img_size=32, patch_size=8, embed_dim=32, depth=2,
                             num_heads=2, num_classes=10)


def test_patterns_select_by_full_name_and_refuse_typos():
    model = Mlp()
    assert freeze_parameters(model, freeze=["body.*"]) == ["body.weight", "body.bias"]
    assert [n for n, p in model.named_parameters() if p.requires_grad] == [
        "middle.weight", "middle.bias", "head.weight", "head.bias"]
    model = Mlp()
    assert freeze_parameters(model, train_only=["*.bias"]) == ["body.weight", "middle.weight", "head.weight"]
    model = Mlp()  # both: train_only first, then freeze
    assert freeze_parameters(model, freeze=["head.*"], train_only=["head.*", "middle.bias"]) == [
        "body.weight", "body.bias", "middle.weight", "head.weight", "head.bias"]
    with pytest.raises(DpbenchError, match=r"--freeze pattern bdy\.\* matches no parameter of Mlp .*body.weight"):
        freeze_parameters(Mlp(), freeze=["bdy.*"])
    with pytest.raises(DpbenchError, match="leave no parameter to train"):
        freeze_parameters(Mlp(), train_only=["*.bias"], freeze=["*"])


@pytest.mark.parametrize("algorithm", OWN + ["opacus", "opacus_ghost"])
def test_engine_gives_frozen_parameters_no_gradient_no_noise_and_no_per_sample_work(algorithm, monkeypatch):
    torch.manual_seed(0)
    model = Mlp().double()
    freeze_parameters(model, freeze=["body.*", "middle.weight"])
    x, y = torch.randn(7, 6, dtype=torch.float64), torch.randint(0, 3, (7,))
    # the norms and clipped sums of the trainable parameters are the brute-force ones
    check_algorithm(model, x, y, algorithm, rtol=1e-6 if algorithm.startswith("opacus") else 1e-9)

    worked_on = []
    for method in ("instantiate", "ghost_norm_sq", "clipped_sum"):
        real = getattr(LinearRule, method)
        monkeypatch.setattr(LinearRule, method, lambda self, *a, real=real: worked_on.append(self.name) or real(self, *a))
    engine = PrivacyEngine(model, algorithm, max_grad_norm=1.0, noise_multiplier=1.0)
    assert engine.frozen_parameters == ["body.weight", "body.bias", "middle.weight"]
    engine.backward(per_sample_loss(model(x), y))
    engine.add_noise()
    assert model.body.weight.grad is None and model.body.bias.grad is None and model.middle.weight.grad is None
    assert model.middle.bias.grad is not None and model.head.weight.grad is not None
    if algorithm in OWN:
        assert "body" not in worked_on and {"middle", "head"} <= set(worked_on)
        rows = {r["name"]: r for r in engine.layer_report}
        assert set(rows) == {"middle", "head"}  # the all-frozen layer has no rule and no row
        assert rows["middle"]["params"] == ["middle.bias"] and rows["middle"]["frozen"] == ["middle.weight"]
        assert rows["head"]["frozen"] == []
    engine.detach()


def test_frozen_input_layers_are_not_differentiated_through():
    """With the first layers frozen, the first backward stops at the first trainable layer's output."""
    model = Mlp()
    freeze_parameters(model, train_only=["head.*"])
    engine = PrivacyEngine(model, "mixed_ghost", max_grad_norm=1.0)
    seen = []
    model.middle.register_full_backward_hook(lambda *args: seen.append("middle"))
    engine.backward(per_sample_loss(model(torch.randn(4, 6)), torch.randint(0, 3, (4,))))
    assert seen == [] and model.middle.bias.grad is None and model.head.bias.grad is not None
    engine.detach()


@pytest.mark.parametrize("algorithm", ["opacus", "opacus_ghost"])
def test_opacus_refuses_a_weight_used_through_f_linear_in_the_parent(algorithm):
    model = WeightInParent()
    engine = PrivacyEngine(model, algorithm, max_grad_norm=1.0)
    with pytest.raises(DpbenchError, match=r"no per-sample gradient for trainable parameter 'fc1.weight'.*"
                                           r"freeze it.*own algorithms") as err:
        engine.backward(per_sample_loss(model(torch.randn(3, 6)), torch.randint(0, 3, (3,))))
    assert "\n" not in str(err.value)
    engine.detach()
    for own in OWN:  # dpbench's own algorithms handle it exactly
        check_algorithm(WeightInParent().double(), torch.randn(3, 6, dtype=torch.float64), torch.randint(0, 3, (3,)), own)


@pytest.mark.parametrize("algorithm", ["opacus", "opacus_ghost"])
def test_opacus_on_timm_beit_refuses_or_runs_with_the_papers_freeze_list(algorithm):
    torch.manual_seed(0)
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 10, (2,))
    # Opacus hooks a module with trainable parameters of its own through torch.func, which refuses buffers
    # (the attention's relative_position_index) anywhere inside it: the root holds cls_token
    with pytest.raises(DpbenchError, match=r"module 'Beit' \(Beit: a trainable layer with buffers inside\) "
                                           r"for cls_token: freeze them"):
        PrivacyEngine(tiny_beit(), algorithm, max_grad_norm=1.0)
    # everything of the paper's list frozen but qkv.weight, which timm uses through F.linear -> refused
    model = tiny_beit()
    freeze_parameters(model, freeze=[p for p in PAPER_BEIT_FREEZE if "qkv" not in p])
    engine = PrivacyEngine(model, algorithm, max_grad_norm=1.0)
    with pytest.raises(DpbenchError, match="'blocks.0.attn.qkv.weight'"):
        engine.backward(per_sample_loss(model(x), y))
    engine.detach()
    # the reference code's list (which is why it froze them): Opacus agrees with the oracle
    model = tiny_beit().double()
    freeze_parameters(model, freeze=PAPER_BEIT_FREEZE)
    check_algorithm(model, x.double(), y, algorithm, rtol=1e-6)


def test_weights_file_round_trip_and_mismatch_names_keys(tmp_path):
    source = Mlp()
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, tmp_path / "w.safetensors")
    torch.save(source.state_dict(), tmp_path / "w.pt")
    for name in ("w.safetensors", "w.pt"):
        target = Mlp()
        load_weights_file(target, tmp_path / name)
        assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), target.state_dict().values()))
    other = copy.deepcopy(source)
    other.head = nn.Linear(5, 4)
    other.extra = nn.Linear(1, 1)
    torch.save(other.state_dict(), tmp_path / "other.pt")
    with pytest.raises(DpbenchError, match=r"does not fit Mlp: unexpected: extra.weight, extra.bias; "
                                           r"shape: head.weight \(4, 5\) vs model \(3, 5\)") as err:
        load_weights_file(Mlp(), tmp_path / "other.pt")
    assert "\n" not in str(err.value)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(DpbenchError, match="junk.pt: cannot read it"):
        load_weights_file(Mlp(), tmp_path / "junk.pt")
    with pytest.raises(DpbenchError, match="no such file"):
        load_weights_file(Mlp(), tmp_path / "absent.pt")
