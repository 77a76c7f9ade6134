"""The performance targets (ratios to non-private training, max batch ÷ Opacus) and their verdicts:
the CNN targets of paper/performance.md and the vision transformers' of paper/vit_performance.md.
Targets are reported, never asserted: a target not met is a row saying so."""

from __future__ import annotations

import math

import pandas as pd

from dpbench.report.ratios import CONFIGURATION
from dpbench.report.style import algorithm_label, algorithm_rank

# The CNN performance targets (throughput and step memory ÷ non-private, max batch ÷ Opacus).
THROUGHPUT_TARGETS = {"mixed_ghost": 0.6, "bk_mixed": 0.85}
MEMORY_TARGET = 1.05
MEMORY_ALGORITHMS = ("mixed_ghost", "bk_mixed")
MAXBATCH_TARGET = 20.0
MAXBATCH_MODEL = "vgg19"

# The vision transformers' targets: throughput and step memory ÷ non-private, faster than every Opacus row.
VIT_THROUGHPUT_TARGETS = {"mixed_ghost": 0.6, "bk_mixed": 0.8}
VIT_MEMORY_TARGET = 1.1
OPACUS = ("opacus", "opacus_ghost")


def verdict_at_least(value: float, bound: float) -> str:
    """'met' when value >= bound."""
    if pd.isna(value):
        return "not measured"
    return "met" if value >= bound else "not met"


def verdict_at_most(value: float, bound: float) -> str:
    """'met' when value <= bound."""
    if pd.isna(value):
        return "not measured"
    return "met" if value <= bound else "not met"


def maxbatch_verdict(low: float, high: float, bound: float = MAXBATCH_TARGET) -> str:
    """'met' when the whole interval of the ratio is at or above the bound, 'not met' when below."""
    if low >= bound:
        return "met"
    if high < bound:
        return "not met"
    return "undecided (the search's tolerance leaves the ratio on both sides of the target)"


def targets():
    """(algorithm, figure, ratio column, target text, verdict function) of every CNN throughput and
    memory target."""
    for algorithm, bound in THROUGHPUT_TARGETS.items():
        yield (algorithm, "throughput", "throughput_ratio", f"≥ {bound:g}",
               lambda value, bound=bound: verdict_at_least(value, bound))
    for algorithm in MEMORY_ALGORITHMS:
        yield (algorithm, "step memory", "memory_ratio", f"≤ {MEMORY_TARGET:g}",
               lambda value: verdict_at_most(value, MEMORY_TARGET))


def cell(value: float, oom: bool = False) -> str:
    """A ratio as the reports show it: three significant digits, 'OOM', or '—' when not measured."""
    if oom:
        return "OOM"
    return "—" if pd.isna(value) else f"{value:.3g}"


def verified_verdict(verdict: str, *verified) -> str:
    """A verdict that rests on a computation verified wrong (dpbench.verify) is no verdict."""
    from dpbench.verify import status_of

    wrong = [str(v) for v in verified if status_of(v) == "wrong"]
    return f"not valid: computation {wrong[0]}" if wrong else verdict


def target_rows(table: pd.DataFrame) -> list[dict]:
    """One row per (configuration, CNN target) of ratios.nonprivate_ratios: the measured ratio, the target,
    met / not met ('not valid' when the algorithm's computation was verified wrong), and `verified`."""
    rows = []
    for key, group in table.groupby(CONFIGURATION, sort=False):
        found = group.set_index("algorithm")
        where = dict(zip(CONFIGURATION, key))
        configuration = f"{where['model']} {where['image_size']}², batch {where['batch_size']}"
        peak = group["memory_measure"].iloc[0] != "step"
        for algorithm, figure, column, target, verdict in targets():
            value = found[column].get(algorithm, math.nan)
            if peak and column == "memory_ratio":
                figure = "peak memory (no step memory)"
            verified = found["verified"].get(algorithm, "—") if "verified" in found else "not recorded"
            rows.append({"configuration": configuration, "figure": f"{algorithm_label(algorithm)} {figure} ÷ non-private",
                         "measured": cell(value, found["oom"].get(algorithm, False)), "target": target,
                         "verdict": verified_verdict(verdict(value), verified), "device": where["device"],
                         "verified": verified})
    return rows


def alternating_target_rows(frame: pd.DataFrame) -> list[dict]:
    """One row per (model, batch size, runs at a time, CNN target) of the alternating runs (the after
    engine's rows that measured, of load.read_ratio_table): the median ratio with its range over rounds
    (throughput), and met / not met by the median."""
    rows = []
    for (model, batch, jobs), group in frame.groupby(["model", "batch_size", "jobs"], sort=False):
        found = group.set_index("algorithm")
        configuration = f"{model} 32², batch {batch}, {jobs} run{'s' if jobs > 1 else ''} at a time"
        for algorithm, figure, column, target, verdict in targets():
            if algorithm not in found.index:
                continue
            r = found.loc[algorithm]
            throughput = column == "throughput_ratio"
            spread = ("" if not throughput else
                      f"{r['ratio_min']:.2f}–{r['ratio_max']:.2f}" if _truthy(r["paired"]) else "unpaired")
            rows.append({"configuration": configuration,
                         "figure": f"{algorithm_label(algorithm)} {figure} ÷ non-private",
                         "median": f"{r[column]:.3f}" if throughput else cell(r[column]),
                         "range over rounds": spread, "rounds": int(r["rounds"]), "target": target,
                         "verdict": verdict(r[column])})
    return rows


def _truthy(value) -> bool:
    return str(value).strip().lower() in ("true", "1")


# ---------------------------------------------------------------- vision transformers


def _vit_ratio_text(row: pd.Series | None, column: str) -> str:
    if row is None:
        return "—"
    if row["status"] != "ok":
        return "fails" if str(row["status"]).startswith("error") else str(row["status"])
    value = row[column]
    if pd.isna(value):
        return "—"
    if column == "throughput_ratio" and _truthy(row["paired"]) and \
            pd.notna(row["ratio_min"]) and row["ratio_min"] != row["ratio_max"]:
        return f"{value:.2f} ({row['ratio_min']:.2f}–{row['ratio_max']:.2f})"
    return f"{value:.2f}"


def _value(row: pd.Series | None, column: str) -> float:
    return math.nan if row is None or row["status"] != "ok" else float(row[column])


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


def vit_target_rows(ratios: pd.DataFrame, bounds: dict | None = None) -> list[dict]:
    """One row per (model, input size, batch size, runs at a time, algorithm) of the DP and Opacus
    algorithms of load.read_ratio_table: the ratios before and after, the cost model's bound where
    `bounds` has the model (cost_model_bounds), and the verdicts of the after engine (a configuration whose
    after runs are still missing is 'not measured')."""
    bounds = bounds or {}
    shown = (*OPACUS, *VIT_THROUGHPUT_TARGETS)
    rows = []
    for (model, batch, jobs), group in ratios.groupby(["model", "batch_size", "jobs"], sort=False):
        found = {(r["engine"], r["algorithm"]): r for _, r in group.iterrows()}
        size = group["image_size"].dropna()
        where = f"{model} {int(size.iloc[0])}²" if len(size) else model
        configuration = f"{where}, batch {batch}, {jobs} run{'s' if jobs > 1 else ''} at a time"
        for algorithm in sorted({a for a in group["algorithm"] if a in shown}, key=algorithm_rank):
            before, after = found.get(("before", algorithm)), found.get(("after", algorithm))
            bound = VIT_THROUGHPUT_TARGETS.get(algorithm)
            row = {"configuration": configuration, "algorithm": algorithm_label(algorithm),
                   "throughput ÷ NP before": _vit_ratio_text(before, "throughput_ratio"),
                   "throughput ÷ NP after": _vit_ratio_text(after, "throughput_ratio"),
                   **({"cost model ÷ NP": _bound_text(bounds, model, size, algorithm)} if bounds else {}),
                   "throughput target": f"≥ {bound:g}" if bound else "",
                   "throughput verdict": verdict_at_least(_value(after, "throughput_ratio"), bound) if bound else "",
                   "memory ÷ NP before": _vit_ratio_text(before, "memory_ratio"),
                   "memory ÷ NP after": _vit_ratio_text(after, "memory_ratio"),
                   "memory target": f"≤ {VIT_MEMORY_TARGET:g}" if bound else "",
                   "memory verdict": verdict_at_most(_value(after, "memory_ratio"), VIT_MEMORY_TARGET) if bound else ""}
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
