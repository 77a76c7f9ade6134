"""dpbench bench / maxbatch: the search logic with a fake probe, memory sizes, OOM classification,
and the command line on a tiny model (each measurement runs in a fresh process)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest
import torch

from dpbench.cli import main
from dpbench.measure import ProbeResult, search_max_batch
from dpbench.measure.child import is_out_of_memory
from dpbench.measure.memory import parse_memory_size

TINY = ["--model", "cnn", "--image-size", "8", "--num-classes", "3", "--threads", "1"]


# ---- the search, with a fake probe ----------------------------------------------------------

def fake_probe(threshold: int):
    """Batch sizes up to `threshold` fit; the peak memory grows with the batch size."""
    def probe(batch_size: int) -> ProbeResult:
        ok = batch_size <= threshold
        return ProbeResult(batch_size, ok, 1000 * batch_size, None if ok else "oom")
    return probe


@pytest.mark.parametrize("threshold", [0, 1, 2, 3, 7, 8, 9, 37, 100, 511, 1000, 5000])
@pytest.mark.parametrize("start,limit,tolerance", [(1, 4096, 1), (8, 1024, 1), (16, 4096, 5), (3, 100, 10)])
def test_search_finds_the_threshold_within_tolerance(threshold, start, limit, tolerance):
    found = search_max_batch(fake_probe(threshold), start, limit, tolerance)
    sizes = [p.batch_size for p in found.probes]
    truth = min(threshold, limit)
    assert found.max_batch_size <= truth
    assert truth - found.max_batch_size < tolerance  # the bracket [largest ok, smallest failure) is ≤ tolerance
    assert all(1 <= s <= limit for s in sizes) and len(sizes) == len(set(sizes))
    assert sizes[0] == start
    assert all(p.ok == (p.batch_size <= threshold) for p in found.probes)
    assert found.max_batch_size == max([p.batch_size for p in found.probes if p.ok], default=0)
    if threshold >= limit:
        assert found.max_batch_size == limit and all(p.ok for p in found.probes)


def test_search_doubles_then_bisects():
    found = search_max_batch(fake_probe(37), start=4, limit=1024, tolerance=1)
    assert [p.batch_size for p in found.probes] == [4, 8, 16, 32, 64, 48, 40, 36, 38, 37]
    assert found.max_batch_size == 37


def test_search_stops_at_the_tolerance():
    found = search_max_batch(fake_probe(37), start=4, limit=1024, tolerance=8)
    assert [p.batch_size for p in found.probes] == [4, 8, 16, 32, 64, 48, 40]
    assert found.max_batch_size == 32


def test_search_rejects_bad_bounds():
    with pytest.raises(ValueError):
        search_max_batch(fake_probe(3), start=8, limit=4)


def test_a_probe_error_propagates():
    def broken(batch_size):
        raise RuntimeError("shape mismatch")
    with pytest.raises(RuntimeError, match="shape mismatch"):
        search_max_batch(broken, 1, 8)


# ---- memory sizes and OOM errors -------------------------------------------------------------

@pytest.mark.parametrize("text,expected", [
    ("8GiB", 8 * 1024**3), ("512MiB", 512 * 1024**2), ("2GB", 2 * 10**9), ("1048576", 1048576),
    ("1.5 GiB", 3 * 1024**3 // 2), ("64kb", 64000), ("3g", 3 * 10**9)])
def test_memory_sizes(text, expected):
    assert parse_memory_size(text) == expected


@pytest.mark.parametrize("text", ["", "eight GiB", "8 GiBs", "-1GiB", "0", "1.2.3MB", "8 XB"])
def test_malformed_memory_sizes(text):
    with pytest.raises(ValueError):
        parse_memory_size(text)


@pytest.mark.parametrize("error,oom", [
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), True),
    (RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"), True),
    (RuntimeError("cuDNN error: CUDNN_STATUS_NOT_SUPPORTED. This error may appear if you passed in a non-contiguous input."), True),
    (RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"), True),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes"), True),
    (MemoryError(), True),
    (RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x3 and 5x6)"), False),
    (ValueError("out of memory"), False),
])
def test_out_of_memory_classification(error, oom):
    assert is_out_of_memory(error) is oom


# ---- the command line ----------------------------------------------------------------------

def test_bench_writes_the_agreed_schema(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--algorithm", "mixed_ghost", *TINY, "--batch-size", "4", "--steps", "3",
                 "--warmup", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["kind"] == "bench" and result["oom"] is False and result["error"] is None
    assert set(result["config"]) >= {"algorithm", "model", "batch_size", "image_size", "num_classes", "device",
                                     "dtype", "steps", "warmup", "seed"}
    assert result["config"]["batch_size"] == 4 and result["config"]["image_size"] == 8
    times = result["step_time_s"]
    assert len(times["samples"]) == 3 and times["min"] <= times["q25"] <= times["median"] <= times["q75"] <= times["max"]
    throughput = result["throughput_img_s"]
    assert throughput["median"] == pytest.approx(4 / times["median"])
    assert result["memory_method"] == "cpu_peak_rss_minus_baseline"
    assert result["peak_memory_bytes"] > 0 and result["baseline_memory_bytes"] > 0
    env = result["environment"]
    assert env["dtype"] == "float32" and env["seed"] == 0 and env["threads"] == 1 and env["torch"]
    # checked once against brute force by the measuring process, after its figures were read
    verified = result["verified"]
    assert verified["status"] == "exact" and verified["dtype"] == "float64" and verified["samples"] == 4
    assert verified["max_relative_error"] < 1e-6 and verified["seconds"] > 0
    out = capsys.readouterr().out
    assert "img/s" in out and "verified: exact" in out


def test_maxbatch_verifies_once_at_the_maximum_in_a_process_of_its_own(tmp_path):
    out = tmp_path / "maxbatch.json"
    assert main(["maxbatch", "--algorithm", "bk_mixed", *TINY, "--memory-budget", "4GiB", "--start", "2",
                 "--limit", "2", "--out", str(out)]) == 0
    verified = json.loads(out.read_text())["verified"]
    assert verified["status"] == "exact" and 0 < verified["seconds"] < verified["process_seconds"]


def _child_that_allocates(status: str) -> subprocess.Popen:
    """A stand-in measuring process: writes its status, then holds 200 MiB for a moment."""
    code = (f"import json, pathlib, time; pathlib.Path({status!r}).write_text(json.dumps("
            f"{{'baseline_rss_bytes': 0, 'measured': {'measured' in status}}})); "
            "time.sleep(0.2); block = bytearray(200 * 2**20); time.sleep(0.5)")
    return subprocess.Popen([sys.executable, "-c", code])


def test_the_memory_guard_stops_at_the_budget_until_the_measurement_is_done(tmp_path):
    """Before its status says "measured" a child over the budget is stopped; after it (its verification's
    copies) it is not."""
    from dpbench.measure.runner import _guard

    measuring = tmp_path / "status.json"
    killed, peak, _ = _guard(_child_that_allocates(str(measuring)), measuring, 10 * 2**20)
    assert killed == "over_budget" and peak > 10 * 2**20
    verifying = tmp_path / "measured_status.json"
    killed, _, _ = _guard(_child_that_allocates(str(verifying)), verifying, 10 * 2**20)
    assert killed is None


def test_bench_and_maxbatch_record_a_disabled_or_skipped_verification(tmp_path):
    out = tmp_path / "bench.json"
    assert main(["bench", "--algorithm", "ghost", *TINY, "--batch-size", "2", "--steps", "1", "--warmup", "0",
                 "--no-verify", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["verified"]["why"] == "disabled by --no-verify"
    assert main(["bench", "--algorithm", "nonprivate", *TINY, "--batch-size", "2", "--steps", "1", "--warmup", "0",
                 "--out", str(out)]) == 0
    verified = json.loads(out.read_text())["verified"]
    assert verified["status"] == "skipped" and "no per-sample clipping" in verified["why"]


def test_step_memory_counts_what_the_step_holds(tmp_path):
    """Opacus keeps every layer's per-sample gradients (B x 550k parameters of the cnn): its step grows
    by at least that much; plain training by far less. Sizes, not timings: robust on a shared machine."""
    grown = {}
    for algorithm in ("nonprivate", "opacus"):
        out = tmp_path / f"{algorithm}.json"
        assert main(["bench", "--algorithm", algorithm, "--model", "cnn", "--batch-size", "32", "--steps", "1",
                     "--warmup", "0", "--threads", "1", "--out", str(out)]) == 0
        grown[algorithm] = json.loads(out.read_text())["step_memory_bytes"]
    per_sample_grads = 32 * 550_570 * 4
    assert 0 < grown["nonprivate"] < per_sample_grads / 2
    assert grown["opacus"] > grown["nonprivate"] + 0.9 * per_sample_grads, grown


def test_maxbatch_under_a_tiny_budget_records_failed_probes(tmp_path):
    out = tmp_path / "maxbatch.json"
    assert main(["maxbatch", "--algorithm", "ghost", *TINY, "--memory-budget", "1MiB", "--start", "1",
                 "--limit", "8", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["kind"] == "maxbatch" and result["max_batch_size"] == 0
    assert result["config"]["memory_budget_bytes"] == 1024**2
    assert result["environment"]["threads"] == 1  # the probes' threads, not the searching process's
    assert [p["batch_size"] for p in result["probes"]] == [1]
    assert result["verified"]["status"] == "skipped" and "no batch size fitted" in result["verified"]["why"]
    for p in result["probes"]:
        assert p == {"batch_size": p["batch_size"], "ok": False, "peak_memory_bytes": p["peak_memory_bytes"],
                     "reason": "over_budget"}
        assert p["peak_memory_bytes"] > 1024**2


def test_maxbatch_stops_at_the_limit(tmp_path):
    out = tmp_path / "maxbatch.json"
    assert main(["maxbatch", "--algorithm", "nonprivate", *TINY, "--memory-budget", "4GiB", "--start", "2",
                 "--limit", "2", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["max_batch_size"] == 2
    assert [(p["batch_size"], p["ok"], p["reason"]) for p in result["probes"]] == [(2, True, None)]
    assert result["verified"]["status"] == "skipped"  # nonprivate: nothing to verify, no process started
    assert all(0 < p["peak_memory_bytes"] <= 4 * 1024**3 for p in result["probes"])
    assert set(result["config"]) >= {"algorithm", "model", "image_size", "num_classes", "device", "dtype",
                                     "memory_budget_bytes", "tolerance", "start", "limit"}
    assert result["environment"]["device"] == "cpu"


@pytest.mark.parametrize("command,culprit", [
    (["bench", "--algorithm", "no_such_algo", *TINY, "--batch-size", "2"], "no_such_algo"),
    (["bench", "--algorithm", "ghost", "--model", "vgg_eleven", "--batch-size", "2"], "vgg_eleven"),
    (["bench", "--algorithm", "ghost", *TINY, "--batch-size", "0"], "--batch-size"),
    (["bench", "--algorithm", "ghost", *TINY, "--batch-size", "2", "--steps", "-1"], "--steps"),
    (["bench", "--algorithm", "ghost", *TINY, "--batch-size", "2", "--warmup", "-3"], "--warmup"),
    (["bench", "--algorithm", "ghost", *TINY, "--batch-size", "2", "--device", "tpu"], "tpu"),
    (["maxbatch", "--algorithm", "ghost", *TINY, "--memory-budget", "eight gigs"], "eight gigs"),
    (["maxbatch", "--algorithm", "ghost", *TINY, "--start", "16", "--limit", "8"], "--limit"),
    (["maxbatch", "--algorithm", "no_such_algo", *TINY], "no_such_algo"),
])
def test_bad_arguments_are_one_line_and_exit_2(command, culprit, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        code = main([*command, "--out", str(tmp_path / "x.json")])
        raise SystemExit(code)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"dpbench {command[0]}: error:") and culprit in err[0]
    assert not (tmp_path / "x.json").exists()


def test_an_error_inside_the_measuring_process_is_one_line(tmp_path, capsys):
    # the registry refuses a 4x4 input for the cnn only when the model is built, i.e. in the fresh process
    code = main(["bench", "--algorithm", "ghost", "--model", "cnn", "--image-size", "4", "--batch-size", "2",
                 "--out", str(tmp_path / "x.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "8x8" in err[0] and not (tmp_path / "x.json").exists()


def test_every_subcommand_reports_a_bad_argument_in_one_line(capsys):
    """dpbench.cli gives every subcommand found in dpbench/commands the one-line argparse error."""
    from dpbench.cli import build_parser

    subcommands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert {"bench", "maxbatch", "profile", "train", "tables", "report", "perf-report"} <= set(subcommands)
    for name, parser in subcommands.items():
        with pytest.raises(SystemExit) as exit_info:
            parser.error("bad value")
        assert exit_info.value.code == 2
        assert capsys.readouterr().err == f"dpbench {name}: error: bad value\n"


def test_bench_over_its_memory_budget_is_an_oom_result(tmp_path, capsys):
    """The paper's 16 GB GPU on a larger device: a step over --memory-budget is out of memory, with
    the budget recorded (on CPU the measuring process is stopped when it grows past the budget)."""
    out = tmp_path / "bench.json"
    assert main(["bench", "--algorithm", "opacus", *TINY, "--batch-size", "4", "--steps", "1", "--warmup", "0",
                 "--memory-budget", "1MiB", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["oom"] is True and result["throughput_img_s"] is None
    assert result["config"]["memory_budget_bytes"] == 1024**2
    assert "out of memory within the budget of 1.0 MiB" in capsys.readouterr().out


GUARD_CONFIG = json.dumps({"model": "cnn", "algorithm": "ghost", "image_size": 4})
REJECTED = ["bench", "--algorithm", "ghost", "--model", "cnn", "--image-size", "4", "--batch-size", "2"]


def guard(out, *options, command=REJECTED, command_out=None):
    return main(["guard", "--kind", "bench", "--out", str(out), "--config", GUARD_CONFIG, *options, "--",
                 *command, "--out", str(command_out or out)])


def test_guard_writes_a_failure_record_on_the_last_attempt(tmp_path):
    """A crash before the last attempt exits non-zero (the workflow retries); on the last one the guard
    writes a failure record with the kind, reason and last error line, and exits 0."""
    out = tmp_path / "r.json"
    crash = ["bench", "--algorithm", "nonprivate", *TINY, "--batch-size", "2", "--steps", "1", "--warmup", "0"]
    unwritable = "/proc/dpbench/r.json"  # the command measures, then crashes writing its result (OSError)
    assert guard(out, "--attempt", "1", "--attempts", "2", command=crash, command_out=unwritable) != 0
    assert not out.exists()
    assert guard(out, "--attempt", "2", "--attempts", "2", "--log", "x.log", command=crash, command_out=unwritable) == 0
    record = json.loads(out.read_text())
    assert record["kind"] == "bench" and record["status"] == "failed" and record["config"]["model"] == "cnn"
    failure = record["failure"]
    assert failure["kind"] == "crash" and failure["exit_code"] == 1 and failure["attempt"] == 2
    assert "/proc/dpbench" in failure["last_error_line"] and failure["log"] == "x.log"
    assert record["environment"]["torch"]


def test_guard_records_a_rejected_configuration_at_once(tmp_path):
    """Exit 2 (the command rejects the configuration) cannot improve with a retry: recorded on attempt 1."""
    out = tmp_path / "r.json"
    assert guard(out, "--attempt", "1", "--attempts", "3") == 0
    failure = json.loads(out.read_text())["failure"]
    assert failure["kind"] == "error" and "8x8" in failure["last_error_line"]


def test_guard_stops_a_command_at_its_time_limit(tmp_path):
    out = tmp_path / "r.json"
    slow = ["bench", "--algorithm", "opacus", *TINY, "--batch-size", "4", "--steps", "100000"]
    assert guard(out, "--time-limit", "0.05", command=slow) == 0
    failure = json.loads(out.read_text())["failure"]
    assert failure["kind"] == "timeout" and "0.05 min" in failure["reason"]


def test_guard_passes_a_result_through(tmp_path):
    out = tmp_path / "r.json"
    ok = ["bench", "--algorithm", "nonprivate", *TINY, "--batch-size", "2", "--steps", "1", "--warmup", "0"]
    assert guard(out, "--attempt", "1", "--attempts", "1", command=ok) == 0
    assert json.loads(out.read_text())["kind"] == "bench" and "status" not in json.loads(out.read_text())


def test_bench_refuses_opacus_where_it_would_invent_a_gradient(tmp_path, capsys):
    """timm's BEiT: Opacus produces no per-sample gradient for cls_token (a trainable root with buffers):
    one line naming it, with the hint, exit 2, no result (the pipeline's guard records it as an error)."""
    out = tmp_path / "b.json"
    code = main(["bench", "--algorithm", "opacus", "--model", "beit_base_patch16_224", "--image-size", "32",
                 "--batch-size", "2", "--steps", "1", "--warmup", "0", "--threads", "1", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and not out.exists()
    assert len(err) == 1 and "cls_token" in err[0] and "freeze" in err[0] and "mixed_ghost" in err[0]
