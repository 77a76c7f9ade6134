"""Reading: result files (one JSON per job, one CSV per complexity table) and the committed CSVs of the
scripts (paper/), as tidy pandas data frames. Every report and script reads its inputs here."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from dpbench.accounting import ACCOUNTANTS
from dpbench.errors import DpbenchError
from dpbench.failures import is_failure
from dpbench.verify import text as verified_text


def read_result(path: str | Path, kind: str) -> dict:
    """One result JSON of the given kind ("bench", "maxbatch", "train"); a clear error otherwise."""
    path = Path(path)
    try:
        result = json.loads(path.read_text())
    except FileNotFoundError:
        raise DpbenchError(f"result file not found: {path}") from None
    except json.JSONDecodeError as error:
        raise DpbenchError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(result, dict) or result.get("kind") != kind:
        found = result.get("kind") if isinstance(result, dict) else type(result).__name__
        raise DpbenchError(f"{path} is not a {kind} result (kind: {found!r})")
    return result


def measured_results(paths, kind: str):
    """(path, result) of the measured results of the given kind among the files; failure records are
    left out (dpbench.report.failures lists them)."""
    for path in paths:
        result = read_result(path, kind)
        if not is_failure(result):
            yield path, result


def device_label(environment: dict, ranks: int = 1) -> str:
    """The device a result was measured on, for tables and the report: 'NVIDIA H100 (cuda)', 'x86_64 CPU,
    2 threads', and for a run of several data-parallel ranks 'NVIDIA H100 (cuda) × 4 ranks' (each rank
    one such device), so that results are compared with those of the same number of ranks."""
    device = str(environment.get("device", "?"))
    name = environment.get("device_name") or "?"
    suffix = f" × {ranks} ranks" if ranks > 1 else ""
    if device.startswith("cuda"):
        return f"{name} ({device}){suffix}"
    threads = environment.get("threads", "?")
    return f"{name} CPU, {threads} thread{'' if threads == 1 else 's'}{suffix}"


def world_size(result: dict) -> int:
    """The data-parallel ranks of a bench or train result (1 for results written before there were any)."""
    return int(result.get("world_size") or 1)


def _stat(block: dict | None, key: str) -> float | None:
    return None if block is None else block.get(key)


def bench_frame(paths) -> pd.DataFrame:
    """One row per bench result: configuration, step time, throughput, memory, device.

    Two throughputs: `throughput_img_s` is `dpbench bench`'s (wall time); `step_throughput` is batch /
    median step time by the clock that other work on the machine does not distort: CPU time on a CPU,
    wall time on CUDA (NaN when out of memory). `verified` is dpbench.verify's verdict as shown ('exact',
    'wrong (4.4e-02)', 'skipped (why)', 'not recorded'), `verify_seconds` its cost. `environment` is the
    result's record, `path` its file."""
    rows = []
    for path, r in measured_results(paths, "bench"):
        c, env = r["config"], r["environment"]
        cuda = str(env.get("device", c.get("device"))).startswith("cuda")
        timing = None if r["oom"] else (r.get("step_time_s") if cuda else r.get("step_cpu_time_s"))
        seconds = timing["median"] if timing else None
        ranks = world_size(r)
        rows.append({
            "model": c["model"], "image_size": c["image_size"], "batch_size": c["batch_size"],
            "algorithm": c["algorithm"], "num_classes": c.get("num_classes"), "dtype": c.get("dtype"),
            "oom": bool(r["oom"]), "error": r.get("error"), "memory_budget_bytes": c.get("memory_budget_bytes"),
            "throughput_img_s": _stat(r.get("throughput_img_s"), "median"),
            "throughput_q25": _stat(r.get("throughput_img_s"), "q25"),
            "throughput_q75": _stat(r.get("throughput_img_s"), "q75"),
            "step_time_s": _stat(r.get("step_time_s"), "median"),
            "step_throughput": ranks * c["batch_size"] / seconds if seconds else math.nan,
            "peak_memory_bytes": r.get("peak_memory_bytes"), "step_memory_bytes": r.get("step_memory_bytes"),
            "memory_method": r.get("memory_method"),
            "verified": verified_text(r.get("verified")), "verify_seconds": _seconds(r.get("verified")),
            "steps": c.get("steps"), "warmup": c.get("warmup"),
            "device": device_label(env, ranks), "ranks": ranks, "rank_device": device_label(env), "cuda": cuda,
            "git_commit": env.get("git_commit"), "environment": env, "path": str(path),
        })
    return pd.DataFrame(rows, columns=BENCH_COLUMNS)


BENCH_COLUMNS = ["model", "image_size", "batch_size", "algorithm", "num_classes", "dtype", "oom", "error",
                 "memory_budget_bytes",
                 "throughput_img_s", "throughput_q25", "throughput_q75", "step_time_s", "step_throughput",
                 "peak_memory_bytes", "step_memory_bytes", "memory_method", "verified", "verify_seconds", "steps", "warmup",
                 "device", "ranks", "rank_device",
                 "cuda",
                 "git_commit", "environment", "path"]


def _seconds(verified) -> float | None:
    """The seconds a verification took (None when not recorded)."""
    return verified.get("seconds") if isinstance(verified, dict) else None


def maxbatch_environment(path: str | Path) -> dict:
    """A maxbatch result's environment with the threads its probes ran with (results of older versions
    recorded the searching process's, whose torch may keep its default)."""
    result = read_result(path, "maxbatch")
    threads = result["config"].get("threads")
    return result["environment"] | ({"threads": threads} if threads else {})


def maxbatch_frame(paths) -> pd.DataFrame:
    """One row per maxbatch result: the largest batch size and the peak memory of that probe; the
    device labelled with the threads of the probes."""
    rows = []
    for path, r in measured_results(paths, "maxbatch"):
        c = r["config"]
        fits = [p for p in r["probes"] if p["ok"] and p["batch_size"] == r["max_batch_size"]]
        rows.append({
            "model": c["model"], "image_size": c["image_size"], "algorithm": c["algorithm"],
            "max_batch_size": int(r["max_batch_size"]),
            "memory_budget_bytes": c.get("memory_budget_bytes"),
            "peak_memory_bytes_at_max": fits[0]["peak_memory_bytes"] if fits else None,
            "probes": len(r["probes"]), "tolerance": c.get("tolerance"), "limit": c.get("limit"),
            "device": device_label(maxbatch_environment(path)), "verified": verified_text(r.get("verified")),
        })
    return pd.DataFrame(rows, columns=MAXBATCH_COLUMNS)


MAXBATCH_COLUMNS = ["model", "image_size", "algorithm", "max_batch_size", "memory_budget_bytes",
                    "peak_memory_bytes_at_max", "probes", "tolerance", "limit", "device", "verified"]


def train_frame(paths) -> pd.DataFrame:
    """One row per training result: model, data, algorithm, target and spent epsilon, test accuracy."""
    rows = []
    for path, r in measured_results(paths, "train"):
        c, ranks = r["config"], world_size(r)
        rows.append({
            "model": r.get("model", c.get("model")), "dataset": r.get("dataset", c.get("dataset")),
            "algorithm": r.get("algorithm", c.get("algorithm")),
            "target_epsilon": r.get("target_epsilon", c.get("epsilon")), "epsilon": r.get("epsilon"),
            "delta": r.get("delta"), "noise_multiplier": r.get("noise_multiplier"), "accountant": r.get("accountant"),
            "epochs": r.get("epochs"), "steps": r.get("steps"), "expected_batch_size": r.get("expected_batch_size"),
            "test_accuracy": r.get("test_accuracy"), "wall_time_s": r.get("wall_time_s"),
            "device": device_label(r["environment"], ranks), "ranks": ranks,
            **{f"epsilon_{name}": (r.get("epsilon_by_accountant") or {}).get(name) for name in ACCOUNTANTS},
            "sampling": r.get("sampling", c.get("sampling")), "frozen_tensors": len(r.get("frozen") or []),
            "trainable_parameters": r.get("trainable_parameters"), "validation_accuracy": r.get("validation_accuracy"),
            "mean_epoch_time_s": r.get("mean_epoch_time_s"), "verified": verified_text(r.get("verified")),
        })
    return pd.DataFrame(rows, columns=TRAIN_COLUMNS)


TRAIN_COLUMNS = ["model", "dataset", "algorithm", "target_epsilon", "epsilon", "delta", "noise_multiplier",
                 "accountant", "epochs", "steps", "expected_batch_size", "test_accuracy", "wall_time_s", "device", "ranks",
                 *(f"epsilon_{name}" for name in ACCOUNTANTS), "sampling", "frozen_tensors", "trainable_parameters",
                 "validation_accuracy", "mean_epoch_time_s", "verified"]
"""The accuracy table's columns: epsilon is by the run's own accountant, epsilon_prv/rdp/gdp by each
accountant for the same σ, q and steps (empty for non-private runs and results written before them)."""


def complexity_frame(paths) -> pd.DataFrame:
    """The per-layer complexity tables of several (model, image size) pairs, one after the other."""
    frames = []
    for path in paths:
        try:
            frames.append(pd.read_csv(path))
        except FileNotFoundError:
            raise DpbenchError(f"complexity table not found: {path}") from None
    if not frames:
        raise DpbenchError("no complexity table given")
    return pd.concat(frames, ignore_index=True)


def profile_results(paths) -> list[dict]:
    """The `kind: profile` results."""
    return [result for _, result in measured_results(paths, "profile")]


def read_table(path: str | Path | None) -> pd.DataFrame | None:
    """A result table (CSV) written by `dpbench tables` (None without a path); one clear error when it
    is missing."""
    if path is None:
        return None
    try:
        return pd.read_csv(path)
    except FileNotFoundError:
        raise DpbenchError(f"table not found: {path}") from None


def read_committed_csv(path: str | Path | None, columns: list[str], what: str) -> pd.DataFrame | None:
    """A committed CSV with at least `columns`; None without a path, one clear error otherwise."""
    if path is None:
        return None
    try:
        frame = pd.read_csv(path)
    except FileNotFoundError:
        raise DpbenchError(f"{what} not found: {path}") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise DpbenchError(f"{path} is not a readable CSV: {error}") from None
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DpbenchError(f"{path} lacks the columns {', '.join(missing)}")
    return frame


BEFORE_AFTER_COLUMNS = ["model", "image_size", "batch_size", "algorithm", "before_img_per_cpu_s",
                        "after_img_per_cpu_s", "speedup", "before_step_memory_bytes", "after_step_memory_bytes",
                        "before_commit", "after_commit"]


def read_before_after(path: str | Path | None) -> pd.DataFrame | None:
    """The committed before/after table of scripts/perf_before_after.py (None when no path is given)."""
    return read_committed_csv(path, BEFORE_AFTER_COLUMNS, "before/after table")


RATIO_COLUMNS = ["model", "batch_size", "jobs", "algorithm", "memory_ratio", "throughput_ratio", "ratio_min",
                 "ratio_max", "paired", "rounds"]


def read_ratio_table(path: str | Path | None) -> pd.DataFrame | None:
    """The committed ratios to non-private over alternating runs of scripts/perf_before_after.py (None
    when no path is given). A table without `engine` holds the working tree's ("after") only, one
    without `status` only runs that measured; both columns, and `image_size` (NaN), are filled in."""
    frame = read_committed_csv(path, RATIO_COLUMNS, "ratios table")
    if frame is None:
        return None
    defaults = {"engine": "after", "status": "ok", "image_size": math.nan}
    frame = frame.assign(**{c: v for c, v in defaults.items() if c not in frame.columns})
    return frame.assign(status=frame["status"].fillna("ok"))


def read_after_ratios(path: str | Path | None) -> pd.DataFrame | None:
    """The rows of read_ratio_table that measured the working tree's engine ("after")."""
    frame = read_ratio_table(path)
    return None if frame is None else frame[(frame["engine"] == "after") & (frame["status"] == "ok")]
