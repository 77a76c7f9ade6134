"""paper/performance.md: the CNN performance targets (mixed ghost ≥ 0.6×, BK mixed ≥ 0.85× of non-private throughput, step memory ≤ 1.05×, max batch ≥ 20× Opacus on VGG19) measured in this run (throughput and step
memory of each algorithm relative to non-private training, max batch of mixed ghost vs Opacus on
VGG19), the before/after table of the optimisation, and the torch.profiler summary of one step per
algorithm. Targets are reported, never asserted: a target not met is a line in the report."""

from __future__ import annotations

import math
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from dpbench.errors import DpbenchError
from dpbench.report import load
from dpbench.report.load import device_label, read_result
from dpbench.report.style import algorithm_label, algorithm_rank

MB = 1e6
REFERENCE = "nonprivate"
GROUP = ["device", "model", "image_size", "batch_size"]
REGION_LABELS = {"forward": "forward", "engine.backward": "engine.backward", "engine.add_noise": "noise",
                 "optimizer.step": "optimizer"}

# The CNN performance targets (throughput and step memory ÷ non-private, max batch ÷ Opacus).
THROUGHPUT_TARGETS = {"mixed_ghost": 0.6, "bk_mixed": 0.85}
MEMORY_TARGET = 1.05
MEMORY_ALGORITHMS = ("mixed_ghost", "bk_mixed")
MAXBATCH_TARGET = 20.0
MAXBATCH_MODEL = "vgg19"

BEFORE_AFTER_COLUMNS = ["model", "image_size", "batch_size", "algorithm", "before_img_per_cpu_s",
                        "after_img_per_cpu_s", "speedup", "before_step_memory_bytes", "after_step_memory_bytes",
                        "before_commit", "after_commit"]


# ---------------------------------------------------------------- inputs


def bench_frame(paths) -> pd.DataFrame:
    """One row per bench result, with the fields the targets need: the throughput by CPU time on a CPU
    (batch / median CPU seconds per step: robust to other work on the machine) and by wall time on
    CUDA, the step's own memory growth and the overall peak."""
    rows = []
    for path in paths:
        r = read_result(path, "bench")
        c, env = r["config"], r["environment"]
        cuda = str(env.get("device", c["device"])).startswith("cuda")
        timing = None if r["oom"] else (r.get("step_time_s") if cuda else r.get("step_cpu_time_s"))
        seconds = timing["median"] if timing else None
        rows.append({
            "device": device_label(env), "cuda": cuda, "model": c["model"], "image_size": c["image_size"],
            "batch_size": c["batch_size"], "algorithm": c["algorithm"], "oom": bool(r["oom"]),
            "throughput": c["batch_size"] / seconds if seconds else math.nan,
            "step_memory_bytes": r.get("step_memory_bytes"), "peak_memory_bytes": r.get("peak_memory_bytes"),
            "environment": env, "path": str(path),
        })
    return pd.DataFrame(rows, columns=["device", "cuda", "model", "image_size", "batch_size", "algorithm", "oom",
                                       "throughput", "step_memory_bytes", "peak_memory_bytes", "environment", "path"])


def maxbatch_environment(path: str | Path) -> dict:
    """A maxbatch result's environment with the threads its probes ran with (the record itself is
    taken in the searching process, whose torch may keep its default)."""
    result = read_result(path, "maxbatch")
    threads = result["config"].get("threads")
    return result["environment"] | ({"threads": threads} if threads else {})


def maxbatch_frame(paths) -> pd.DataFrame:
    """load.maxbatch_frame, each row's device labelled with the threads of its probes."""
    frame = load.maxbatch_frame(paths)
    frame["device"] = [device_label(maxbatch_environment(path)) for path in paths]
    return frame


def profile_results(paths) -> list[dict]:
    """The `kind: profile` results."""
    return [read_result(path, "profile") for path in paths]


def read_before_after(path: str | Path | None) -> pd.DataFrame | None:
    """The committed before/after CSV (None when no path is given)."""
    return _read_committed_csv(path, BEFORE_AFTER_COLUMNS, "before/after table")


def _read_committed_csv(path: str | Path | None, columns: list[str], what: str) -> pd.DataFrame | None:
    """A committed CSV with at least `columns`; None without a path, one clear error otherwise."""
    if path is None:
        return None
    try:
        frame = pd.read_csv(path)
    except FileNotFoundError:
        raise DpbenchError(f"{what} not found: {path}") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise DpbenchError(f"{path} is not a readable CSV: {error}") from None
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DpbenchError(f"{path} lacks the columns {', '.join(missing)}")
    return frame


RATIO_COLUMNS = ["model", "batch_size", "jobs", "algorithm", "memory_ratio", "throughput_ratio", "ratio_min",
                 "ratio_max", "paired", "rounds"]


def read_alternating_ratios(path: str | Path | None) -> pd.DataFrame | None:
    """The committed ratios to nonprivate over alternating runs (paper/perf_ratios.csv, written by
    scripts/perf_before_after.py); None when no path is given. Of a table with the ratios of both
    engines (columns `engine` and `status`), the working tree's rows that measured."""
    frame = _read_committed_csv(path, RATIO_COLUMNS, "ratios table")
    if frame is not None and "engine" in frame:
        frame = frame[frame["engine"] == "after"]
    if frame is not None and "status" in frame:
        frame = frame[frame["status"].fillna("ok") == "ok"]
    return frame


def alternating_target_rows(frame: pd.DataFrame) -> list[dict]:
    """One row per (model, batch size, runs at a time, target) of the alternating runs: the median
    ratio with its range over rounds (throughput), and met / not met by the median."""
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
                         "median": f"{r[column]:.3f}" if throughput else _cell(r[column]),
                         "range over rounds": spread, "rounds": int(r["rounds"]), "target": target,
                         "verdict": verdict(r[column])})
    return rows


def _truthy(value) -> bool:
    return str(value).strip().lower() in ("true", "1")


# ---------------------------------------------------------------- ratios


def ratios(bench: pd.DataFrame) -> pd.DataFrame:
    """Per (device, model, image size, batch size) with a non-private result: every algorithm's
    throughput and memory divided by non-private's. Memory is the step's own growth where every
    algorithm of the group has it, else the overall peak (named in `memory_measure`). Several results
    of one configuration (alternating rounds) count by their median."""
    columns = GROUP + ["algorithm", "oom", "throughput", "throughput_ratio", "memory_mb", "memory_ratio",
                       "memory_measure"]
    out = []
    for key, group in bench.groupby(GROUP, sort=False):
        if REFERENCE not in set(group["algorithm"]):
            continue
        use_step = group["step_memory_bytes"].notna().all()
        memory_column = "step_memory_bytes" if use_step else "peak_memory_bytes"
        per_algorithm = group.groupby("algorithm", sort=False).agg(
            oom=("oom", "any"), throughput=("throughput", "median"), memory=(memory_column, "median"))
        reference = per_algorithm.loc[REFERENCE]
        for algorithm, row in per_algorithm.iterrows():
            out.append(dict(zip(GROUP, key)) | {
                "algorithm": algorithm, "oom": bool(row["oom"]), "throughput": row["throughput"],
                "throughput_ratio": _divide(row["throughput"], reference["throughput"]),
                "memory_mb": row["memory"] / MB if pd.notna(row["memory"]) else math.nan,
                "memory_ratio": _divide(row["memory"], reference["memory"]),
                "memory_measure": "step" if use_step else "peak",
            })
    frame = pd.DataFrame(out, columns=columns)
    if frame.empty:
        return frame
    frame["_rank"] = frame["algorithm"].map(algorithm_rank)
    return frame.sort_values(GROUP + ["_rank"], kind="stable").drop(columns="_rank").reset_index(drop=True)


def _divide(numerator, denominator) -> float:
    if pd.isna(numerator) or pd.isna(denominator) or not denominator:
        return math.nan
    return float(numerator) / float(denominator)


def maxbatch_ratios(maxbatch: pd.DataFrame, model: str = MAXBATCH_MODEL) -> list[dict]:
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
                     "low": low, "high": high})
    return rows


def _ratio_interval(mixed: pd.Series, opacus: pd.Series) -> tuple[float, float]:
    m, o = int(mixed["max_batch_size"]), int(opacus["max_batch_size"])
    m_slack, o_slack = int(mixed["tolerance"]) - 1, int(opacus["tolerance"]) - 1
    m_high = math.inf if m >= int(mixed["limit"]) else m + m_slack
    low = math.inf if o + o_slack == 0 else m / (o + o_slack)
    high = math.inf if o == 0 else m_high / o
    return low, high


# ---------------------------------------------------------------- verdicts


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
    """(algorithm, figure, ratio column, target text, verdict function) of every throughput and
    memory target."""
    for algorithm, bound in THROUGHPUT_TARGETS.items():
        yield (algorithm, "throughput", "throughput_ratio", f"≥ {bound:g}",
               lambda value, bound=bound: verdict_at_least(value, bound))
    for algorithm in MEMORY_ALGORITHMS:
        yield (algorithm, "step memory", "memory_ratio", f"≤ {MEMORY_TARGET:g}",
               lambda value: verdict_at_most(value, MEMORY_TARGET))


def target_rows(table: pd.DataFrame) -> list[dict]:
    """One row per (configuration, target): the measured ratio, the target and met / not met."""
    rows = []
    for key, group in table.groupby(GROUP, sort=False):
        found = group.set_index("algorithm")
        where = dict(zip(GROUP, key))
        configuration = f"{where['model']} {where['image_size']}², batch {where['batch_size']}"
        peak = group["memory_measure"].iloc[0] != "step"
        for algorithm, figure, column, target, verdict in targets():
            value = found[column].get(algorithm, math.nan)
            if peak and column == "memory_ratio":
                figure = "peak memory (no step memory)"
            rows.append({"configuration": configuration, "figure": f"{algorithm_label(algorithm)} {figure} ÷ non-private",
                         "measured": _cell(value, found["oom"].get(algorithm, False)), "target": target,
                         "verdict": verdict(value), "device": where["device"]})
    return rows


def _cell(value: float, oom: bool = False) -> str:
    if oom:
        return "OOM"
    return "—" if pd.isna(value) else f"{value:.3g}"


def _interval_text(low: float, high: float) -> str:
    def fmt(v):
        return "∞" if math.isinf(v) else f"{v:.3g}"
    return fmt(low) if low == high else f"{fmt(low)} – {fmt(high)}"


# ---------------------------------------------------------------- the report


def render(bench: pd.DataFrame, maxbatch: pd.DataFrame, profiles: list[dict], before_after: pd.DataFrame | None,
           environments: list[dict], result_paths: list[str | Path],
           alternating: pd.DataFrame | None = None) -> str:
    """The Markdown report; `environments` and `result_paths` (every input result) make its header."""
    table = ratios(bench)
    parts = [_header(environments, result_paths),
             _targets_section(table, maxbatch), _alternating_section(alternating), _all_ratios_section(table),
             _before_after_section(before_after), _profile_section(profiles)]
    return "\n".join(parts)


def _header(environments: list[dict], paths: list[str | Path]) -> str:
    devices = sorted({device_label(e) for e in environments})
    commits = sorted({_short_commit(e.get("git_commit")) for e in environments})
    torch_versions = sorted({str(e.get("torch")) for e in environments})
    threads = sorted({str(e.get("threads")) for e in environments})
    dates = sorted({datetime.fromtimestamp(Path(p).stat().st_mtime, timezone.utc).date().isoformat()
                    for p in paths if Path(p).exists()})
    lines = [
        "# Performance report: private training vs non-private (CNN targets)",
        "",
        "Generated by the pipeline (`dpbench perf-report`) from this run's bench, maxbatch and profile "
        "results, `paper/perf_before_after.csv` and `paper/perf_ratios.csv`. Do not edit by hand. Every number below is measured "
        "by `dpbench bench`, `dpbench maxbatch` or `dpbench profile` in this run; the targets are the "
        "issue's and are reported here, not assumed: a target not met is listed as not met.",
        "",
        f"- Device: {'; '.join(devices) or '—'}",
        f"- Measured: {', '.join(dates) or '—'} (dates of the result files, UTC)",
        f"- dpbench commit: {', '.join(commits) or '—'}",
        f"- torch: {', '.join(torch_versions) or '—'}; threads per job: {', '.join(threads) or '—'}",
        "",
    ]
    return "\n".join(lines)


def _short_commit(commit: str | None) -> str:
    """The first 12 hex digits of a commit, '-dirty' kept (uncommitted changes were measured)."""
    if not commit:
        return "unknown"
    sha, dirty, _ = commit.partition("-dirty")
    return sha[:12] + dirty


def _targets_section(table: pd.DataFrame, maxbatch: pd.DataFrame) -> str:
    lines = [
        "## Targets",
        "",
        "Throughput = batch size / median step time, by **CPU time** on a CPU (images per CPU-second: "
        "insensitive to other work sharing the cores) and by wall time on CUDA. Memory = the step's own "
        "growth over the memory in use before it (`step_memory_bytes`: activations, gradients and the "
        "algorithm's buffers); where a result lacks it (not Linux), the overall peak and the row says so. "
        "Each ratio divides by `nonprivate` of the same model, input, batch size and device in this run. "
        "The project states the throughput and memory targets for vgg11 and resnet18 at 32×32, batch 32 and 64 "
        "on a CPU, and resnet18, vgg16 and vit_small at batch 256 on a GPU; the other configurations of "
        "this run are held to the same thresholds for comparison. One run per configuration scatters widely "
        "on a shared CPU (±15% and more): the verdicts to read are those over alternating runs in the next "
        "section, and `paper/performance_limits.md` explains, with profile evidence, the targets that are not "
        "met.",
        "",
    ]
    rows = target_rows(table)
    lines.append(_markdown(pd.DataFrame(rows)) if rows else
                 "Not measured: no configuration of this run has a `nonprivate` bench result.")
    lines += ["", f"### Max batch size, {MAXBATCH_MODEL}: Mixed ghost ÷ Opacus within one memory budget "
              f"(target ≥ {MAXBATCH_TARGET:g})", ""]
    found = maxbatch_ratios(maxbatch)
    if not found:
        lines.append(f"Not measured: this run has no max-batch search of both mixed_ghost and opacus on {MAXBATCH_MODEL}.")
    else:
        rows = [{"configuration": f"{r['model']} {r['image_size']}², budget "
                                  f"{'device memory' if pd.isna(r['memory_budget_bytes']) else _mib(r['memory_budget_bytes'])}",
                 "Mixed ghost": f"{r['mixed_ghost']}{' (the search limit)' if r['mixed_at_limit'] else ''}",
                 "Opacus": r["opacus"], "ratio": ("≥ " if r["mixed_at_limit"] else "") + _interval_text(r["low"], r["high"]),
                 "target": f"≥ {MAXBATCH_TARGET:g}", "verdict": maxbatch_verdict(r["low"], r["high"]),
                 "device": r["device"]} for r in found]
        lines += [_markdown(pd.DataFrame(rows)), "",
                  "A range is what the search's tolerance allows (each maximum may be up to tolerance − 1 "
                  "above the size found); a maximum at the search limit makes the ratio a lower bound."]
    return "\n".join(lines) + "\n"


def _markdown(frame: pd.DataFrame) -> str:
    """A Markdown table of already formatted cells (tabulate would reformat numbers otherwise)."""
    return frame.astype(str).to_markdown(index=False, disable_numparse=True)


def _mib(n: float) -> str:
    return f"{n / 2**20:.0f} MiB"


def _all_ratios_section(table: pd.DataFrame) -> str:
    lines = ["## Every algorithm vs non-private", ""]
    if table.empty:
        return "\n".join(lines + ["Not measured.", ""])
    shown = table.assign(
        algorithm=table["algorithm"].map(algorithm_label),
        throughput=[_cell(v, o) for v, o in zip(table["throughput"], table["oom"])],
        throughput_ratio=[_cell(v, o) for v, o in zip(table["throughput_ratio"], table["oom"])],
        memory_mb=table["memory_mb"].map(lambda v: "—" if pd.isna(v) else f"{v:.1f}"),
        memory_ratio=[_cell(v, o) for v, o in zip(table["memory_ratio"], table["oom"])],
    ).rename(columns={"throughput": "img/s", "throughput_ratio": "throughput ÷ non-private",
                      "memory_mb": "memory (MB)", "memory_ratio": "memory ÷ non-private", "memory_measure": "memory"})
    shown = shown.drop(columns=["oom"])
    lines += [_markdown(shown), "",
              "img/s: per CPU-second on a CPU, per second on CUDA. memory: `step` = the step's own growth, "
              "`peak` = the overall peak (no step memory recorded).", ""]
    return "\n".join(lines)


def _alternating_section(frame: pd.DataFrame | None) -> str:
    lines = ["## Targets over alternating runs", "",
             "From `paper/perf_ratios.csv` (`scripts/perf_before_after.py`, commands in `paper/perf_before_after.md`): "
             "each ratio is the median over rounds of the algorithm's run ÷ the `nonprivate` run of the same round, "
             "each run a fresh process with 1 thread, one or two runs at a time; step memory is median ÷ median. "
             "These are the issue's \"median ratios over alternating runs\"; the single runs above scatter more.", ""]
    if frame is None:
        return "\n".join(lines + ["Not measured: `paper/perf_ratios.csv` does not exist.", ""])
    rows = alternating_target_rows(frame)
    lines.append(_markdown(pd.DataFrame(rows)) if rows else "No target configuration in `paper/perf_ratios.csv`.")
    return "\n".join(lines + [""])


def _before_after_section(before_after: pd.DataFrame | None) -> str:
    lines = ["## Before and after the optimisation", ""]
    if before_after is None:
        return "\n".join(lines + ["Not measured: `paper/perf_before_after.csv` does not exist.", ""])
    frame = before_after.copy()
    frame["algorithm"] = frame["algorithm"].map(algorithm_label)
    for column in ("before_step_memory_bytes", "after_step_memory_bytes"):
        frame[column] = frame[column].map(lambda v: "—" if pd.isna(v) else f"{v / MB:.1f}")
    for column in ("before_img_per_cpu_s", "after_img_per_cpu_s", "speedup"):
        frame[column] = frame[column].map(lambda v: "—" if pd.isna(v) else f"{v:.3g}")
    frame = frame.rename(columns={"before_step_memory_bytes": "before step memory (MB)",
                                  "after_step_memory_bytes": "after step memory (MB)",
                                  "before_img_per_cpu_s": "before img/CPU-s", "after_img_per_cpu_s": "after img/CPU-s"})
    slower = before_after[before_after["speedup"] < 1]
    verdict = ("No algorithm is slower after the optimisation than before." if slower.empty else
               f"Slower after than before: {', '.join(f'{r.algorithm} ({r.model}, batch {r.batch_size}, ×{r.speedup:.3g})' for r in slower.itertuples())}.")
    lines += ["From `paper/perf_before_after.csv` (the same configurations measured at the commit before the "
              "optimisation and after it, throughput by CPU time, speedup = the median over rounds of after ÷ before, "
              "each pair measured side by side).", "",
              _markdown(frame), "", verdict, ""]
    return "\n".join(lines)


def _profile_section(profiles: list[dict]) -> str:
    lines = ["## Where the time goes: torch.profiler, one step per algorithm", ""]
    if not profiles:
        return "\n".join(lines + ["Not measured: no profile results in this run.", ""])
    lines += ["`dpbench profile`: warm-up steps, then one training step under `torch.profiler` in four regions "
              "(ms per step, wall time of the region as the profiler records it, profiler overhead included). "
              "Operators by self CPU time (time inside the operator, not its children); the autograd "
              "engine's `evaluate_function` entries also hold the Python hooks that run inside them.", ""]
    groups: dict[tuple, list[dict]] = {}
    for result in profiles:
        c = result["config"]
        key = (device_label(result["environment"]), c["model"], c["image_size"], c["batch_size"])
        groups.setdefault(key, []).append(result)
    for (device, model, size, batch), results in groups.items():
        results.sort(key=lambda r: algorithm_rank(r["config"]["algorithm"]))
        lines += [f"### {model} {size}², batch {batch}, {device}", "", _region_table(results), ""]
        for result in results:
            lines += [f"**{algorithm_label(result['config']['algorithm'])}**, top operators by self CPU time:", "",
                      _ops_table(result["top_ops"], "self_cpu"), ""]
            if result.get("top_cuda_ops"):
                lines += [f"**{algorithm_label(result['config']['algorithm'])}**, top operators by self CUDA time:", "",
                          _ops_table(result["top_cuda_ops"], "self_device"), ""]
    return "\n".join(lines)


def _region_table(results: list[dict]) -> str:
    reference = next((r for r in results if r["config"]["algorithm"] == REFERENCE), None)
    rows = []
    for r in results:
        row = {"algorithm": algorithm_label(r["config"]["algorithm"])}
        row |= {label: _ms(r["regions"].get(name)) for name, label in REGION_LABELS.items()}
        row["step (ms)"] = _ms(r["step_wall_ms"])
        row["step ÷ non-private"] = ("—" if reference is None else f"{r['step_wall_ms'] / reference['step_wall_ms']:.3g}")
        rows.append(row)
    return _markdown(pd.DataFrame(rows))


def _ms(value) -> str:
    return "—" if value is None else f"{value:.1f}"


TOP_OPS_SHOWN = 8


def _ops_table(ops: list[dict], prefix: str) -> str:
    rows = [{"operator": f"`{op['name']}`", "self ms": f"{op[f'{prefix}_ms']:.2f}",
             "share": f"{op[f'{prefix}_share']:.1%}", "calls": op["calls"]} for op in ops[:TOP_OPS_SHOWN]]
    return _markdown(pd.DataFrame(rows))
