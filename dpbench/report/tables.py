"""The result tables: throughput and memory, the paper's Table 4 layout, maximum batch sizes,
accuracy per epsilon and the complexity totals; each as a data frame, written as CSV and Markdown."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from dpbench.report.style import algorithm_label, algorithm_rank, ordered_algorithms
from dpbench.results import write_text_atomic

GB = 1e9
MB = 1e6
CONFIG_KEYS = ["device", "model", "image_size", "batch_size"]


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


def _ratio_to(frame: pd.DataFrame, group: list[str], column: str, reference: str) -> pd.Series:
    """column / column of the reference algorithm in the same group (NaN where the reference is missing)."""
    ref = frame[frame["algorithm"] == reference].drop_duplicates(group).set_index(group)[column]
    keys = pd.MultiIndex.from_frame(frame[group])
    ref_values = ref.reindex(keys).to_numpy(dtype=float)
    return pd.Series(frame[column].to_numpy(dtype=float) / ref_values, index=frame.index)


def throughput_memory(bench: pd.DataFrame) -> pd.DataFrame:
    """Throughput and peak memory per (model, image size, batch size, algorithm), with the ratios of
    each to non-private training of the same configuration on the same device."""
    frame = bench.copy()
    frame["peak_memory_mb"] = frame["peak_memory_bytes"] / MB
    frame["throughput_vs_nonprivate"] = _ratio_to(frame, CONFIG_KEYS, "throughput_img_s", "nonprivate")
    frame["memory_vs_nonprivate"] = _ratio_to(frame, CONFIG_KEYS, "peak_memory_bytes", "nonprivate")
    columns = ["model", "image_size", "batch_size", "algorithm", "throughput_img_s", "throughput_q25",
               "throughput_q75", "throughput_vs_nonprivate", "step_time_s", "peak_memory_mb",
               "memory_vs_nonprivate", "memory_method", "oom", "error", "steps", "warmup", "dtype", "device"]
    return _sort(frame[columns], ["device", "model", "image_size", "batch_size", "algorithm"])


def table4(bench: pd.DataFrame, epoch_images: int) -> pd.DataFrame:
    """The paper's Table 4 in long form: time per epoch (epoch_images / throughput) and peak memory."""
    frame = bench.copy()
    frame["epoch_time_s"] = epoch_images / frame["throughput_img_s"]
    frame["memory_gb"] = frame["peak_memory_bytes"] / GB
    frame["epoch_images"] = epoch_images
    columns = ["model", "image_size", "batch_size", "algorithm", "epoch_time_s", "memory_gb", "oom",
               "epoch_images", "memory_method", "device"]
    return _sort(frame[columns], ["device", "image_size", "batch_size", "model", "algorithm"])


def _fmt(value: float, digits: int) -> str:
    return "—" if pd.isna(value) else f"{value:.{digits}f}"


def table4_markdown(table: pd.DataFrame) -> str:
    """One Table-4-style grid per (device, image size, batch size): models x algorithms, 'time / memory'."""
    parts = ["# Time per epoch (s) / peak memory (GB), Table 4 layout\n"]
    if table.empty:
        return parts[0] + "\nNo bench results.\n"
    for (device, size, batch), group in table.groupby(["device", "image_size", "batch_size"], sort=False):
        epoch_images = int(group["epoch_images"].iloc[0])
        parts.append(f"\n## {size}×{size}, batch {batch}, {device}\n\nTime per epoch = {epoch_images} images / "
                     f"median throughput; memory = peak memory of a training step ({group['memory_method'].iloc[0]}).\n")
        algorithms = ordered_algorithms(group["algorithm"])
        cells = {}
        for row in group.itertuples():
            text = "OOM" if row.oom else f"{_fmt(row.epoch_time_s, 1)} / {_fmt(row.memory_gb, 3)}"
            cells.setdefault(row.model, {})[algorithm_label(row.algorithm)] = text
        grid = pd.DataFrame.from_dict(cells, orient="index")[[algorithm_label(a) for a in algorithms]]
        grid.index.name = "model"
        parts.append("\n" + grid.fillna("—").to_markdown() + "\n")
    return "".join(parts)


def maxbatch(maxbatch_results: pd.DataFrame, bench_at_max: pd.DataFrame) -> pd.DataFrame:
    """Maximum batch sizes with their ratios to Opacus and to non-private, and the throughput measured
    at the maximum batch size (Figure 3)."""
    frame = maxbatch_results.copy()
    group = ["device", "model", "image_size", "memory_budget_bytes"]
    keyed = frame.assign(memory_budget_bytes=frame["memory_budget_bytes"].fillna(-1))
    frame["ratio_to_opacus"] = _ratio_to(keyed, group, "max_batch_size", "opacus")
    frame["ratio_to_nonprivate"] = _ratio_to(keyed, group, "max_batch_size", "nonprivate")
    frame["memory_budget_gb"] = frame["memory_budget_bytes"] / GB
    frame["peak_memory_gb_at_max"] = frame["peak_memory_bytes_at_max"] / GB
    at_max = bench_at_max.rename(columns={"batch_size": "max_batch_size", "throughput_img_s": "throughput_at_max_img_s",
                                          "oom": "oom_at_max"})
    at_max = at_max[["device", "model", "image_size", "algorithm", "max_batch_size", "throughput_at_max_img_s",
                     "oom_at_max"]].drop_duplicates(["device", "model", "image_size", "algorithm", "max_batch_size"])
    frame = frame.merge(at_max, how="left", on=["device", "model", "image_size", "algorithm", "max_batch_size"])
    columns = ["model", "image_size", "algorithm", "max_batch_size", "ratio_to_opacus", "ratio_to_nonprivate",
               "throughput_at_max_img_s", "oom_at_max", "memory_budget_gb", "peak_memory_gb_at_max", "probes",
               "tolerance", "limit", "device"]
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
                "time_flops": total[column], "time_vs_nonprivate": total[column] / total["time_nonprivate"],
                "extra_memory_elements": total[f"mem_{algorithm}"],
                "layers": len(per_layer), "ghost_layers": int((per_layer["choice"] == "ghost").sum()),
                "instantiated_layers": int((per_layer["choice"] == "instantiate").sum()),
                "batch_size": total.get("batch_size"),
            })
    return _sort(pd.DataFrame(rows), ["model", "image_size", "algorithm"])


def markdown_table(frame: pd.DataFrame, title: str) -> str:
    """A titled Markdown table of the whole frame."""
    body = frame.to_markdown(index=False, floatfmt=".4g") if not frame.empty else "No results."
    return f"# {title}\n\n{body}\n"


def write_table(frame: pd.DataFrame, directory: Path, name: str, markdown: str | None) -> None:
    """name.csv, and name.md when markdown text is given, in directory."""
    write_text_atomic(directory / f"{name}.csv", frame.to_csv(index=False))
    if markdown is not None:
        write_text_atomic(directory / f"{name}.md", markdown)
