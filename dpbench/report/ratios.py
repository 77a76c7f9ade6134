"""Ratios: every algorithm's figure ÷ non-private training's (the project's headline number), by one
pairing rule, and the maximum batch size of mixed ghost ÷ Opacus' with the range the search leaves."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from dpbench.report.style import algorithm_rank

REFERENCE = "nonprivate"
MB = 1e6
# The configuration a bench result measures: a ratio divides by non-private of the same one.
CONFIGURATION = ["device", "model", "image_size", "batch_size"]


def ratio_to(frame: pd.DataFrame, column: str, pair_by: list[str], reference: str = REFERENCE) -> pd.Series:
    """The one pairing rule of every ratio: each row's `column` ÷ the `column` of the `reference`
    algorithm's row with the same `pair_by` values (the same configuration; add the round to pair runs
    taken side by side). Several reference rows with the same values count by their median. NaN where the
    configuration has no reference or a value is missing; x ÷ 0 is infinite."""
    values = pd.Series(frame[column].to_numpy(dtype=float), index=frame.index)
    is_reference = frame["algorithm"] == reference
    reference_values = (frame.loc[is_reference, pair_by].assign(_value=values[is_reference])
                        .groupby(pair_by, dropna=False, sort=False)["_value"].median().rename("_reference")
                        .reset_index())
    paired = frame[pair_by].merge(reference_values, how="left", on=pair_by)["_reference"].to_numpy(dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return pd.Series(values.to_numpy() / paired, index=frame.index)


def nonprivate_ratios(bench: pd.DataFrame) -> pd.DataFrame:
    """Per configuration (device, model, image size, batch size) with a non-private result: every
    algorithm's throughput (`step_throughput` of load.bench_frame) and memory ÷ non-private's. Memory is
    the step's own growth where every algorithm of the configuration has it, else the overall peak (named
    in `memory_measure`). Several results of one configuration (alternating rounds) count by their median.
    `verified`: dpbench.verify's verdict of the algorithm's results ('not recorded' for older results; of
    several, the worst: a wrong one, else a skipped one, else exact)."""
    columns = CONFIGURATION + ["algorithm", "oom", "throughput", "throughput_ratio", "memory_mb", "memory_ratio",
                               "memory_measure", "verified"]
    frames = []
    for _, group in bench.groupby(CONFIGURATION, sort=False):
        if REFERENCE not in set(group["algorithm"]):
            continue
        use_step = group["step_memory_bytes"].notna().all()
        memory_column = "step_memory_bytes" if use_step else "peak_memory_bytes"
        if "verified" not in group:
            group = group.assign(verified="not recorded")
        per_algorithm = group.groupby(CONFIGURATION + ["algorithm"], sort=False).agg(
            oom=("oom", "any"), throughput=("step_throughput", "median"),
            memory=(memory_column, "median"), verified=("verified", worst_verification)).reset_index()
        frames.append(per_algorithm.assign(
            oom=per_algorithm["oom"].astype(bool),
            throughput_ratio=ratio_to(per_algorithm, "throughput", CONFIGURATION),
            memory_mb=per_algorithm["memory"] / MB,
            memory_ratio=ratio_to(per_algorithm, "memory", CONFIGURATION),
            memory_measure="step" if use_step else "peak"))
    if not frames:
        return pd.DataFrame(columns=columns)
    frame = pd.concat(frames, ignore_index=True)[columns]
    frame["_rank"] = frame["algorithm"].map(algorithm_rank)
    return frame.sort_values(CONFIGURATION + ["_rank"], kind="stable").drop(columns="_rank").reset_index(drop=True)


def worst_verification(shown: pd.Series) -> str:
    """Of several results' `verified` texts, the one to show: a wrong one, else a skipped or unrecorded one,
    else exact."""
    from dpbench.verify import status_of

    values = [str(v) for v in shown]
    for status in ("wrong", "skipped", "not recorded"):
        found = [v for v in values if status_of(v) == status]
        if found:
            return found[0]
    return values[0] if values else "not recorded"


def maxbatch_ratios(maxbatch: pd.DataFrame, model: str) -> list[dict]:
    """mixed ghost's max batch ÷ Opacus' per (device, image size, budget) of `model`, with the interval
    the search's tolerance leaves (a search stopped at tolerance t is at most t − 1 below the truth;
    one that reached its limit is a lower bound)."""
    rows = []
    frame = maxbatch[maxbatch["model"] == model]
    for (device, size, budget), group in frame.groupby(["device", "image_size", "memory_budget_bytes"], sort=False,
                                                        dropna=False):
        found = group.set_index("algorithm")
        if not {"mixed_ghost", "opacus"} <= set(found.index):
            continue
        mixed, opacus = found.loc["mixed_ghost"], found.loc["opacus"]
        low, high = _ratio_interval(mixed, opacus)
        rows.append({"device": device, "model": model, "image_size": size, "memory_budget_bytes": budget,
                     "mixed_ghost": int(mixed["max_batch_size"]), "opacus": int(opacus["max_batch_size"]),
                     "mixed_at_limit": int(mixed["max_batch_size"]) >= int(mixed["limit"]),
                     "low": low, "high": high,
                     "verified_mixed_ghost": mixed.get("verified", "not recorded"),
                     "verified_opacus": opacus.get("verified", "not recorded")})
    return rows


def _ratio_interval(mixed: pd.Series, opacus: pd.Series) -> tuple[float, float]:
    m, o = int(mixed["max_batch_size"]), int(opacus["max_batch_size"])
    m_slack, o_slack = int(mixed["tolerance"]) - 1, int(opacus["tolerance"]) - 1
    m_high = math.inf if m >= int(mixed["limit"]) else m + m_slack
    low = math.inf if o + o_slack == 0 else m / (o + o_slack)
    high = math.inf if o == 0 else m_high / o
    return low, high


def predicted_times(layers: pd.DataFrame) -> pd.DataFrame:
    """Per (model, image size, algorithm) of `dpbench complexity` tables (load.complexity_frame): the
    predicted time of the whole model (`time_flops`: the TOTAL row, else the sum over the layers), and its
    ratio to non-private's (`time_vs_nonprivate`: the predicted slowdown)."""
    rows = []
    for (model, size), group in layers.groupby(["model", "image_size"], sort=False):
        totals = group[group["layer"] == "TOTAL"] if "layer" in group else group.iloc[0:0]
        total = totals.iloc[0] if len(totals) else group.filter(like="time_").sum()
        for column in group.columns:
            if column.startswith("time_"):
                rows.append({"model": model, "image_size": size, "algorithm": column.removeprefix("time_"),
                             "time_flops": total[column]})
    frame = pd.DataFrame(rows, columns=["model", "image_size", "algorithm", "time_flops"])
    return frame.assign(time_vs_nonprivate=ratio_to(frame, "time_flops", ["model", "image_size"]))


def cost_model_bounds(layers: pd.DataFrame) -> dict[tuple[str, int], dict[str, float]]:
    """Per (model, input size) of `dpbench complexity` tables: the cost model's predicted throughput ratio to
    non-private of every algorithm (1 ÷ ratios.predicted_times' predicted slowdown)."""
    bounds: dict[tuple[str, int], dict[str, float]] = {}
    for row in predicted_times(layers).itertuples():
        if row.time_flops > 0:
            bounds.setdefault((str(row.model), int(row.image_size)), {})[row.algorithm] = 1 / row.time_vs_nonprivate
    return bounds
