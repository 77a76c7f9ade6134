"""dpbench profile: the result's schema, the four regions, the operator ranking, one-line errors, and
the profiled step doing exactly what the harness's train_step does (tiny CNN, a few seconds)."""

from __future__ import annotations

import json

import pytest
import torch

from dpbench.cli import main
from dpbench.measure.child import build, train_step
from dpbench.measure.config import BenchConfig
from dpbench.measure.profile import REGIONS, profiled_step

TINY = ["--model", "cnn", "--image-size", "8", "--batch-size", "4", "--threads", "1", "--warmup", "1"]
OP_FIELDS = {"name", "self_cpu_ms", "cpu_total_ms", "calls", "self_cpu_share"}


@pytest.fixture(scope="module")
def profiled(tmp_path_factory):
    out = tmp_path_factory.mktemp("profile") / "mixed_ghost.json"
    assert main(["profile", *TINY, "--algorithm", "mixed_ghost", "--rows", "6", "--out", str(out)]) == 0
    return json.loads(out.read_text())


def test_result_schema(profiled):
    assert profiled["kind"] == "profile"
    assert profiled["config"]["algorithm"] == "mixed_ghost" and profiled["config"]["batch_size"] == 4
    assert profiled["config"]["image_size"] == 8 and profiled["config"]["steps"] == 1
    assert profiled["environment"]["device"] == "cpu" and profiled["environment"]["threads"] == 1
    assert profiled["step_wall_ms"] > 0 and profiled["self_cpu_total_ms"] > 0
    assert len(profiled["top_ops"]) == 6 and all(set(op) == OP_FIELDS for op in profiled["top_ops"])
    assert "top_cuda_ops" not in profiled


def test_every_region_is_timed_and_fits_in_the_step(profiled):
    regions = profiled["regions"]
    assert list(regions) == list(REGIONS)
    assert all(ms > 0 for ms in regions.values())
    assert sum(regions.values()) <= profiled["step_wall_ms"] * 1.01


def test_top_operators_by_self_time(profiled):
    ops = profiled["top_ops"]
    times = [op["self_cpu_ms"] for op in ops]
    assert times == sorted(times, reverse=True)
    assert any("conv" in op["name"].lower() for op in ops)
    assert not any(op["name"] in REGIONS for op in ops)  # the regions are not operators
    assert all(0 < op["self_cpu_share"] <= 1 and op["calls"] >= 1 for op in ops)
    assert sum(op["self_cpu_ms"] for op in ops) <= profiled["self_cpu_total_ms"] * 1.0001


@pytest.mark.parametrize("algorithm", ["nonprivate", "mixed_ghost", "bk_mixed"])
def test_profiled_step_matches_train_step(algorithm):
    """Same initial model, data and noise generator: one profiled step and one harness step give the
    same parameters, so the regions cut the step without changing it."""
    config = BenchConfig(algorithm=algorithm, model="cnn", batch_size=4, image_size=8, threads=1)
    device = torch.device("cpu")
    updated = []
    for step in (train_step, profiled_step):
        model, engine, optimizer, x, y, _ = build(config, device)
        step(model, engine, optimizer, x, y)
        engine.detach()
        updated.append([p.detach().clone() for p in model.parameters()])
    for harness, profiled_param in zip(*updated):
        torch.testing.assert_close(profiled_param, harness, rtol=0, atol=0)


@pytest.mark.parametrize("args, message", [
    (["--algorithm", "mixed_gost"], "unknown algorithm 'mixed_gost'"),
    (["--algorithm", "nonprivate", "--model", "cnx"], "unknown model 'cnx'"),
    (["--algorithm", "nonprivate", "--rows", "0"], "--rows: must be >= 1"),
    (["--algorithm", "nonprivate", "--batch-size", "x"], "--batch-size: not an integer"),
    (["--algorithm", "nonprivate", "--device", "tpu"], "'tpu'"),
])
def test_bad_arguments_give_one_line_and_exit_2(args, message, tmp_path, capsys):
    out = tmp_path / "p.json"
    try:
        code = main(["profile", *TINY, *args, "--out", str(out)])
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1, err
    assert not out.exists()
