"""Throughput, peak memory and maximal batch size of one training configuration.

`bench_result(config)` measures one configuration in a fresh process (see child.py for what is timed
and how memory is read) and returns the `kind: bench` result; `maxbatch_result(...)` searches the
largest batch size that fits a memory budget, one fresh process per probe (search.py). Each result
records `verified` (dpbench.verify): the algorithm's per-sample norms and clipped sum checked against
brute force once: by the measuring process after every figure is read (bench), or by a process of its
own at the maximum batch size found (maxbatch; the probes do not verify), so that neither the timed
steps nor the memory figures include it.
"""

from __future__ import annotations

import time
from dataclasses import replace

import torch

from dpbench.errors import DpbenchError
from dpbench.measure.child import CPU_METHOD, CUDA_METHOD
from dpbench.measure.config import BenchConfig
from dpbench.measure.runner import MeasurementFailed, run_in_fresh_process, run_ranks
from dpbench.measure.search import ProbeResult, SearchResult, search_max_batch
from dpbench.results import environment

__all__ = ["BenchConfig", "MeasurementFailed", "ProbeResult", "SearchResult", "bench_result",
           "maxbatch_result", "probe", "search_max_batch", "verification"]


def verification(config: BenchConfig, enabled: bool = True) -> dict:
    """The `verified` record of `config` (dpbench.verify) from a process of its own that only verifies
    (child.verify: the first samples of rank 0's batch); `process_seconds` is that process's whole wall time
    (start, imports and model included), `seconds` the verification's own. Never raises for the
    verification itself: a process that fails is a skipped record with its last line (a DpbenchError
    building the model is raised, as the measurement would raise it)."""
    from dpbench.verify import disabled, skipped

    if not enabled:
        return disabled()
    from dpbench.clipping import ALGORITHMS

    if ALGORITHMS[config.algorithm].backend == "plain":
        return skipped(f"{config.algorithm}: no per-sample clipping to verify")
    started = time.perf_counter()
    try:
        found = run_in_fresh_process(config, record_environment=False, verify_only=True)
        verified = found.get("verified") or skipped(f"the verifying process was stopped: {found.get('error')}")
    except MeasurementFailed as failure:
        verified = skipped(f"the verifying process failed: {failure}")
    verified["process_seconds"] = time.perf_counter() - started
    return verified


def _bench_verification(config: BenchConfig, measured: dict, enabled: bool) -> dict:
    """The `verified` record the measuring process added after its measurement (child.verify_after_measuring),
    or why there is none."""
    from dpbench.clipping import ALGORITHMS
    from dpbench.verify import disabled, skipped

    found = measured.pop("verified", None)
    if not enabled:
        return disabled()
    if ALGORITHMS[config.algorithm].backend == "plain":
        return skipped(f"{config.algorithm}: no per-sample clipping to verify")
    if found is not None:
        return found
    return skipped(f"the measuring process ended before its verification ({measured.get('error') or 'no record'})")


def bench_result(config: BenchConfig, memory_budget_bytes: int | None = None, nproc: int = 1,
                 verify: bool = True) -> dict:
    """The `kind: bench` result of one configuration, measured in a fresh process, or on `nproc` ranks
    (torchrun; each rank its own batch of config.batch_size, the gradients all-reduced every step).
    With a memory budget the step must fit it (CUDA: the caching allocator is capped at it; CPU: the
    process is stopped when its memory grows past it): a configuration over the budget is an
    out-of-memory result, as on a GPU with only that much memory. `verified` is checked by the measuring
    process (rank 0) once its figures are read (child.py; `verify=False`: recorded as disabled; nonprivate:
    skipped, nothing is clipped)."""
    from dpbench.clipping import ALGORITHMS

    check = verify and ALGORITHMS[config.algorithm].backend != "plain"
    if nproc > 1:
        if memory_budget_bytes is not None:
            raise DpbenchError("a memory budget applies to one process: measure it without --nproc")
        measured = run_ranks(config, nproc, verify=check)
    else:
        measured = _measure_within(config, memory_budget_bytes, record_environment=True, verify=check)
        if memory_budget_bytes is not None and _over_budget(measured, memory_budget_bytes) and not measured["oom"]:
            measured.update(oom=True, error=f"peak memory {measured['peak_memory_bytes']} B is above the memory "
                                            f"budget of {memory_budget_bytes} B", step_time_s=None, throughput_img_s=None)
    verified = _bench_verification(config, measured, verify)
    env = measured.pop("environment", None) or environment(config.device, config.dtype, config.seed)
    return {"kind": "bench", "config": {**config.as_dict(), "memory_budget_bytes": memory_budget_bytes, "nproc": nproc},
            "world_size": nproc, "global_batch_size": nproc * config.batch_size, **measured, "verified": verified,
            "environment": env}


def _measure_within(config: BenchConfig, memory_budget_bytes: int | None, record_environment: bool,
                    verify: bool = False) -> dict:
    """run_in_fresh_process with the budget applied the device's way (None: no budget)."""
    on_cpu = torch.device(config.device).type == "cpu"
    return run_in_fresh_process(config, cpu_memory_budget=memory_budget_bytes if on_cpu else None,
                                cuda_memory_budget=None if on_cpu else memory_budget_bytes,
                                record_environment=record_environment, verify=verify)


def _over_budget(measured: dict, memory_budget_bytes: int) -> bool:
    """Stopped for going over the budget, or a measured peak above it."""
    peak = measured.get("peak_memory_bytes")
    return measured.get("killed") == "over_budget" or (not measured["oom"] and peak is not None
                                                       and peak > memory_budget_bytes)


def probe(config: BenchConfig, memory_budget_bytes: int) -> ProbeResult:
    """Does `config` fit? Fails on an out-of-memory error or, on CPU, a peak above the budget."""
    measured = _measure_within(config, memory_budget_bytes, record_environment=False)
    peak = measured.get("peak_memory_bytes")
    if _over_budget(measured, memory_budget_bytes):
        return ProbeResult(config.batch_size, False, peak, "over_budget")
    if measured["oom"]:
        return ProbeResult(config.batch_size, False, peak, "oom")
    return ProbeResult(config.batch_size, True, peak, None)


def maxbatch_result(config: BenchConfig, memory_budget_bytes: int, start: int, limit: int,
                    tolerance: int, verify: bool = True) -> dict:
    """The `kind: maxbatch` result: the largest batch size of `config` within the budget, with its probes,
    and `verified` at that batch size (once per result, not per probe; skipped when nothing fitted)."""
    def fits(batch_size: int) -> ProbeResult:
        return probe(replace(config, batch_size=batch_size), memory_budget_bytes)

    found = search_max_batch(fits, start, limit, tolerance)
    if found.max_batch_size > 0 or not verify:
        verified = verification(replace(config, batch_size=max(1, found.max_batch_size)), verify)
    else:
        from dpbench.verify import skipped

        verified = skipped("no batch size fitted the memory budget")
    return {
        "kind": "maxbatch",
        "config": {"algorithm": config.algorithm, "model": config.model, "image_size": config.image_size,
                   "num_classes": config.num_classes, "device": config.device, "dtype": config.dtype,
                   "memory_budget_bytes": memory_budget_bytes, "tolerance": tolerance, "start": start,
                   "limit": limit, "seed": config.seed, "threads": config.threads,
                   "warmup": config.warmup, "steps": config.steps},
        "max_batch_size": found.max_batch_size,
        "probes": [p.as_dict() for p in found.probes],
        "verified": verified,
        "memory_method": CPU_METHOD if torch.device(config.device).type == "cpu" else CUDA_METHOD,
        # recorded here, in the searching process: the threads are those of the probes, not its own
        "environment": {**environment(config.device, config.dtype, config.seed),
                        **({"threads": config.threads} if config.threads else {})},
    }
