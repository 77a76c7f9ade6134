"""Result files (one JSON per job, one CSV per complexity table) as tidy pandas data frames."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from dpbench.accounting import ACCOUNTANTS
from dpbench.errors import DpbenchError


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


def device_label(environment: dict) -> str:
    """The device a result was measured on, for tables and the report: 'NVIDIA H100 (cuda)', 'x86_64 CPU, 2 threads'."""
    device = str(environment.get("device", "?"))
    name = environment.get("device_name") or "?"
    if device.startswith("cuda"):
        return f"{name} ({device})"
    threads = environment.get("threads", "?")
    return f"{name} CPU, {threads} thread{'' if threads == 1 else 's'}"


def _stat(block: dict | None, key: str) -> float | None:
    return None if block is None else block.get(key)


def bench_frame(paths) -> pd.DataFrame:
    """One row per bench result: configuration, step time, throughput, peak memory, device."""
    rows = []
    for path in paths:
        r = read_result(path, "bench")
        c = r["config"]
        rows.append({
            "model": c["model"], "image_size": c["image_size"], "batch_size": c["batch_size"],
            "algorithm": c["algorithm"], "num_classes": c.get("num_classes"), "dtype": c.get("dtype"),
            "oom": bool(r["oom"]), "error": r.get("error"),
            "throughput_img_s": _stat(r.get("throughput_img_s"), "median"),
            "throughput_q25": _stat(r.get("throughput_img_s"), "q25"),
            "throughput_q75": _stat(r.get("throughput_img_s"), "q75"),
            "step_time_s": _stat(r.get("step_time_s"), "median"),
            "peak_memory_bytes": r.get("peak_memory_bytes"),
            "memory_method": r.get("memory_method"),
            "steps": c.get("steps"), "warmup": c.get("warmup"),
            "device": device_label(r["environment"]),
            "git_commit": r["environment"].get("git_commit"),
        })
    return pd.DataFrame(rows, columns=BENCH_COLUMNS)


BENCH_COLUMNS = ["model", "image_size", "batch_size", "algorithm", "num_classes", "dtype", "oom", "error",
                 "throughput_img_s", "throughput_q25", "throughput_q75", "step_time_s", "peak_memory_bytes",
                 "memory_method", "steps", "warmup", "device", "git_commit"]


def maxbatch_frame(paths) -> pd.DataFrame:
    """One row per maxbatch result: the largest batch size and the peak memory of that probe."""
    rows = []
    for path in paths:
        r = read_result(path, "maxbatch")
        c = r["config"]
        fits = [p for p in r["probes"] if p["ok"] and p["batch_size"] == r["max_batch_size"]]
        rows.append({
            "model": c["model"], "image_size": c["image_size"], "algorithm": c["algorithm"],
            "max_batch_size": int(r["max_batch_size"]),
            "memory_budget_bytes": c.get("memory_budget_bytes"),
            "peak_memory_bytes_at_max": fits[0]["peak_memory_bytes"] if fits else None,
            "probes": len(r["probes"]), "tolerance": c.get("tolerance"), "limit": c.get("limit"),
            "device": device_label(r["environment"]),
        })
    return pd.DataFrame(rows, columns=MAXBATCH_COLUMNS)


MAXBATCH_COLUMNS = ["model", "image_size", "algorithm", "max_batch_size", "memory_budget_bytes",
                    "peak_memory_bytes_at_max", "probes", "tolerance", "limit", "device"]


def train_frame(paths) -> pd.DataFrame:
    """One row per training result: model, data, algorithm, target and spent epsilon, test accuracy."""
    rows = []
    for path in paths:
        r = read_result(path, "train")
        c = r["config"]
        rows.append({
            "model": r.get("model", c.get("model")), "dataset": r.get("dataset", c.get("dataset")),
            "algorithm": r.get("algorithm", c.get("algorithm")),
            "target_epsilon": r.get("target_epsilon", c.get("epsilon")), "epsilon": r.get("epsilon"),
            "delta": r.get("delta"), "noise_multiplier": r.get("noise_multiplier"), "accountant": r.get("accountant"),
            "epochs": r.get("epochs"), "steps": r.get("steps"), "expected_batch_size": r.get("expected_batch_size"),
            "test_accuracy": r.get("test_accuracy"), "wall_time_s": r.get("wall_time_s"),
            "device": device_label(r["environment"]),
            **{f"epsilon_{name}": (r.get("epsilon_by_accountant") or {}).get(name) for name in ACCOUNTANTS},
            "sampling": r.get("sampling", c.get("sampling")), "frozen_tensors": len(r.get("frozen") or []),
            "trainable_parameters": r.get("trainable_parameters"), "validation_accuracy": r.get("validation_accuracy"),
            "mean_epoch_time_s": r.get("mean_epoch_time_s"),
        })
    return pd.DataFrame(rows, columns=TRAIN_COLUMNS)


TRAIN_COLUMNS = ["model", "dataset", "algorithm", "target_epsilon", "epsilon", "delta", "noise_multiplier",
                 "accountant", "epochs", "steps", "expected_batch_size", "test_accuracy", "wall_time_s", "device",
                 *(f"epsilon_{name}" for name in ACCOUNTANTS), "sampling", "frozen_tensors", "trainable_parameters",
                 "validation_accuracy", "mean_epoch_time_s"]
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
