#!/usr/bin/env python3
"""CPU reference benchmark: every algorithm against `nonprivate`, side by side in one run.

For each model and batch size, runs `dpbench bench` (each measurement in its own fresh process) once per
algorithm, alternating the algorithms (the order rotates from one round to the next), and writes the
throughput and peak-memory ratios to `nonprivate` of the same configuration as CSV and Markdown, with
the command, the date, the machine and the load average seen around each run.

    .venv/bin/python scripts/cpu_reference_bench.py            # cnn, resnet18, vgg11; batch 32 and 128

Throughput is reported two ways: by wall-clock time (what `dpbench bench` calls throughput) and by the
CPU time of the measuring process. With one torch thread (the default here) the CPU time of a step is
what its wall time would be on an otherwise idle core, so its ratios survive other jobs on a shared
machine; wall-clock ratios do not (with two threads on a busy two-core machine, OpenMP threads wait for
each other and one run can be 3x slower than the next). On an idle machine both agree; `cpu_share`
(CPU time ÷ wall time × threads) says how close each run came to that.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from dpbench.cli import main as dpbench_main
from dpbench.clipping import ALGORITHMS
from dpbench.measure.rounds import Run, alternating_rounds, run_rounds
from dpbench.report.ratios import ratio_to
from dpbench.report.targets import MEMORY_TARGET, THROUGHPUT_TARGETS
from dpbench.results import environment, write_text_atomic

ROOT = Path(__file__).resolve().parent.parent

# The CNN performance targets (dpbench/report/targets.py) and the first CPU target against Opacus' ghost
# mode, reported next to the measurements; never asserted.
TARGETS = [
    *((f"{name} throughput ≥ {target}× nonprivate", lambda r, name=name: r["throughput_ratio"].get(name), target, ">=")
      for name, target in THROUGHPUT_TARGETS.items()),
    (f"mixed_ghost peak memory ≤ {MEMORY_TARGET}× nonprivate", lambda r: r["memory_ratio"].get("mixed_ghost"),
     MEMORY_TARGET, "<="),
    ("mixed_ghost ≥ 1.5× opacus_ghost throughput (CNNs)",
     lambda r: _ratio(r["throughput"].get("mixed_ghost"), r["throughput"].get("opacus_ghost")), 1.5, ">="),
]


def _ratio(a, b):
    return a / b if a is not None and b else None


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["cnn", "resnet18", "vgg11"])
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[32, 128])
    p.add_argument("--algorithms", nargs="+", default=list(ALGORITHMS), choices=list(ALGORITHMS))
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1; see above)")
    p.add_argument("--rounds", type=int, default=2, help="passes over the algorithms per configuration (default 2)")
    p.add_argument("--skip", nargs="*", default=[], metavar="ALGORITHM:MODEL:BATCH=REASON",
                   help="configurations not to run, recorded as skipped with the reason")
    p.add_argument("--results-dir", type=Path, default=ROOT / "results" / "cpu_reference")
    p.add_argument("--out-csv", type=Path, default=ROOT / "paper" / "cpu_reference.csv")
    p.add_argument("--out-md", type=Path, default=ROOT / "paper" / "cpu_reference.md")
    p.add_argument("--report-only", action="store_true",
                   help="measure nothing: rebuild the CSV and Markdown from the runs in --results-dir")
    return p.parse_args(argv)


def parse_skips(entries: list[str]) -> dict[tuple[str, str, int], str]:
    skips = {}
    for entry in entries:
        key, _, reason = entry.partition("=")
        algorithm, model, batch = key.split(":")
        skips[(algorithm, model, int(batch))] = reason or "skipped by request"
    return skips


def run_one(args, algorithm: str, model: str, batch: int, out: Path) -> dict:
    """One `dpbench bench` run; returns the row of the raw table."""
    argv = ["bench", "--algorithm", algorithm, "--model", model, "--batch-size", str(batch),
            "--image-size", str(args.image_size), "--num-classes", str(args.num_classes), "--steps", str(args.steps),
            "--warmup", str(args.warmup), "--threads", str(args.threads), "--out", str(out)]
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    code = dpbench_main(argv)
    row = {"model": model, "batch_size": batch, "algorithm": algorithm, "wall_s": time.perf_counter() - started,
           "load_before": load_before, "load_after": os.getloadavg()[0], "json": str(out.relative_to(ROOT))
           if out.is_relative_to(ROOT) else str(out)}
    if code != 0 or not out.exists():
        return {**row, "status": f"error (exit {code})"}
    result = json.loads(out.read_text())
    if result["oom"]:
        return {**row, "status": "oom", "note": result["error"]}
    cpu_time = result["step_cpu_time_s"]["median"]
    cpu_share = cpu_time / (result["step_time_s"]["median"] * args.threads)
    return {**row, "status": "ok", "step_time_s": result["step_time_s"]["median"], "cpu_share": cpu_share,
            "step_cpu_time_s": cpu_time, "cpu_throughput_img_s": batch / cpu_time,
            "throughput_img_s": result["throughput_img_s"]["median"], "peak_memory_bytes": result["peak_memory_bytes"],
            "memory_method": result["memory_method"]}


def measure(args) -> pd.DataFrame:
    skips = parse_skips(args.skip)
    runs = alternating_rounds([(m, b) for m in args.models for b in args.batch_sizes], args.algorithms, args.rounds)

    def run(r: Run) -> dict | None:
        model, batch = r.configuration
        if (r.algorithm, model, batch) in skips:  # recorded once, in the first round
            return None if r.round else {"model": model, "batch_size": batch, "algorithm": r.algorithm,
                                         "status": "skipped", "note": skips[(r.algorithm, model, batch)]}
        row = run_one(args, r.algorithm, model, batch,
                      args.results_dir / f"{model}_b{batch}_{r.algorithm}_r{r.round}.json")
        print(f"[{datetime.now():%H:%M:%S}] {model} b{batch} {r.algorithm}: {row['status']} "
              f"({row['wall_s']:.0f} s, load {row['load_before']:.1f})", flush=True)
        return {**row, "round": r.round}

    return pd.DataFrame([row for row in run_rounds(runs, run) if row is not None])


def summarise(raw: pd.DataFrame, algorithms: list[str]) -> pd.DataFrame:
    """Per (model, batch, algorithm): median over rounds, and the ratios to nonprivate."""
    out = []
    for (model, batch), group in raw.groupby(["model", "batch_size"], sort=False):
        stats = {}
        for algorithm in algorithms:
            runs = group[group["algorithm"] == algorithm]
            ok = runs[runs["status"] == "ok"]
            if len(ok):
                stats[algorithm] = {"status": "ok", "rounds": len(ok),
                                    "step_time_s": statistics.median(ok["step_time_s"]),
                                    "throughput_img_s": statistics.median(ok["throughput_img_s"]),
                                    "cpu_throughput_img_s": statistics.median(ok["cpu_throughput_img_s"]),
                                    "peak_memory_bytes": int(statistics.median(ok["peak_memory_bytes"])),
                                    "cpu_share": statistics.median(ok["cpu_share"])}
            elif len(runs):
                first = runs.iloc[0]
                stats[algorithm] = {"status": first["status"], "rounds": 0,
                                    "note": first.get("note") if isinstance(first.get("note"), str) else None}
        for algorithm, s in stats.items():
            row = {"model": model, "batch_size": batch, "algorithm": algorithm, **s}
            if s["status"] == "ok" and stats.get("nonprivate", {}).get("status") == "ok":
                row.update(_round_ratios(group, algorithm))
            out.append(row)
    return pd.DataFrame(out)


def _round_ratios(group: pd.DataFrame, algorithm: str) -> dict:
    """Ratios to the nonprivate run of the same round; median over rounds, and their range."""
    ok = group[group["status"] == "ok"]
    out = {}
    for name, column in (("throughput_ratio", "throughput_img_s"), ("cpu_throughput_ratio", "cpu_throughput_img_s"),
                         ("memory_ratio", "peak_memory_bytes")):
        per_round = ratio_to(ok, column, ["round"])[ok["algorithm"] == algorithm].dropna().tolist()
        out[name] = statistics.median(per_round)
        out[f"{name}_min"], out[f"{name}_max"] = min(per_round), max(per_round)
    return out


def pivot(summary: pd.DataFrame, algorithms: list[str], cell) -> pd.DataFrame:
    """One row per (model, batch), one column per algorithm, `cell(row)` or the run's status."""
    rows = {}
    for _, r in summary.iterrows():
        entry = rows.setdefault((r["model"], r["batch_size"]), {"model": r["model"], "batch": r["batch_size"]})
        entry[r["algorithm"]] = cell(r) if r["status"] == "ok" else r["status"]
    return pd.DataFrame(list(rows.values())).reindex(columns=["model", "batch", *algorithms])


def _with_range(row, name: str) -> str:
    """'0.52' for one round, '0.52 (0.48–0.56)' for several."""
    text = f"{row[name]:.2f}"
    if row["rounds"] > 1:
        text += f" ({row[name + '_min']:.2f}–{row[name + '_max']:.2f})"
    return text


def markdown(summary: pd.DataFrame, raw: pd.DataFrame, args, command: str, started: datetime, env: dict,
             run_commits: str) -> str:
    algorithms = args.algorithms
    ratios = pivot(summary, algorithms, lambda r: f"{_with_range(r, 'cpu_throughput_ratio')} / {_with_range(r, 'memory_ratio')}")
    wall = pivot(summary, algorithms, lambda r: _with_range(r, "throughput_ratio"))
    cpu_abs = pivot(summary, algorithms, lambda r: f"{r['cpu_throughput_img_s']:.1f}")
    wall_abs = pivot(summary, algorithms, lambda r: f"{r['throughput_img_s']:.1f}")
    memory = pivot(summary, algorithms, lambda r: f"{r['peak_memory_bytes'] / 2**20:.0f}")
    return "\n".join([
        "# CPU reference: every algorithm against non-private training",
        "",
        f"Measured {started:%Y-%m-%d %H:%M} UTC on {env['device_name']} ({os.cpu_count()} cores, "
        f"{args.threads} torch thread(s) per run), torch {env['torch']}, opacus {env['opacus']}; dpbench at "
        f"{run_commits}. Input {args.image_size}×{args.image_size}, {args.num_classes} classes, float32; "
        f"{args.warmup} warm-up + {args.steps} timed full training steps per run (forward, engine backward, noise, "
        f"SGD step) with `dpbench bench`, each run in a fresh process; {args.rounds} round(s), algorithms "
        "alternating. Command:",
        "",
        f"    {command}",
        "",
        "## Ratios to nonprivate: throughput (CPU time) / peak memory",
        "",
        "Each ratio compares a run with the nonprivate run of the same round; the median over rounds is shown, "
        "with the range over rounds in parentheses when there are several.",
        "",
        "Throughput ratio = median images per CPU-second of the step ÷ nonprivate's (with one thread, the "
        "throughput the run would have on an idle core; see the wall-clock ratios below). Memory ratio = peak "
        "memory of the step ÷ nonprivate's (CPU: peak RSS of the fresh process minus its baseline after the "
        "imports, so the model, its gradients and the activations are included).",
        "",
        ratios.to_markdown(index=False),
        "",
        "## Targets (the project's first CPU targets; for later optimisation work, not asserted)",
        "",
        *target_lines(summary),
        "",
        "## Throughput ratios by wall-clock time",
        "",
        wall.to_markdown(index=False),
        "",
        f"Load average (1 min) seen before the runs: min {raw['load_before'].min():.1f}, median "
        f"{raw['load_before'].median():.1f}, max {raw['load_before'].max():.1f} on {os.cpu_count()} cores. "
        "CPU share of the timed steps (process CPU time ÷ (wall time × threads); 1 = the run had its cores to "
        f"itself): min {raw['cpu_share'].min():.2f}, median {raw['cpu_share'].median():.2f}, max "
        f"{raw['cpu_share'].max():.2f}.",
        "",
        "## Median throughput (images per CPU-second / per wall-second)",
        "",
        cpu_abs.to_markdown(index=False),
        "",
        wall_abs.to_markdown(index=False),
        "",
        "## Peak memory (MiB, peak RSS − baseline)",
        "",
        memory.to_markdown(index=False),
        "",
        f"The same numbers per algorithm: `{args.out_csv.name}` beside this file.",
        "",
    ])


def target_lines(summary: pd.DataFrame) -> list[str]:
    lines = []
    for (model, batch), group in summary.groupby(["model", "batch_size"], sort=False):
        ok = group[group["status"] == "ok"].set_index("algorithm")
        record = {"throughput_ratio": ok["cpu_throughput_ratio"].dropna().to_dict(),
                  "memory_ratio": ok["memory_ratio"].dropna().to_dict(),
                  "throughput": ok["cpu_throughput_img_s"].to_dict()}
        parts = []
        for name, get, bound, op in TARGETS:
            value = get(record)
            if value is None:
                continue
            met = value >= bound if op == ">=" else value <= bound
            parts.append(f"{name}: {value:.2f} ({'met' if met else 'not met'})")
        lines.append(f"- {model}, batch {batch}: " + "; ".join(parts))
    return lines


def commits(raw: pd.DataFrame) -> str:
    """The dpbench commits the runs were measured at, from their result files."""
    counts: dict[str, int] = {}
    for path in raw["json"].dropna():
        path = Path(path) if Path(path).is_absolute() else ROOT / path
        if path.exists():
            commit = json.loads(path.read_text())["environment"]["git_commit"]
            counts[commit] = counts.get(commit, 0) + 1
    return ", ".join(f"`{c[:12]}{'-dirty' if c.endswith('-dirty') else ''}` ({n} runs)" for c, n in counts.items())


def main(argv=None) -> int:
    args = parse_args(argv)
    info_path, runs_path = args.results_dir / "run_info.json", args.results_dir / "runs.csv"
    if args.report_only:
        info = json.loads(info_path.read_text())
        raw = pd.read_csv(runs_path)
    else:
        info = {"command": ".venv/bin/python scripts/cpu_reference_bench.py " +
                " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])),
                "started": datetime.now(timezone.utc).isoformat(timespec="minutes"),
                "environment": {**environment("cpu", "float32", 0), "threads": args.threads}}
        args.results_dir.mkdir(parents=True, exist_ok=True)
        info_path.write_text(json.dumps(info, indent=1))
        raw = measure(args)
        raw.to_csv(runs_path, index=False)
    summary = summarise(raw, args.algorithms)
    columns = ["model", "batch_size", "algorithm", "status", "rounds", "step_time_s", "throughput_img_s",
               "cpu_throughput_img_s", "peak_memory_bytes", "cpu_throughput_ratio", "cpu_throughput_ratio_min",
               "cpu_throughput_ratio_max", "throughput_ratio", "throughput_ratio_min", "throughput_ratio_max",
               "memory_ratio", "memory_ratio_min", "memory_ratio_max", "cpu_share", "note"]
    summary = summary.reindex(columns=columns)
    started = datetime.fromisoformat(info["started"])
    summary["date"] = f"{started:%Y-%m-%d}"
    summary["command"] = info["command"].strip()
    write_text_atomic(args.out_csv, summary.to_csv(index=False))
    write_text_atomic(args.out_md, markdown(summary, raw, args, info["command"].strip(), started,
                                            info["environment"], commits(raw)))
    print(f"wrote {args.out_csv} and {args.out_md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
