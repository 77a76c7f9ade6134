"""The result tables: throughput and memory, the paper's Table 4 layout, maximum batch sizes,
accuracy per epsilon and the complexity totals; each as a data frame, written as CSV and Markdown.
Every measured row carries `verified` (dpbench.verify: was the algorithm's computation exact on that
model?), 'not recorded' for results written before there was one; a 'wrong' row is flagged in the Table 4
grid too."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from dpbench.report.ratios import CONFIGURATION, ratio_to
from dpbench.report.style import algorithm_label, algorithm_rank, ordered_algorithms
from dpbench.results import write_text_atomic

GB = 1e9
MB = 1e6


def _sort(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Rows in a stable reading order: models as first seen, numbers ascending, algorithms in paper order."""
    if frame.empty:
        return frame.reset_index(drop=True)
    order = frame.copy()
    sort_cols = []
    for key in keys:
        if key == "algorithm":
            order["_algorithm"] = order["algorithm"].map(algorithm_rank)
            sort_cols.append("_algorithm")
        elif key == "model":
            first_seen = {m: i for i, m in enumerate(dict.fromkeys(order["model"]))}
            order["_model"] = order["model"].map(first_seen)
            sort_cols.append("_model")
        else:
            sort_cols.append(key)
    order = order.sort_values(sort_cols, kind="stable")
    return order.drop(columns=[c for c in ("_algorithm", "_model") if c in order]).reset_index(drop=True)


def throughput_memory(bench: pd.DataFrame) -> pd.DataFrame:
    """Throughput and peak memory per (model, image size, batch size, algorithm), with the ratios of
    each to non-private training of the same configuration on the same device."""
    frame = bench.copy()
    frame["peak_memory_mb"] = frame["peak_memory_bytes"] / MB
    frame["throughput_vs_nonprivate"] = ratio_to(frame, "throughput_img_s", CONFIGURATION)
    frame["memory_vs_nonprivate"] = ratio_to(frame, "peak_memory_bytes", CONFIGURATION)
    columns = ["model", "image_size", "batch_size", "algorithm", "throughput_img_s", "throughput_q25",
               "throughput_q75", "throughput_vs_nonprivate", "step_time_s", "peak_memory_mb",
               "memory_vs_nonprivate", "memory_method", "oom", "error", "verified", "memory_budget_bytes", "steps",
               "warmup", "dtype", "device"]
    return _sort(frame[columns], ["device", "model", "image_size", "batch_size", "algorithm"])


def scaling(bench: pd.DataFrame) -> pd.DataFrame:
    """Data-parallel scaling: the throughput of W ranks (each with its own batch of batch_size, images of
    all ranks counted) ÷ the throughput of 1 rank of the same configuration on the same kind of device,
    and that speedup ÷ W (the efficiency); one row per configuration measured on more than one rank."""
    keys = ["rank_device", "model", "image_size", "batch_size", "algorithm", "dtype"]
    measured = bench[~bench["oom"] & bench["throughput_img_s"].notna()]
    one = measured[measured["ranks"] == 1][keys + ["throughput_img_s"]].drop_duplicates(keys)
    many = measured[measured["ranks"] > 1]
    frame = many.merge(one.rename(columns={"throughput_img_s": "throughput_one_rank"}), how="left", on=keys)
    frame["speedup"] = frame["throughput_img_s"] / frame["throughput_one_rank"]
    frame["efficiency"] = frame["speedup"] / frame["ranks"]
    frame = frame.rename(columns={"batch_size": "batch_size_per_rank", "rank_device": "device_per_rank"})
    columns = ["model", "image_size", "batch_size_per_rank", "algorithm", "ranks", "throughput_img_s",
               "throughput_one_rank", "speedup", "efficiency", "verified", "dtype", "device_per_rank"]
    return _sort(frame[columns], ["device_per_rank", "model", "image_size", "batch_size_per_rank", "algorithm",
                                  "ranks"])


def table4(bench: pd.DataFrame, epoch_images: int) -> pd.DataFrame:
    """The paper's Table 4 in long form: time per epoch (epoch_images / throughput) and peak memory."""
    frame = bench.copy()
    frame["epoch_time_s"] = epoch_images / frame["throughput_img_s"]
    frame["memory_gb"] = frame["peak_memory_bytes"] / GB
    frame["epoch_images"] = epoch_images
    columns = ["model", "image_size", "batch_size", "algorithm", "epoch_time_s", "memory_gb", "oom", "verified",
               "memory_budget_bytes", "epoch_images", "memory_method", "device"]
    return _sort(frame[columns], ["device", "image_size", "batch_size", "model", "algorithm"])


def _fmt(value: float, digits: int) -> str:
    return "—" if pd.isna(value) else f"{value:.{digits}f}"


def _budget_text(budgets: pd.Series) -> str:
    """'memory budget 16.0 GiB (OOM = over it)' for a group's budgets, or the device's memory."""
    from dpbench.measure.memory import format_bytes

    values = sorted({int(b) for b in budgets.dropna()})
    if not values:
        return "no memory budget: OOM = over the device's memory"
    return f"memory budget {' / '.join(format_bytes(v) for v in values)}: OOM = over it"


def verification_mark(verified) -> str:
    """What a grid cell adds for its `verified` text: ' WRONG (4.4e-02)' when the algorithm's computation
    was wrong on the model, ' (not verified)' when the check was skipped, '' when exact or not recorded
    (results written before there was a check: the grid's note counts them)."""
    from dpbench.verify import status_of

    status = status_of(verified)
    if status == "wrong":
        return f" WRONG{str(verified).removeprefix('wrong')}"
    return " (not verified)" if status == "skipped" else ""


def table4_markdown(table: pd.DataFrame, failures: pd.DataFrame | None = None) -> str:
    """One Table-4-style grid per (device, image size, batch size): models x algorithms, 'time / memory';
    'OOM' where the step did not fit the budget, 'failed' where a configuration has only a failure record
    (results/tables/failures.md says why); a cell whose computation was not verified exact says so
    (`verification_mark`)."""
    parts = ["# Time per epoch (s) / peak memory (GB), Table 4 layout\n"]
    failed = failures[failures["kind"] == "bench"] if failures is not None else pd.DataFrame()
    if table.empty and failed.empty:
        return parts[0] + "\nNo bench results.\n"
    for (device, size, batch), group in table.groupby(["device", "image_size", "batch_size"], sort=False):
        epoch_images = int(group["epoch_images"].iloc[0])
        parts.append(f"\n## {size}×{size}, batch {batch}, {device}\n\nTime per epoch = {epoch_images} images / "
                     f"median throughput; memory = peak memory of a training step ({group['memory_method'].iloc[0]}); "
                     f"{_budget_text(group['memory_budget_bytes'])}.\n")
        cells = {}
        for row in group.itertuples():
            text = "OOM" if row.oom else f"{_fmt(row.epoch_time_s, 1)} / {_fmt(row.memory_gb, 3)}"
            verified = getattr(row, "verified", "not recorded")
            if not (row.algorithm == "nonprivate" and str(verified).startswith("skipped")):
                text += verification_mark(verified)  # non-private has nothing to verify
            cells.setdefault(row.model, {})[row.algorithm] = text
        here = failed[(failed["image_size"] == size) & (failed["batch_size"] == batch)] if not failed.empty else failed
        for row in here.itertuples():
            cells.setdefault(row.model, {})[row.algorithm] = f"failed ({row.failure})"
        parts.append(_grid(cells))
    shown = set(zip(table["image_size"], table["batch_size"]))
    for (size, batch), group in (failed.groupby(["image_size", "batch_size"]) if not failed.empty else []):
        if (size, batch) not in shown:  # every configuration of this size and batch failed
            parts.append(f"\n## {size}×{size}, batch {batch}\n\nNo measurement: every configuration failed.\n")
            parts.append(_grid({row.model: {row.algorithm: f"failed ({row.failure})"} for row in group.itertuples()}))
    if not failed.empty:
        parts.append(f"\n{len(failed)} configuration(s) failed; their reasons are in failures.md.\n")
    if not table.empty:
        parts.append(_verification_note(table))
    return "".join(parts)


def _verification_note(table: pd.DataFrame) -> str:
    """The grid's note on dpbench.verify: what the marks mean, and how many private cells have no record."""
    from dpbench.verify import status_of

    statuses = table["verified"].map(status_of) if "verified" in table else pd.Series("not recorded", table.index)
    private = table["algorithm"] != "nonprivate"
    unrecorded = int((statuses[private] == "not recorded").sum())
    wrong = int((statuses == "wrong").sum())
    note = ("\nVerification (`verified` in table4.csv): each private cell's per-sample norms and clipped sum are "
            "checked against brute force on the run's first step. WRONG (relative error) = the algorithm's "
            "computation is wrong on that model: its time is not a valid speed result; (not verified) = the check "
            "was skipped (the reason is in table4.csv).")
    if wrong:
        note += f" {wrong} cell(s) WRONG."
    if unrecorded:
        note += (f" {unrecorded} private cell(s) have no verification record (results written before dpbench "
                 "recorded one).")
    return note + "\n"


def _grid(cells: dict) -> str:
    """models x algorithms (paper order) as Markdown; '—' where nothing was measured."""
    algorithms = ordered_algorithms(pd.Series([a for row in cells.values() for a in row]))
    grid = pd.DataFrame.from_dict(cells, orient="index").reindex(columns=algorithms)
    grid.columns = [algorithm_label(a) for a in algorithms]
    grid.index.name = "model"
    return "\n" + grid.fillna("—").to_markdown() + "\n"


def maxbatch(maxbatch_results: pd.DataFrame, bench_at_max: pd.DataFrame) -> pd.DataFrame:
    """Maximum batch sizes with their ratios to Opacus and to non-private, and the throughput measured
    at the maximum batch size (Figure 3)."""
    frame = maxbatch_results.copy()
    group = ["device", "model", "image_size", "memory_budget_bytes"]
    keyed = frame.assign(memory_budget_bytes=frame["memory_budget_bytes"].fillna(-1))
    frame["ratio_to_opacus"] = ratio_to(keyed, "max_batch_size", group, reference="opacus")
    frame["ratio_to_nonprivate"] = ratio_to(keyed, "max_batch_size", group)
    frame["memory_budget_gb"] = frame["memory_budget_bytes"] / GB
    frame["peak_memory_gb_at_max"] = frame["peak_memory_bytes_at_max"] / GB
    at_max = bench_at_max.rename(columns={"batch_size": "max_batch_size", "throughput_img_s": "throughput_at_max_img_s",
                                          "oom": "oom_at_max", "verified": "verified_at_max"})
    at_max = at_max[["device", "model", "image_size", "algorithm", "max_batch_size", "throughput_at_max_img_s",
                     "oom_at_max", "verified_at_max"]].drop_duplicates(["device", "model", "image_size", "algorithm",
                                                                         "max_batch_size"])
    frame = frame.merge(at_max, how="left", on=["device", "model", "image_size", "algorithm", "max_batch_size"])
    columns = ["model", "image_size", "algorithm", "max_batch_size", "ratio_to_opacus", "ratio_to_nonprivate",
               "throughput_at_max_img_s", "oom_at_max", "verified", "verified_at_max", "memory_budget_gb",
               "peak_memory_gb_at_max", "probes", "tolerance", "limit", "device"]
    return _sort(frame[columns], ["device", "model", "image_size", "algorithm"])


def accuracy(train: pd.DataFrame) -> pd.DataFrame:
    """Test accuracy of each training run, with the target and the spent epsilon (by the run's accountant and
    by each of prv, rdp, gdp); non-private runs (the ceiling) have no epsilon."""
    return _sort(train.copy(), ["device", "dataset", "model", "algorithm", "target_epsilon"])


def complexity_totals(layers: pd.DataFrame) -> pd.DataFrame:
    """Per (model, image size, algorithm): predicted FLOPs and extra memory of the whole model (batch of
    the table), their ratios to non-private, and how many layers the mixed rule sends to each branch."""
    rows = []
    for (model, size), group in layers.groupby(["model", "image_size"], sort=False):
        total = group[group["layer"] == "TOTAL"].iloc[0]
        per_layer = group[group["layer"] != "TOTAL"]
        for column in group.columns:
            if not column.startswith("time_"):
                continue
            algorithm = column.removeprefix("time_")
            rows.append({
                "model": model, "image_size": size, "algorithm": algorithm,
                "time_flops": total[column],
                "extra_memory_elements": total[f"mem_{algorithm}"],
                "layers": len(per_layer), "ghost_layers": int((per_layer["choice"] == "ghost").sum()),
                "instantiated_layers": int((per_layer["choice"] == "instantiate").sum()),
                "batch_size": total.get("batch_size"),
            })
    frame = pd.DataFrame(rows)
    if frame.empty:
        return _sort(frame, ["model", "image_size", "algorithm"])
    frame.insert(frame.columns.get_loc("time_flops") + 1, "time_vs_nonprivate",
                 ratio_to(frame, "time_flops", ["model", "image_size"]))
    return _sort(frame, ["model", "image_size", "algorithm"])


def markdown_table(frame: pd.DataFrame, title: str) -> str:
    """A titled Markdown table of the whole frame."""
    body = frame.to_markdown(index=False, floatfmt=".4g") if not frame.empty else "No results."
    return f"# {title}\n\n{body}\n"


def write_table(frame: pd.DataFrame, directory: Path, name: str, markdown: str | None) -> None:
    """name.csv, and name.md when markdown text is given, in directory."""
    write_text_atomic(directory / f"{name}.csv", frame.to_csv(index=False))
    if markdown is not None:
        write_text_atomic(directory / f"{name}.md", markdown)
