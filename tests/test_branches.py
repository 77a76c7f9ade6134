"""`dpbench branches`: both norm branches timed per layer, next to the space rule's choice."""

from __future__ import annotations

import json

import pytest
import torch

from dpbench.cli import main
from dpbench.clipping.decision import mixed_choice
from dpbench.measure.branches import branch_times
from dpbench.models import create_model


def test_every_ghost_capable_layer_is_timed_and_compared_with_the_space_rule():
    torch.manual_seed(0)
    model = create_model("cnn", image_size=16)
    rows = branch_times(model, torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,)), repeats=1)
    layers = [n for n, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert sorted(r["name"] for r in rows) == sorted(layers)
    for r in rows:
        assert r["space_rule"] == mixed_choice(r["T"], r["d"], r["p"], r["groups"])
        assert r["ghost_s"] > 0 and r["instantiate_s"] > 0
        assert r["faster"] == ("ghost" if r["ghost_s"] <= r["instantiate_s"] else "instantiate")
        assert r["rules_agree"] == (r["faster"] == r["space_rule"])
    assert not any(p.grad is not None for p in model.parameters())  # the probe leaves no gradients behind
    assert not model._forward_hooks  # nor hooks


def test_the_command_writes_json_and_refuses_bad_input(tmp_path, capsys):
    out, md = tmp_path / "branches.json", tmp_path / "branches.md"
    assert main(["branches", "--model", "cnn", "--batch-size", "2", "--image-size", "8", "--repeats", "1",
                 "--threads", "1", "--out", str(out), "--out-md", str(md)]) == 0
    result = json.loads(out.read_text())
    assert result["kind"] == "branches" and result["layers_with_ghost"] == len(result["layers"]) == 8
    table = md.read_text()
    assert f"picks the faster branch in {result['rules_agree']} of 8 layers" in table
    assert table.count("\n| ") == 1 + 8  # header and one row per layer
    first = result["layers"][0]
    assert f"| {first['name']} | {first['T']} | {first['d']} | {first['p']} | {first['space_rule']} |" in table
    assert 0 <= result["rules_agree"] <= 8 and result["environment"]["torch"]
    assert main(["branches", "--model", "no_such_model", "--batch-size", "2", "--out", str(out)]) == 2
    assert "unknown model" in capsys.readouterr().err


def test_the_branch_timer_hook_is_refused_where_no_rule_holds_the_inputs():
    from dpbench.clipping import PrivacyEngine
    from dpbench.errors import DpbenchError

    model = create_model("cnn", image_size=8)
    for algorithm in ("nonprivate", "opacus"):
        engine = PrivacyEngine(model, algorithm=algorithm)
        try:
            with pytest.raises(DpbenchError, match=f"not '{algorithm}'"):
                engine.set_branch_timer(lambda rule, calls: {})
        finally:
            engine.detach()
