"""Run one measurement in a fresh Python process and guard its memory from the outside.

The child (dpbench.measure.child) reports its baseline RSS through a status file; while it runs, the
parent polls its RSS and kills it (SIGKILL, by pid) when RSS − baseline exceeds the CPU memory budget,
or when the machine's available memory falls below a safety floor, so that a probe far above the budget
is counted as not fitting instead of swapping or waking the kernel's OOM killer. Once the child marks its
status "measured" (every figure read; only its verification is left, child.py) the budget no longer
applies, and a child stopped after that keeps its measured result (its verification is then skipped).
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from dpbench.errors import DpbenchError
from dpbench.measure.child import CPU_METHOD
from dpbench.measure.config import BenchConfig

POLL_SECONDS = 0.05
PR_SET_PDEATHSIG = 1  # linux/prctl.h


class MeasurementFailed(Exception):
    """The measuring process failed for a reason other than memory; carries its stderr."""

    def __init__(self, message: str, log: str):
        super().__init__(message)
        self.log = log


def system_memory_floor() -> int:
    """Available memory below which a measuring process is killed: 3% of RAM, at least 512 MiB."""
    return max(512 * 1024**2, psutil.virtual_memory().total * 3 // 100)


def run_in_fresh_process(config: BenchConfig, cpu_memory_budget: int | None = None,
                         cuda_memory_budget: int | None = None, record_environment: bool = True,
                         verify: bool = False, verify_only: bool = False) -> dict:
    """Measure `config` in a new process; returns the child's result fields, with `verified` when `verify`
    (checked after the measurement, child.verify_after_measuring). With `verify_only` the process only
    verifies the algorithm (child.verify) and returns {"verified": record}.

    A process killed for memory returns {"oom": True, "killed": reason, ...} with the largest
    RSS − baseline seen as its peak. A DpbenchError in the child is raised again here; any other
    failure raises MeasurementFailed with the child's stderr.
    """
    with tempfile.TemporaryDirectory(prefix="dpbench-measure-") as tmp:
        tmp = Path(tmp)
        result_path, status_path, log_path = tmp / "result.json", tmp / "status.json", tmp / "stderr.log"
        command = [sys.executable, "-m", "dpbench.measure", "--config", json.dumps(config.as_dict()),
                   "--result", str(result_path), "--status", str(status_path)]
        if cuda_memory_budget:
            command += ["--memory-budget-bytes", str(cuda_memory_budget)]
        if not record_environment:
            command.append("--no-environment")
        if verify:
            command.append("--verify")
        if verify_only:
            command.append("--verify-only")
        with open(log_path, "w") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent)
            try:
                killed, peak_seen, baseline = _guard(process, status_path, cpu_memory_budget)
            finally:
                if process.poll() is None:  # interrupted: never leave a measuring process behind
                    process.kill()
                    process.wait()
        log_text = log_path.read_text(errors="replace")
        if killed is None and process.returncode == -signal.SIGKILL:
            killed = "killed by SIGKILL (the kernel's out-of-memory killer?)"
        if killed is not None:
            if _status(status_path).get("measured") and result_path.exists():
                # stopped during its verification: the measurement itself is complete
                from dpbench.verify import skipped

                return {**json.loads(result_path.read_text()),
                        "verified": skipped(f"the measuring process was stopped during its verification: {killed}")}
            return {"oom": True, "error": f"measuring process killed: {killed}", "killed": killed,
                    "step_time_s": None, "throughput_img_s": None, "step_cpu_time_s": None, "peak_memory_bytes": peak_seen,
                    "memory_method": CPU_METHOD, "baseline_memory_bytes": baseline}
        if process.returncode == 2 and result_path.exists():
            raise DpbenchError(json.loads(result_path.read_text())["user_error"])
        if process.returncode != 0 or not result_path.exists():
            last = next((line for line in reversed(log_text.strip().splitlines()) if line.strip()), "")
            raise MeasurementFailed(f"measuring process exited with {process.returncode}: {last}", log_text)
        return json.loads(result_path.read_text())


def run_ranks(config: BenchConfig, nproc: int, verify: bool = False) -> dict:
    """Measure `config` on `nproc` ranks launched by torchrun on this machine (each with its own batch of
    config.batch_size); returns rank 0's result fields with every rank's peak memory and the largest as
    `peak_memory_bytes`. No memory guard: for throughput, not for maxbatch probes. With `verify`, rank 0
    verifies after its measurement (child.py) and its result has `verified`."""
    from dpbench.distributed import free_port

    with tempfile.TemporaryDirectory(prefix="dpbench-measure-") as tmp:
        result_path = Path(tmp) / "result.json"
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
                   "--master-addr", "127.0.0.1", "--master-port", str(free_port()), "-m", "dpbench.measure",
                   "--config", json.dumps(config.as_dict()), "--result", str(result_path), *(["--verify"] if verify else [])]
        env = {**os.environ, "OMP_NUM_THREADS": str(config.threads or 1)}
        done = subprocess.run(command, env=env, capture_output=True, text=True, preexec_fn=die_with_parent)
        ranks = [Path(f"{result_path}.rank{r}") for r in range(nproc)]
        results = [json.loads(r.read_text()) for r in ranks if r.exists()]
        errors = [r["user_error"] for r in results if "user_error" in r]
        if errors:
            raise DpbenchError(errors[0])
        if done.returncode != 0 or len(results) != nproc:
            log = done.stdout + done.stderr
            last = next((line for line in reversed(log.strip().splitlines()) if line.strip()), "")
            raise MeasurementFailed(f"torchrun with {nproc} ranks exited with {done.returncode}: {last}", log)
    combined = results[0]
    peaks = [r.get("peak_memory_bytes") for r in results]
    combined["peak_memory_bytes_by_rank"] = peaks
    combined["oom"] = any(r["oom"] for r in results)
    if all(p is not None for p in peaks):
        combined["peak_memory_bytes"] = max(peaks)
    return combined


def die_with_parent() -> None:
    """In the child before exec (Linux): get SIGKILL when the parent dies, e.g. when a job is cancelled."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):
            pass  # without prctl the try/finally around the guard still cleans up on exceptions


def _status(status_path: Path) -> dict:
    """The child's status file ({} while it is absent or being written)."""
    try:
        return json.loads(status_path.read_text())
    except (OSError, ValueError):
        return {}


def _guard(process: subprocess.Popen, status_path: Path, budget: int | None):
    """Wait for the process; kill it if it goes over budget before its status says "measured", or if the
    machine runs out of memory."""
    floor = system_memory_floor()
    watched = psutil.Process(process.pid)
    baseline, peak_seen, killed, measured = None, None, None, False
    while process.poll() is None:
        time.sleep(POLL_SECONDS)
        if baseline is None or not measured:
            status = _status(status_path)
            baseline = status.get("baseline_rss_bytes", baseline)
            measured = bool(status.get("measured"))
        try:
            rss = watched.memory_info().rss
        except psutil.Error:
            continue
        if baseline is not None and not measured:
            over = budget is not None and rss - baseline > budget
            if over and _status(status_path).get("measured"):
                # marked between the two readings: the memory is the verification's, not the measurement's
                measured = True
            else:
                peak_seen = max(peak_seen or 0, rss - baseline)
                if over:
                    killed = "over_budget"
        if killed is None and psutil.virtual_memory().available < floor:
            killed = f"system memory nearly exhausted (< {floor // 1024**2} MiB available)"
        if killed is not None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
    return killed, peak_seen, baseline
