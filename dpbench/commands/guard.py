"""`dpbench guard`: run one measuring subcommand so that its failure becomes a result.

    dpbench guard --out R.json --kind bench --config '{"model": ...}' --attempt 2 --attempts 3 \\
        --time-limit 60 -- bench --model cnn ... --out R.json

The subcommand runs as a child process; its output passes through (to the job's log). It succeeds:
exit 0. It fails (crash, error, over its time limit): on an attempt before the last the guard exits
non-zero so that the workflow retries it with more time and memory; on the last attempt, or for a
deterministic user error (exit 2), it writes a failure record (dpbench.failures) to --out, atomically,
and exits 0, so that the tables and reports are built and name it. Killed from outside (SIGTERM from
scancel, a time limit or pre-emption): the child is stopped and nothing is written; the workflow
retries the job or records the result missing (workflow/rules/failures.smk). The child dies with the
guard (SIGKILL on the guard's death), so a killed guard leaves no measurement running.

With --ranks N the subcommand runs as N data-parallel ranks (dpbench.distributed.rank_command): srun
tasks when the guard runs inside a SLURM allocation, torchrun on this machine otherwise. Under torchrun a
rank's exit code 2 reaches the guard as torchrun's 1, so a configuration the ranks reject is retried like a
crash before it is recorded.
"""

from __future__ import annotations

import argparse
import collections
import json
import signal
import subprocess
import sys
import threading
from pathlib import Path

from dpbench.errors import DpbenchError
from dpbench.cli import positive_int
from dpbench.distributed import rank_command
from dpbench.measure.runner import die_with_parent

USER_ERROR_EXIT = 2  # the dpbench command line's exit code for bad input: retrying cannot help
KILL_GRACE_S = 10


def register(subparsers) -> None:
    p = subparsers.add_parser("guard", help="run a measuring subcommand; write a failure record if it fails")
    p.add_argument("--out", required=True, help="the result file the subcommand writes (the record goes there)")
    p.add_argument("--kind", required=True, choices=["bench", "maxbatch", "train", "profile"],
                   help="kind of the result the subcommand writes")
    p.add_argument("--config", required=True, help="the configuration as JSON (copied into the record)")
    p.add_argument("--attempt", type=positive_int, default=1, help="this attempt (1 = first)")
    p.add_argument("--attempts", type=positive_int, default=1, help="attempts in all; the last one writes the record")
    p.add_argument("--time-limit", type=float, default=None, metavar="MINUTES",
                   help="stop the subcommand after this many minutes (a timeout failure)")
    p.add_argument("--log", default=None, help="the log file, named in the record")
    p.add_argument("--ranks", type=positive_int, default=1,
                   help="run the subcommand as this many data-parallel ranks: srun tasks inside a SLURM job, "
                        "torchrun elsewhere (default 1: one plain process)")
    p.add_argument("--nodes", type=positive_int, default=1, help="nodes the ranks spread over (SLURM only)")
    p.add_argument("--cpus-per-rank", type=positive_int, default=1, help="CPUs of each srun task")
    p.add_argument("--gpus-per-rank", type=int, choices=[0, 1], default=0, help="GPUs of each srun task")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- then the dpbench subcommand and its options")
    p.set_defaults(func=run)


def run(args) -> int:
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise DpbenchError("no subcommand given after --")
    try:
        config = json.loads(args.config)
    except json.JSONDecodeError as error:
        raise DpbenchError(f"--config is not JSON: {error}") from None
    launch = rank_command(["-m", "dpbench", *command], args.ranks, args.nodes, args.cpus_per_rank, args.gpus_per_rank)
    exit_code, timed_out, terminated, last_line = _run_child(launch, args.time_limit)
    if terminated:
        return 128 + signal.SIGTERM
    if exit_code == 0 and not timed_out:
        if Path(args.out).exists():
            return 0
        exit_code, last_line = 1, last_line or "the command exited 0 but wrote no result"
    deterministic = exit_code == USER_ERROR_EXIT and not timed_out
    if args.attempt < args.attempts and not deterministic:
        print(f"dpbench guard: attempt {args.attempt} of {args.attempts} failed (exit {exit_code}); "
              "the workflow retries it", file=sys.stderr)
        return exit_code or 1
    kind, reason = _classify(exit_code, timed_out, args.time_limit)
    _write_record(args, config, kind, reason, last_line, exit_code)
    print(f"dpbench guard: {reason}; failure record written to {args.out}", file=sys.stderr)
    return 0


def _classify(exit_code: int | None, timed_out: bool, time_limit: float | None) -> tuple[str, str]:
    """The failure's kind and a reason a reader understands."""
    if timed_out:
        return "timeout", f"stopped after its time limit of {time_limit:g} min"
    if exit_code == USER_ERROR_EXIT:
        return "error", "the command rejected the configuration (exit 2)"
    if exit_code is not None and exit_code < 0:
        try:
            name = signal.Signals(-exit_code).name
        except ValueError:
            name = f"signal {-exit_code}"
        return "killed", f"killed by {name}" + (" (the kernel's out-of-memory killer?)" if name == "SIGKILL" else "")
    return "crash", f"exited with code {exit_code}"


def _write_record(args, config: dict, kind: str, reason: str, last_line: str, exit_code: int | None) -> None:
    from dpbench.failures import failure_record
    from dpbench.results import environment, write_json_atomic

    device = config.get("device", "cpu")
    try:
        env = environment(device, config.get("dtype"), config.get("seed"))
    except Exception as error:  # noqa: BLE001 (the device itself may be what failed)
        env = {"device": device, "device_name": None, "environment_error": str(error)}
    write_json_atomic(args.out, failure_record(args.kind, config, kind, reason, last_line, exit_code,
                                               args.attempt, args.attempts, args.log, env))


def _run_child(command: list[str], time_limit_min: float | None):
    """Run command with its output passed through; returns (exit code, timed out, terminated from
    outside, last non-empty output line)."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               errors="replace", bufsize=1, preexec_fn=die_with_parent)
    tail: collections.deque[str] = collections.deque(maxlen=1)
    terminated = threading.Event()

    def pump():
        for line in process.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            if line.strip():
                tail.append(line.strip()[:500])

    def on_sigterm(signum, frame):
        terminated.set()
        _stop(process)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    previous = signal.signal(signal.SIGTERM, on_sigterm)
    timed_out = False
    try:
        process.wait(timeout=None if time_limit_min is None else time_limit_min * 60)
    except subprocess.TimeoutExpired:
        timed_out = True
        _stop(process)
    finally:
        if process.poll() is None:  # interrupted (Ctrl-C): never leave the child behind
            _stop(process)
        signal.signal(signal.SIGTERM, previous)
    reader.join(timeout=5)
    return process.returncode, timed_out, terminated.is_set(), tail[0] if tail else ""


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM to the child, SIGKILL after a grace period (its own measuring process dies with it)."""
    process.terminate()
    try:
        process.wait(timeout=KILL_GRACE_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
