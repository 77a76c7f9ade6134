"""The vision transformers' performance report (`dpbench perf-report --layout vit`, config/vit_cpu.yaml) on
a tiny ratios CSV, and the parts of scripts/perf_before_after.py that build it: ratios of both engines when
the baseline was measured in a part of its own, failures recorded, the CNN table's columns unchanged."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from dpbench.cli import main
from dpbench.report import load

REPO = Path(__file__).resolve().parents[1]


def ratios_csv(path: Path) -> Path:
    """deit_tiny at batch 8: BK mixed 0.85 after (met), 0.52 before; mixed ghost 0.55 after (not met); Opacus
    0.5 and Opacus ghost 0.4; beit_base: Opacus fails, so only the targets count."""
    row = dict(model="deit_tiny_patch16_224", image_size=224, batch_size=8, jobs=1, paired=True, rounds=3,
               status="ok", ratio_min=None, ratio_max=None)
    ratio = lambda engine, algorithm, throughput, memory, **more: row | dict(  # noqa: E731
        engine=engine, algorithm=algorithm, throughput_ratio=throughput, memory_ratio=memory,
        ratio_min=throughput, ratio_max=throughput) | more
    beit = dict(model="beit_base_patch16_224")
    pd.DataFrame([
        ratio("after", "nonprivate", 1.0, 1.0), ratio("after", "bk_mixed", 0.85, 1.02, ratio_min=0.8, ratio_max=0.9),
        ratio("after", "mixed_ghost", 0.55, 1.2), ratio("after", "opacus", 0.5, 3.0), ratio("after", "opacus_ghost", 0.4, 2.0),
        ratio("before", "nonprivate", 1.0, 1.0), ratio("before", "bk_mixed", 0.52, 1.01),
        ratio("before", "mixed_ghost", 0.39, 1.0),
        ratio("after", "nonprivate", 1.0, 1.0, **beit), ratio("after", "bk_mixed", 0.7, 1.05, **beit),
        row | beit | dict(engine="after", algorithm="opacus", rounds=0, status="error: ValueError: This layer has buffers"),
    ]).to_csv(path, index=False)
    return path


def test_vit_report_renders_targets_before_and_after(tmp_path):
    out = tmp_path / "vit_performance.md"
    assert main(["perf-report", "--layout", "vit", "--ratios", str(ratios_csv(tmp_path / "vit_ratios.csv")),
                 "--out", str(out)]) == 0
    text = out.read_text()
    assert "`tmp" not in text and "vit_ratios.csv`" in text
    tiny = r"\| deit_tiny_patch16_224 224², batch 8, 1 run at a time +"
    assert re.search(tiny + r"\| BK mixed +\| 0.52 +\| 0.85 \(0.80–0.90\) +\| ≥ 0.8 +\| met +\| 1.01 +\| 1.02 +\| ≤ 1.1 +"
                     r"\| met +\| met \(1.70× Opacus, 2.12× Opacus ghost\)", text), text
    assert re.search(tiny + r"\| Mixed ghost +\| 0.39 +\| 0.55 +\| ≥ 0.6 +\| not met +\| 1.00 +\| 1.20 +\| ≤ 1.1 +"
                     r"\| not met +\| met", text)
    assert re.search(tiny + r"\| Opacus +\| — +\| 0.50 +\| +\| +\| — +\| 3.00 +\|", text)
    beit = r"\| beit_base_patch16_224 224², batch 8, 1 run at a time +"
    assert re.search(beit + r"\| Opacus +\| — +\| fails +\|", text)
    assert re.search(beit + r"\| BK mixed +\| — +\| 0.70 +\| ≥ 0.8 +\| not met +.*\| Opacus does not run", text)
    assert "- opacus on beit_base_patch16_224, batch 8, after: error: ValueError: This layer has buffers" in text
    assert "Not measured: no before/after table" in text and "no profile results" in text


def test_study_report_reads_only_the_after_rows_of_a_two_engine_csv(tmp_path):
    frame = load.read_after_ratios(ratios_csv(tmp_path / "r.csv"))
    assert set(frame["engine"]) == {"after"} and set(frame["status"]) == {"ok"} and len(frame) == 7


def load_script():
    spec = importlib.util.spec_from_file_location("perf_before_after", REPO / "scripts" / "perf_before_after.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def runs(engines: str, engine: str, invocation: str, times: dict, size=224, status=None) -> list[dict]:
    return [{"model": "deit_tiny_patch16_224", "batch_size": 8, "algorithm": a, "engine": engine, "round": 0,
             "invocation": invocation, "jobs": 1, "ratio_only": engines == "after", "engines": engines,
             "image_size": size, "baseline": "25102c2", "command": f"cmd {engines}",
             "status": status or ("ok" if t else "error: ValueError: This layer has buffers"),
             "step_cpu_time_s": t, "step_time_s": t, "step_memory_bytes": 100.0 if t else None,
             "commit": "abc1234-dirty" if engine == "after" and t else None} for a, t in times.items()]


def test_separate_parts_give_ratios_of_both_engines_and_failures():
    script = load_script()
    raw = pd.DataFrame(runs("before", "before", "2026-01-01 10:00 UTC", {"nonprivate": 1.0, "bk_mixed": 2.0,
                                                                         "opacus": None})
                       + runs("after", "after", "2026-01-02 10:00 UTC", {"nonprivate": 1.0, "bk_mixed": 1.25}))
    ok = script.successful_runs(raw)
    ratios = script.per_engine_ratios(raw, ok).set_index(["engine", "algorithm"])
    assert list(ratios.columns) == [c for c in script.PER_ENGINE_COLUMNS if c not in ("engine", "algorithm")]
    assert ratios.loc[("before", "bk_mixed"), "throughput_ratio"] == pytest.approx(0.5)
    assert ratios.loc[("after", "bk_mixed"), "throughput_ratio"] == pytest.approx(0.8)
    assert ratios.loc[("before", "opacus"), "status"].startswith("error: ValueError")
    assert set(ratios["image_size"]) == {224}
    table = script.summarise(ok, "25102c2", "abc1234-dirty", separate=True).set_index("algorithm")
    assert table.loc["bk_mixed", "speedup"] == pytest.approx(1.6) and not table.loc["bk_mixed", "paired"]
    assert table.loc["bk_mixed", "image_size"] == 224
    assert script.commands(raw) == ["cmd before", "cmd after"]


def test_runs_of_earlier_versions_keep_the_cnn_table_columns():
    """Runs without the columns this version records (engines, image size, command): the ratios have
    exactly the columns perf-report reads, the before/after table no `paired`, the commands are PARTS."""
    script = load_script()
    raw = pd.DataFrame(runs("both", "before", "x", {"nonprivate": 1.0, "bk_mixed": 2.0})
                       + runs("both", "after", "x", {"nonprivate": 1.0, "bk_mixed": 1.0}))
    raw = raw.drop(columns=["engines", "image_size", "command", "baseline"])
    ok = script.successful_runs(raw)
    assert list(script.paired_ratios(ok).columns) == load.RATIO_COLUMNS
    table = script.summarise(ok, "837c1d2", "abc1234")
    assert "paired" not in table and set(table["image_size"]) == {32}
    assert table.set_index("algorithm").loc["bk_mixed", "speedup"] == pytest.approx(2.0)
    assert script.commands(raw) == script.PARTS


def test_vit_config_dry_run(tmp_path):
    """config/vit_cpu.yaml validates and plans the BEiT profiles, the four models' cost tables and the report."""
    run = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(tmp_path),
                          "-n", "-p", "--configfile", str(REPO / "config" / "vit_cpu.yaml")],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-3000:]
    stats = output.split("Job stats:", 1)[1].split("total", 1)[0]
    jobs = dict(line.split() for line in stats.strip().splitlines()[2:])
    assert jobs == {"complexity": "4", "profile": "2", "perf_report": "1", "all": "1"}
    assert "perf-report --layout vit" in output and "--out paper/vit_performance.md" in output
    assert "--cost-model results/complexity/beit_base_patch16_224_s224.csv" in output


def test_vit_report_shows_the_cost_model_bound_beside_the_measured_ratio(tmp_path):
    """The bound is Σ time_nonprivate ÷ Σ time_<algorithm> over the complexity table's layers."""
    table = tmp_path / "deit_tiny_patch16_224_s224.csv"
    pd.DataFrame({"model": ["deit_tiny_patch16_224"] * 2, "image_size": [224, 224], "layer": ["a", "b"],
                  "time_nonprivate": [3.0, 1.0], "time_bk_mixed": [4.0, 1.0], "time_mixed_ghost": [6.0, 2.0],
                  "time_opacus": [4.0, 1.0], "time_opacus_ghost": [7.0, 3.0]}).to_csv(table, index=False)
    out = tmp_path / "vit_performance.md"
    assert main(["perf-report", "--layout", "vit", "--ratios", str(ratios_csv(tmp_path / "vit_ratios.csv")),
                 "--cost-model", str(table), "--out", str(out)]) == 0
    text = out.read_text()
    tiny = r"\| deit_tiny_patch16_224 224², batch 8, 1 run at a time +"
    assert re.search(tiny + r"\| BK mixed +\| 0.52 +\| 0.85 \(0.80–0.90\) +\| 0.80 +\| ≥ 0.8 +\| met", text), text
    assert re.search(tiny + r"\| Mixed ghost +\| 0.39 +\| 0.55 +\| 0.50 +\|", text)
    beit = r"\| beit_base_patch16_224 224², batch 8, 1 run at a time +"
    assert re.search(beit + r"\| BK mixed +\| — +\| 0.70 +\| — +\|", text)  # no table for that model
    assert "Cost model ÷ NP: the analytic bound" in text
    assert main(["perf-report", "--cost-model", str(table), "--profile", "x.json", "--out", str(out)]) == 2
