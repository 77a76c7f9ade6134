"""Failed configurations: the failure records among the result files (dpbench.failures), as one table
that the tables, table4.md and the reproduction report list with their reasons."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from dpbench.failures import is_failure

COLUMNS = ["kind", "sweep", "model", "image_size", "batch_size", "algorithm", "run", "epsilon", "failure", "reason",
           "last_error_line", "attempt", "log", "device", "result"]


def failure_rows(paths, kind: str) -> list[dict]:
    """One row per failure record among the result files of one kind (measured results are skipped)."""
    rows = []
    for path in paths:
        try:
            record = json.loads(Path(path).read_text())
        except (OSError, ValueError):
            continue  # the frame readers report unreadable files
        if not is_failure(record):
            continue
        config, failure = record.get("config", {}), record.get("failure", {})
        rows.append({
            "kind": kind, "sweep": config.get("sweep"), "model": config.get("model"),
            "image_size": config.get("image_size"), "batch_size": config.get("batch_size"),
            "algorithm": config.get("algorithm"), "run": config.get("run"), "epsilon": config.get("epsilon"),
            "failure": failure.get("kind"), "reason": failure.get("reason"),
            "last_error_line": failure.get("last_error_line"), "attempt": failure.get("attempt"),
            "log": failure.get("log"), "device": (record.get("environment") or {}).get("device"), "result": str(path),
        })
    return rows


def failures_frame(paths_by_kind: dict[str, list]) -> pd.DataFrame:
    """Every failure record among the given result files, kind by kind."""
    rows = [row for kind, paths in paths_by_kind.items() for row in failure_rows(paths, kind)]
    return pd.DataFrame(rows, columns=COLUMNS)


def describe(row) -> str:
    """'bench table4 resnet18 32², batch 256, Opacus' for one failure row."""
    from dpbench.report.style import algorithm_label

    parts = [str(row["kind"])]
    for key, fmt in (("sweep", "{}"), ("run", "{}"), ("model", "{}"), ("image_size", "{}²"),
                     ("batch_size", "batch {}"), ("epsilon", "ε {}")):
        value = row.get(key)
        if value is not None and not (isinstance(value, float) and pd.isna(value)):
            parts.append(fmt.format(int(value) if isinstance(value, float) and value.is_integer() else value))
    if isinstance(row.get("algorithm"), str):
        parts.append(algorithm_label(row["algorithm"]))
    return " ".join(parts[:2]) + (", " + ", ".join(parts[2:]) if len(parts) > 2 else "")


def failures_markdown(frame: pd.DataFrame) -> str:
    """The failed configurations with their reasons and last error lines, for results/tables/failures.md."""
    head = "# Failed configurations\n\n"
    if frame.empty:
        return head + "None: every configuration of this run has a result.\n"
    lines = [head, f"{len(frame)} configuration(s) have no measurement, only a failure record (after every "
             "retry). Running the same Snakemake command again redoes exactly these.\n\n",
             "| configuration | failure | reason | last error line | log |\n|---|---|---|---|---|\n"]
    for row in frame.to_dict("records"):
        lines.append(f"| {describe(row)} | {row['failure']} | {row['reason']} | "
                     f"{str(row['last_error_line'] or '—').replace('|', '/')} | {row['log'] or '—'} |\n")
    return "".join(lines)


def footnote(failures: pd.DataFrame | None, kinds: tuple[str, ...], limit: int = 6) -> str | None:
    """'Failed, not shown: ...' for the failures of the given result kinds (None when there are none)."""
    if failures is None or failures.empty:
        return None
    rows = failures[failures["kind"].isin(kinds)].to_dict("records")
    if not rows:
        return None
    names = [f"{describe(row)} ({row['failure']})" for row in rows[:limit]]
    more = f" and {len(rows) - limit} more" if len(rows) > limit else ""
    return f"Failed, not shown: {'; '.join(names)}{more} (results/tables/failures.md)."
