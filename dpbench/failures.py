"""Failure records: what a measuring job leaves at its result path when it could not measure.

A record has the kind of the result it stands for (bench, maxbatch, train, profile) and
`status: failed`, the configuration it was meant to measure, and why: the failure's kind (crash,
error, timeout, killed), a reason, the last line the command printed to its log, the exit code and the
attempt. Tables and reports read records beside real results and list them; the workflow reruns every
configuration whose result is a record (see `is_failure`).
"""

from __future__ import annotations

import json
from pathlib import Path

FAILED = "failed"
FAILURE_KINDS = ("crash", "error", "timeout", "killed")


def failure_record(kind: str, config: dict, failure_kind: str, reason: str, last_error_line: str,
                   exit_code: int | None, attempt: int, attempts: int, log: str | None,
                   environment: dict) -> dict:
    """The record of one configuration that failed (see the module docstring)."""
    if failure_kind not in FAILURE_KINDS:
        raise ValueError(f"unknown failure kind {failure_kind!r}; one of {', '.join(FAILURE_KINDS)}")
    return {
        "kind": kind, "status": FAILED, "config": config,
        "failure": {"kind": failure_kind, "reason": reason, "last_error_line": last_error_line,
                    "exit_code": exit_code, "attempt": attempt, "attempts": attempts, "log": log},
        "environment": environment,
    }


def is_failure(result: dict) -> bool:
    """True for a failure record, False for a measured result."""
    return isinstance(result, dict) and result.get("status") == FAILED


def is_failure_file(path: str | Path) -> bool:
    """True if the file at path exists and holds a failure record (unreadable files count as results:
    the reader reports them)."""
    try:
        return is_failure(json.loads(Path(path).read_text()))
    except (OSError, ValueError):
        return False
