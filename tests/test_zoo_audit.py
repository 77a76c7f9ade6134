"""The zoo audit (dpbench/audit.py, `dpbench audit`, paper/zoo_audit.md): the zoo's list and the committed
table covering it, the verdicts (exact, wrong, refused, crash) on small hand-made models, and a seeded
random sample of the real zoo in which no own algorithm may be wrong or crash.

The sample is drawn from the whole zoo by DPBENCH_ZOO_SEED (default below) with the one exclusion of
time: entries that the committed full audit skipped (too many parameters, no input size, time limit) or
that took longer than MAX_SECONDS there. Their verdicts play no part in the draw."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dpbench import audit
from dpbench.cli import main

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

REPO = Path(__file__).resolve().parent.parent
TABLE = REPO / "paper" / "zoo_audit.csv"
SEED = int(os.environ.get("DPBENCH_ZOO_SEED", "25"))
SAMPLE = int(os.environ.get("DPBENCH_ZOO_SAMPLE", "4"))
MAX_SECONDS = 25.0


@pytest.fixture(scope="module")
def entries():
    return audit.zoo_entries()


def test_zoo_lists_every_timm_family_and_every_torchvision_classifier(entries):
    import timm
    import torchvision

    families = [e.removeprefix("timm/") for e in entries if e.startswith("timm/")]
    vision = [e.removeprefix("torchvision/") for e in entries if e.startswith("torchvision/")]
    assert families == sorted(m for m in timm.list_modules() if timm.list_models(module=m))
    assert vision == sorted(torchvision.models.list_models(module=torchvision.models))
    assert len(entries) == len(set(entries)) == len(families) + len(vision)
    assert {"timm/vision_transformer", "timm/resnet", "torchvision/resnet18", "torchvision/vit_b_16"} <= set(entries)


def test_sample_is_seeded_and_drawn_from_the_list(entries):
    first = audit.sample_entries(entries, 6, seed=3)
    assert first == audit.sample_entries(entries, 6, seed=3)
    assert len(first) == 6 and set(first) <= set(entries)
    assert first == [e for e in entries if e in first]  # in the zoo's order
    assert any(audit.sample_entries(entries, 6, seed=s) != first for s in range(4, 8))
    assert audit.sample_entries(entries, None, seed=3) == entries


def test_committed_table_covers_the_zoo(entries):
    """paper/zoo_audit.csv has one row per entry of the zoo as installed (a new timm family means: rerun
    `dpbench audit`, the command in paper/zoo_audit.md), each with known statuses."""
    if not TABLE.exists():
        pytest.skip("paper/zoo_audit.csv is not committed yet: the full audit (`dpbench audit`, about an hour "
                    "on this CPU) has not been run on the current engine")
    rows = audit.read_csv(TABLE)
    assert [r["entry"] for r in rows] == entries
    own_statuses = {"exact", "refused", "wrong", "crash", "skipped"}
    for r in rows:
        assert r["status"] in ("ok", "skipped"), r["entry"]
        assert all(r[a] in own_statuses for a in audit.OWN), r["entry"]
        assert r[audit.OPACUS] in {"exact", "wrong", "error", "skipped"}, r["entry"]
        assert all("\n" not in r[f"{a}_detail"] for a in audit.OWN if r[a] == "refused"), r["entry"]


# ---- the verdicts, on small models ---------------------------------------------------------------------
def _steps(model, shape=(6,), classes=audit.NUM_CLASSES):
    torch.manual_seed(0)
    batches = [(torch.randn(audit.BATCH, *shape, dtype=torch.float64),
                torch.randint(0, classes, (audit.BATCH,))) for _ in range(2)]
    refs = [audit.Reference(audit.per_sample_grads(model, x, y)[0]) for x, y in batches]
    R = float(refs[0].norms.median())
    for ref in refs:
        ref.settle(R)
    return R, [(x, y, ref) for (x, y), ref in zip(batches, refs)]


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.LayerNorm(8), nn.Linear(8, audit.NUM_CLASSES)).double()


@pytest.mark.parametrize("algorithm", [*audit.OWN, audit.OPACUS])
def test_exact_on_a_small_model(algorithm):
    model = _mlp()
    R, steps = _steps(model)
    result = audit.run_algorithm(model, algorithm, R, steps)
    assert result["status"] == "exact" and result["error"] <= audit.RTOL, result
    if algorithm in audit.OWN:
        assert result["paths"] == {"module": 6, "op": 0, "replay": 0, "none": 0, "op_types": "", "replay_types": ""}


def test_compare_sees_a_gradient_off_by_a_millionth():
    model = _mlp()
    R, steps = _steps(model)
    x, y, ref = steps[0]
    for name, p in model.named_parameters():
        p.grad = ref.sums["own"][name].clone()
    assert audit.compare(model, ref.norms, ref, "own")[0] < 1e-14
    model[3].bias.grad[0] *= 1 + 1e-6
    err, what = audit.compare(model, ref.norms, ref, "own")
    assert err > audit.RTOL and what == "3.bias"
    assert audit.compare(model, ref.norms * (1 + 1e-7), ref, "own")[0] > audit.RTOL


def test_refusal_and_crash_are_recorded_with_where():
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Linear(8, audit.NUM_CLASSES)).double()
    R, steps = _steps(model.eval())  # brute force in eval mode; the engine refuses BatchNorm anyway
    refused = audit.run_algorithm(model.train(), "mixed_ghost", R, steps)
    assert refused["status"] == "refused" and refused["where"] == "construct"
    assert "BatchNorm1d" in refused["detail"] and "\n" not in refused["detail"]

    class BreaksAtStepTwo(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(6, audit.NUM_CLASSES).double()
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            if self.calls > 1 and x.shape[0] > 1:
                raise ValueError("second batch")
            return self.fc(x)

    model = BreaksAtStepTwo()
    R, steps = _steps(model)
    model.calls = 0
    crash = audit.run_algorithm(model, "bk_mixed", R, steps)
    assert crash["status"] == "crash" and crash["where"] == "step 2 forward"
    assert crash["detail"].startswith("ValueError: second batch")


def test_convert_norms_keeps_the_activation_of_timm_batchnormact():
    from timm.layers import BatchNormAct2d, GroupNormAct

    model = nn.Sequential(nn.Conv2d(3, 8, 3), BatchNormAct2d(8, act_layer=nn.SiLU), nn.BatchNorm2d(8))
    audit.convert_norms(model)
    assert isinstance(model[1], GroupNormAct) and isinstance(model[1].act, nn.SiLU)
    assert type(model[2]) is nn.GroupNorm
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def test_cli_refuses_an_unknown_entry_in_one_line(tmp_path, capsys):
    code = main(["audit", "--entries", "timm/no_such_family", "--out-csv", str(tmp_path / "a.csv"),
                 "--out-md", str(tmp_path / "a.md")])
    err = capsys.readouterr().err
    assert code == 2 and "not in the zoo: timm/no_such_family" in err and err.count("\n") == 1


# ---- the zoo itself ---------------------------------------------------------------------------------
def ci_pool(entries: list[str]) -> list[str]:
    """The zoo less the entries that the committed audit skipped or ran longer than MAX_SECONDS on;
    entries new since the table (not in it) are kept."""
    rows = {r["entry"]: r for r in audit.read_csv(TABLE)} if TABLE.exists() else {}
    return [e for e in entries if e not in rows
            or (rows[e]["status"] == "ok" and float(rows[e]["seconds"] or 0) <= MAX_SECONDS)]


def test_seeded_sample_of_the_zoo_has_no_wrong_and_no_crash(entries):
    """SAMPLE entries drawn by SEED, each audited in its own process as the full audit does: every own
    algorithm is exact or refused with one line, at both steps."""
    chosen = audit.sample_entries(ci_pool(entries), SAMPLE, SEED)
    rows = audit.audit(chosen, timeout=120)
    problems = [f"{r['entry']} ({r['model']}, {r['input']}) {a}: {r[a]} {r[f'{a}_where']} "
                f"{r[f'{a}_error']} {r[f'{a}_detail']}" for r in rows for a in audit.OWN if r[a] in ("wrong", "crash")]
    assert not problems, "\n".join(problems)
    assert any(r["status"] == "ok" for r in rows), [(r["entry"], r["note"]) for r in rows]
    for r in rows:
        for a in audit.OWN:
            if r[a] == "refused":
                assert r[f"{a}_detail"] and "\n" not in r[f"{a}_detail"]
