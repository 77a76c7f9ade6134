"""dpbench perf-report (paper/performance.md) on small synthetic result files: the ratios, met / not met,
the max-batch ratio's range, the before/after table present or missing, the profiler section."""

from __future__ import annotations

import json
import math
import re

import pandas as pd
import pytest

from dpbench.cli import main
from dpbench.report import load, ratios, targets

CPU_ENV = {"device": "cpu", "device_name": "x86_64", "threads": 1, "git_commit": "0123456789abcdef0123", "torch": "2.x"}
CUDA_ENV = {"device": "cuda:0", "device_name": "NVIDIA H200", "threads": 8, "git_commit": "fedcba9876543210", "torch": "2.x"}


def bench_json(tmp_path, algorithm, *, model="vgg11", batch=32, cpu_s=1.0, wall_s=2.0, step_mem=100e6,
               peak_mem=500e6, env=CPU_ENV, oom=False, name=None):
    result = {"kind": "bench", "oom": oom,
              "config": {"algorithm": algorithm, "model": model, "batch_size": batch, "image_size": 32,
                         "device": env["device"]},
              "step_time_s": None if oom else {"median": wall_s}, "step_cpu_time_s": None if oom else {"median": cpu_s},
              "step_memory_bytes": step_mem, "peak_memory_bytes": peak_mem, "environment": env}
    path = tmp_path / f"{name or algorithm + '_' + model + '_' + str(batch)}.json"
    path.write_text(json.dumps(result))
    return path


def maxbatch_json(tmp_path, algorithm, max_batch, tolerance=1, limit=512, model="vgg19", env=CPU_ENV):
    result = {"kind": "maxbatch", "max_batch_size": max_batch,
              "config": {"algorithm": algorithm, "model": model, "image_size": 32, "memory_budget_bytes": 768 * 2**20,
                         "tolerance": tolerance, "limit": limit, "threads": 1, "device": "cpu"},
              "probes": [{"batch_size": max_batch, "ok": True, "peak_memory_bytes": 1}], "environment": env}
    path = tmp_path / f"maxbatch_{algorithm}_{model}.json"
    path.write_text(json.dumps(result))
    return path


def profile_json(tmp_path, algorithm, step_ms):
    result = {"kind": "profile", "config": {"algorithm": algorithm, "model": "resnet18", "image_size": 32,
                                            "batch_size": 16, "device": "cpu"},
              "step_wall_ms": step_ms, "self_cpu_total_ms": step_ms,
              "regions": {"forward": 1.5, "engine.backward": step_ms - 3.0, "engine.add_noise": 0.5, "optimizer.step": 1.0},
              "top_ops": [{"name": f"aten::op{i}", "self_cpu_ms": 10.0 - i, "cpu_total_ms": 10.0, "calls": 2,
                           "self_cpu_share": 0.05} for i in range(10)],
              "environment": CPU_ENV}
    path = tmp_path / f"profile_{algorithm}.json"
    path.write_text(json.dumps(result))
    return path


@pytest.fixture
def cpu_bench(tmp_path):
    """vgg11, batch 32: non-private 1 CPU-s per step; mixed ghost 1.25 s (ratio 0.8, target 0.6 met),
    bk_mixed 1.25 s (0.8, target 0.85 not met); step memory 104 MB (1.04: met) and 120 MB (1.2: not met)."""
    return [bench_json(tmp_path, "nonprivate", cpu_s=1.0, step_mem=100e6),
            bench_json(tmp_path, "mixed_ghost", cpu_s=1.25, step_mem=104e6),
            bench_json(tmp_path, "bk_mixed", cpu_s=1.25, step_mem=120e6),
            bench_json(tmp_path, "opacus", cpu_s=5.0, step_mem=400e6)]


def test_ratios_use_cpu_time_and_step_memory(cpu_bench):
    table = ratios.nonprivate_ratios(load.bench_frame(cpu_bench)).set_index("algorithm")
    assert table.loc["nonprivate", "throughput"] == pytest.approx(32.0)
    assert table.loc["mixed_ghost", "throughput_ratio"] == pytest.approx(0.8)
    assert table.loc["opacus", "throughput_ratio"] == pytest.approx(0.2)
    assert table.loc["bk_mixed", "memory_ratio"] == pytest.approx(1.2)
    assert set(table["memory_measure"]) == {"step"}
    assert list(table.index) == ["opacus", "mixed_ghost", "bk_mixed", "nonprivate"]  # paper order


def test_targets_met_and_not_met(cpu_bench):
    rows = pd.DataFrame(targets.target_rows(ratios.nonprivate_ratios(load.bench_frame(cpu_bench))))
    verdict = dict(zip(rows["figure"], rows["verdict"]))
    assert verdict == {"Mixed ghost throughput ÷ non-private": "met",
                       "BK mixed throughput ÷ non-private": "not met",
                       "Mixed ghost step memory ÷ non-private": "met",
                       "BK mixed step memory ÷ non-private": "not met"}
    assert dict(zip(rows["figure"], rows["measured"]))["Mixed ghost step memory ÷ non-private"] == "1.04"


def test_missing_step_memory_falls_back_to_peak_and_says_so(tmp_path):
    paths = [bench_json(tmp_path, "nonprivate", step_mem=None, peak_mem=200e6),
             bench_json(tmp_path, "mixed_ghost", step_mem=None, peak_mem=300e6)]
    table = ratios.nonprivate_ratios(load.bench_frame(paths)).set_index("algorithm")
    assert table.loc["mixed_ghost", "memory_ratio"] == pytest.approx(1.5) and set(table["memory_measure"]) == {"peak"}
    figures = [r["figure"] for r in targets.target_rows(table.reset_index())]
    assert "Mixed ghost peak memory (no step memory) ÷ non-private" in figures


def test_cuda_uses_wall_time_and_oom_is_not_a_number(tmp_path):
    paths = [bench_json(tmp_path, "nonprivate", cpu_s=9.0, wall_s=0.5, env=CUDA_ENV),
             bench_json(tmp_path, "mixed_ghost", cpu_s=1.0, wall_s=1.0, env=CUDA_ENV),
             bench_json(tmp_path, "bk_mixed", oom=True, env=CUDA_ENV)]
    table = ratios.nonprivate_ratios(load.bench_frame(paths))
    rows = {r["figure"]: r for r in targets.target_rows(table)}
    assert table.set_index("algorithm").loc["mixed_ghost", "throughput_ratio"] == pytest.approx(0.5)
    assert rows["BK mixed throughput ÷ non-private"]["measured"] == "OOM"
    assert rows["BK mixed throughput ÷ non-private"]["verdict"] == "not measured"


def test_configurations_without_nonprivate_have_no_ratios(tmp_path):
    paths = [bench_json(tmp_path, "mixed_ghost", batch=64), bench_json(tmp_path, "nonprivate", batch=32)]
    table = ratios.nonprivate_ratios(load.bench_frame(paths))
    assert table["batch_size"].tolist() == [32]


@pytest.mark.parametrize("mixed, mixed_tol, opacus, opacus_tol, limit, low, high, verdict", [
    (94, 1, 2, 1, 512, 47.0, 47.0, "met"),
    (80, 16, 2, 1, 512, 40.0, 47.5, "met"),
    (30, 1, 2, 1, 512, 15.0, 15.0, "not met"),
    (40, 16, 2, 1, 512, 20.0, 27.5, "met"),
    (36, 8, 2, 2, 512, 12.0, 21.5, "undecided"),
    (512, 16, 2, 1, 512, 256.0, math.inf, "met"),
])
def test_maxbatch_ratio_range_and_verdict(tmp_path, mixed, mixed_tol, opacus, opacus_tol, limit, low, high, verdict):
    frame = load.maxbatch_frame([maxbatch_json(tmp_path, "mixed_ghost", mixed, mixed_tol, limit),
                            maxbatch_json(tmp_path, "opacus", opacus, opacus_tol, limit)])
    (found,) = ratios.maxbatch_ratios(frame, "vgg19")
    assert (found["low"], found["high"]) == (pytest.approx(low), pytest.approx(high))
    assert targets.maxbatch_verdict(found["low"], found["high"]).startswith(verdict)


def test_report_without_before_after_csv(tmp_path, cpu_bench):
    out = tmp_path / "performance.md"
    # the searching process recorded torch's default threads; the probes ran with the config's one
    mb = [maxbatch_json(tmp_path, "mixed_ghost", 80, 16), maxbatch_json(tmp_path, "opacus", 2, 1, env=CPU_ENV | {"threads": 2})]
    profiles = [profile_json(tmp_path, "nonprivate", 20.0), profile_json(tmp_path, "mixed_ghost", 30.0)]
    assert main(["perf-report", "--bench", *map(str, cpu_bench), "--maxbatch", *map(str, mb),
                 "--profile", *map(str, profiles), "--out", str(out)]) == 0
    text = out.read_text()
    assert "Not measured: `paper/perf_before_after.csv` does not exist." in text
    assert re.search(r"\| vgg11 32², batch 32 +\| BK mixed throughput ÷ non-private +\| 0.8 +\| ≥ 0.85 +\| not met", text)
    assert re.search(r"\| vgg19 32², budget 768 MiB +\| 80 +\| 2 +\| 40 – 47.5 +\| ≥ 20 +\| met", text)
    # the profiler section: regions side by side, step ratio to non-private, 8 top operators each
    assert re.search(r"\| Mixed ghost +\| +1.5 +\| +27.0 +\| +0.5 +\| +1.0 +\| +30.0 +\| +1.5 +\|", text)
    assert "`aten::op7`" in text and "`aten::op8`" not in text
    assert "0123456789ab" in text and "- Device: x86_64 CPU, 1 thread\n" in text


def test_report_with_before_after_csv(tmp_path, cpu_bench):
    csv = tmp_path / "perf_before_after.csv"
    pd.DataFrame([
        {"model": "vgg11", "image_size": 32, "batch_size": 32, "algorithm": "mixed_ghost", "before_img_per_cpu_s": 20.0,
         "after_img_per_cpu_s": 30.0, "speedup": 1.5, "before_step_memory_bytes": 2e8, "after_step_memory_bytes": 1e8,
         "before_commit": "aaa", "after_commit": "bbb"},
        {"model": "vgg11", "image_size": 32, "batch_size": 32, "algorithm": "opacus", "before_img_per_cpu_s": 10.0,
         "after_img_per_cpu_s": 9.0, "speedup": 0.9, "before_step_memory_bytes": 4e8, "after_step_memory_bytes": 4e8,
         "before_commit": "aaa", "after_commit": "bbb"},
    ]).to_csv(csv, index=False)
    out = tmp_path / "performance.md"
    assert main(["perf-report", "--bench", *map(str, cpu_bench), "--before-after", str(csv), "--out", str(out)]) == 0
    text = out.read_text()
    assert "perf_before_after.csv` does not exist" not in text and "| Mixed ghost" in text and "200.0" in text
    assert "Slower after than before: opacus (vgg11, batch 32, ×0.9)." in text
    assert "Not measured: this run has no max-batch search" in text
    assert "Not measured: no profile results in this run." in text


def test_report_with_alternating_ratios_csv(tmp_path, cpu_bench):
    """The targets over alternating runs: the median with its range, verdicts by the median, unpaired rows
    marked, step memory against 1.05; without the CSV the section says 'not measured'."""
    csv = tmp_path / "perf_ratios.csv"
    row = dict(model="resnet18", batch_size=64, jobs=1, paired=True, rounds=6)
    pd.DataFrame([
        row | dict(algorithm="nonprivate", memory_ratio=1.0, throughput_ratio=1.0, ratio_min=1.0, ratio_max=1.0),
        row | dict(algorithm="mixed_ghost", memory_ratio=1.13, throughput_ratio=0.61, ratio_min=0.47, ratio_max=0.79),
        row | dict(algorithm="bk_mixed", memory_ratio=1.02, throughput_ratio=0.84, ratio_min=0.65, ratio_max=1.09),
        row | dict(jobs=2, algorithm="nonprivate", memory_ratio=1.0, throughput_ratio=1.0, ratio_min=1.0, ratio_max=1.0),
        row | dict(jobs=2, algorithm="mixed_ghost", memory_ratio=1.0, throughput_ratio=0.5, ratio_min=None,
                   ratio_max=None, paired=False, rounds=2),
    ]).to_csv(csv, index=False)
    out = tmp_path / "performance.md"
    assert main(["perf-report", "--bench", *map(str, cpu_bench), "--ratios", str(csv), "--out", str(out)]) == 0
    text = out.read_text()
    section = text.split("## Targets over alternating runs")[1].split("\n## ")[0]
    assert re.search(r"\| resnet18 32², batch 64, 1 run at a time +\| Mixed ghost throughput ÷ non-private +\| 0.610 +"
                     r"\| 0.47–0.79 +\| 6 +\| ≥ 0.6 +\| met", section)
    assert re.search(r"BK mixed throughput ÷ non-private +\| 0.840 +\| 0.65–1.09 +\| 6 +\| ≥ 0.85 +\| not met", section)
    assert re.search(r"1 run at a time +\| Mixed ghost step memory ÷ non-private +\| 1.13 +\| +\| 6 +\| ≤ 1.05 +\| not met",
                     section)
    assert re.search(r"2 runs at a time +\| Mixed ghost throughput ÷ non-private +\| 0.500 +\| unpaired +\| 2 +\|", section)
    assert "2 runs at a time | BK mixed" not in section
    main(["perf-report", "--bench", *map(str, cpu_bench), "--out", str(out)])
    assert "Not measured: `paper/perf_ratios.csv` does not exist." in out.read_text()


@pytest.mark.parametrize("args, message", [
    ([], "no result files given"),
    (["--bench", "BENCH", "--ratios", "missing.csv"], "ratios table not found: missing.csv"),
    (["--bench", "BENCH", "--ratios", "BAD_CSV"], "lacks the columns"),
    (["--bench", "missing.json"], "result file not found: missing.json"),
    (["--profile", "BENCH"], "is not a profile result"),
    (["--bench", "BENCH", "--before-after", "missing.csv"], "before/after table not found: missing.csv"),
    (["--bench", "BENCH", "--before-after", "BAD_CSV"], "lacks the columns"),
])
def test_bad_input_gives_one_line_and_exit_2(args, message, tmp_path, capsys):
    bench = bench_json(tmp_path, "nonprivate")
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("model,speedup\nvgg11,1.0\n")
    args = [str(bench) if a == "BENCH" else str(bad_csv) if a == "BAD_CSV" else a for a in args]
    assert main(["perf-report", *args, "--out", str(tmp_path / "p.md")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "p.md").exists()
