"""The vision-transformer performance report (paper/vit_performance.md): for each model, batch size and
DP algorithm, throughput and step memory ÷ non-private with the baseline's engine ("before") and the
working tree's ("after"), over alternating runs of `scripts/perf_before_after.py` (its committed ratio
CSV, which has an `engine` column when before and after were measured in separate parts), against the
transformer targets: BK mixed ≥ 0.8× and mixed ghost ≥ 0.6× of non-private throughput, step memory
≤ 1.1×, and faster than both Opacus rows wherever Opacus runs. Then the committed before/after table
and the torch.profiler summary of the profile results of this run. Reported, never asserted."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from dpbench.report.load import device_label
from dpbench.report.performance import RATIO_COLUMNS, _markdown, _profile_section, _read_committed_csv, _short_commit
from dpbench.report.style import algorithm_label, algorithm_rank

THROUGHPUT_TARGETS = {"mixed_ghost": 0.6, "bk_mixed": 0.8}
MEMORY_TARGET = 1.1
OPACUS = ("opacus", "opacus_ghost")
SHOWN = (*OPACUS, *THROUGHPUT_TARGETS)
ENGINES = ("before", "after")


def read_ratios(path: str | Path | None) -> pd.DataFrame | None:
    """The ratio CSV of the alternating runs; a table without `engine` holds the working tree's ("after")
    only, one without `status` only runs that measured."""
    frame = _read_committed_csv(path, RATIO_COLUMNS, "ratios table")
    if frame is None:
        return None
    defaults = {"engine": "after", "status": "ok", "image_size": math.nan}
    frame = frame.assign(**{c: v for c, v in defaults.items() if c not in frame.columns})
    return frame.assign(status=frame["status"].fillna("ok"))


def cost_model_bounds(paths: list[str]) -> dict[tuple[str, int], dict[str, float]]:
    """Per (model, input size): the cost model's predicted throughput ratio to non-private of every
    algorithm (Σ time_nonprivate ÷ Σ time_<algorithm> over the layers of a `dpbench complexity` table)."""
    bounds = {}
    for path in paths:
        frame = pd.read_csv(path)
        totals = frame[[c for c in frame.columns if c.startswith("time_")]].sum()
        key = (str(frame["model"].iloc[0]), int(frame["image_size"].iloc[0]))
        bounds[key] = {c.removeprefix("time_"): totals["time_nonprivate"] / v for c, v in totals.items() if v > 0}
    return bounds


def _ratio_text(row: pd.Series | None, column: str) -> str:
    if row is None:
        return "—"
    if row["status"] != "ok":
        return "fails" if str(row["status"]).startswith("error") else str(row["status"])
    value = row[column]
    if pd.isna(value):
        return "—"
    if column == "throughput_ratio" and str(row["paired"]).strip().lower() in ("true", "1") and \
            pd.notna(row["ratio_min"]) and row["ratio_min"] != row["ratio_max"]:
        return f"{value:.2f} ({row['ratio_min']:.2f}–{row['ratio_max']:.2f})"
    return f"{value:.2f}"


def _value(row: pd.Series | None, column: str) -> float:
    return math.nan if row is None or row["status"] != "ok" else float(row[column])


def _verdict(value: float, bound: float, at_least: bool) -> str:
    if math.isnan(value):
        return "not measured"
    return "met" if (value >= bound if at_least else value <= bound) else "not met"


def _versus_opacus(mine: float, found: dict) -> str:
    """Whether `mine` (a throughput ratio) beats every Opacus row that ran."""
    ran = {name: _value(found.get(name), "throughput_ratio") for name in OPACUS if found.get(name) is not None}
    ran = {name: value for name, value in ran.items() if not math.isnan(value)}
    if math.isnan(mine):
        return "not measured"
    if not ran:
        failed = [name for name in OPACUS if found.get(name) is not None]
        return "Opacus does not run" if failed else "Opacus not measured"
    verdict = "met" if all(mine > value for value in ran.values()) else "not met"
    return f"{verdict} ({', '.join(f'{mine / value:.2f}× {algorithm_label(name)}' for name, value in ran.items())})"


def target_rows(ratios: pd.DataFrame, bounds: dict | None = None) -> list[dict]:
    """One row per (model, input size, batch size, runs at a time, algorithm) of the DP and Opacus
    algorithms: the ratios before and after, the cost model's bound where `bounds` has the model
    (cost_model_bounds), and the verdicts of the after engine (a configuration whose after runs are still
    missing is 'not measured')."""
    bounds = bounds or {}
    rows = []
    for (model, batch, jobs), group in ratios.groupby(["model", "batch_size", "jobs"], sort=False):
        found = {(r["engine"], r["algorithm"]): r for _, r in group.iterrows()}
        size = group["image_size"].dropna()
        where = f"{model} {int(size.iloc[0])}²" if len(size) else model
        configuration = f"{where}, batch {batch}, {jobs} run{'s' if jobs > 1 else ''} at a time"
        for algorithm in sorted({a for a in group["algorithm"] if a in SHOWN}, key=algorithm_rank):
            before, after = found.get(("before", algorithm)), found.get(("after", algorithm))
            bound = THROUGHPUT_TARGETS.get(algorithm)
            row = {"configuration": configuration, "algorithm": algorithm_label(algorithm),
                   "throughput ÷ NP before": _ratio_text(before, "throughput_ratio"),
                   "throughput ÷ NP after": _ratio_text(after, "throughput_ratio"),
                   **({"cost model ÷ NP": _bound_text(bounds, model, size, algorithm)} if bounds else {}),
                   "throughput target": f"≥ {bound:g}" if bound else "",
                   "throughput verdict": _verdict(_value(after, "throughput_ratio"), bound, True) if bound else "",
                   "memory ÷ NP before": _ratio_text(before, "memory_ratio"),
                   "memory ÷ NP after": _ratio_text(after, "memory_ratio"),
                   "memory target": f"≤ {MEMORY_TARGET:g}" if bound else "",
                   "memory verdict": _verdict(_value(after, "memory_ratio"), MEMORY_TARGET, False) if bound else ""}
            after_found = {name: r for (engine, name), r in found.items() if engine == "after"}
            row["faster than Opacus (after)"] = (_versus_opacus(_value(after, "throughput_ratio"), after_found)
                                                 if bound else "")
            rows.append(row)
    return rows


def _bound_text(bounds: dict, model: str, size: pd.Series, algorithm: str) -> str:
    found = bounds.get((model, int(size.iloc[0]))) if len(size) else None
    return f"{found[algorithm]:.2f}" if found and algorithm in found else "—"


def failures(ratios: pd.DataFrame) -> list[str]:
    """The errors of the configurations whose runs all failed, one line each."""
    failed = ratios[ratios["status"] != "ok"]
    return [f"{r.algorithm} on {r.model}, batch {r.batch_size}, {r.engine}: {r.status}" for r in failed.itertuples()]


def render(ratios: pd.DataFrame | None, before_after: pd.DataFrame | None, profiles: list[dict],
           ratios_name: str, before_after_name: str, bounds: dict | None = None) -> str:
    """The Markdown report; `ratios_name` and `before_after_name` name the committed CSVs in its text."""
    environments = [p["environment"] for p in profiles]
    lines = ["# Performance report: vision transformers, private vs non-private training", "",
             f"Generated by the pipeline (`dpbench perf-report --layout vit`) from `{ratios_name}` and "
             f"`{before_after_name}` (written by `scripts/perf_before_after.py`: each run a fresh `dpbench bench` "
             "process with one thread, CPU time, alternating rounds; its commands and machine are in the Markdown "
             "table next to them) and this run's profile results. Do not edit by hand.", ""]
    if environments:
        lines += [f"- Profiles: {', '.join(sorted({device_label(e) for e in environments}))}, dpbench commit "
                  f"{', '.join(sorted({_short_commit(e.get('git_commit')) for e in environments}))}", ""]
    lines += ["## Targets over alternating runs", "",
              "Throughput ÷ non-private (NP): the median over rounds of the algorithm's run ÷ the `nonprivate` run "
              "of the same round (in brackets the range over rounds), each run one thread, by CPU time; step memory "
              "÷ NP: median ÷ median of `step_memory_bytes`. Before = the baseline commit's clipping engine, after = "
              "the working tree's (commits in the before/after table). Verdicts are the after engine's: "
              f"{', '.join(f'{algorithm_label(a)} ≥ {b:g}×' for a, b in THROUGHPUT_TARGETS.items())} of non-private "
              f"throughput, step memory ≤ {MEMORY_TARGET:g}×, and a higher throughput than each Opacus row that "
              "runs (the factor over it in brackets)."
              + (" Cost model ÷ NP: the analytic bound, the predicted time of non-private training ÷ the "
                 "algorithm's (`dpbench complexity`: multiply-adds of every layer's forward, gradients, norms and "
                 "sums; attention, softmax and elementwise work are not counted)." if bounds else ""), ""]
    if ratios is None:
        lines += [f"Not measured: no ratios table (`{ratios_name}`).", ""]
    else:
        rows = target_rows(ratios, bounds)
        lines += [_markdown(pd.DataFrame(rows)) if rows else f"No DP or Opacus row in `{ratios_name}`.", ""]
        failed = failures(ratios)
        if failed:
            lines += ["Runs that failed (every round):", "", *[f"- {line}" for line in failed], ""]
    lines += _before_after(before_after, before_after_name)
    lines.append(_profile_section(profiles))
    return "\n".join(lines)


def _before_after(frame: pd.DataFrame | None, name: str) -> list[str]:
    lines = ["## Before and after: images per CPU-second and step memory", ""]
    if frame is None:
        return lines + [f"Not measured: no before/after table (`{name}`).", ""]
    if frame.empty:
        return lines + [f"No configuration in `{name}`.", ""]
    shown = pd.DataFrame({
        "model": frame["model"], "input": frame["image_size"].map(lambda v: f"{int(v)}²"),
        "batch": frame["batch_size"], "algorithm": frame["algorithm"].map(algorithm_label),
        "before img/CPU-s": frame["before_img_per_cpu_s"].map(lambda v: "—" if pd.isna(v) else f"{v:.3g}"),
        "after img/CPU-s": frame["after_img_per_cpu_s"].map(lambda v: "—" if pd.isna(v) else f"{v:.3g}"),
        "speedup": frame["speedup"].map(lambda v: "—" if pd.isna(v) else f"{v:.3g}"),
        "before step memory (MiB)": frame["before_step_memory_bytes"].map(lambda v: "—" if pd.isna(v) else f"{v / 2**20:.0f}"),
        "after step memory (MiB)": frame["after_step_memory_bytes"].map(lambda v: "—" if pd.isna(v) else f"{v / 2**20:.0f}"),
    })
    commits = (f"before = `{', '.join(sorted(set(frame['before_commit'].astype(str))))}`, after = "
               f"`{', '.join(sorted(set(frame['after_commit'].astype(str))))}`")
    paired = ("" if "paired" not in frame else " Speedup = the median of after ÷ before within a round where both "
              "engines ran side by side, else (before and after measured in separate parts) median ÷ median.")
    return lines + [f"From `{name}`: {commits}.{paired}", "", _markdown(shown), ""]
