#!/usr/bin/env python3
"""Issue 6's before/after table: every algorithm with the engine of a baseline commit and with the
engine of the working tree, side by side, measured by the same harness (`dpbench bench`).

The baseline's `dpbench/clipping` is extracted from git into an overlay package (every other module is
the working tree's), which `PYTHONPATH` puts in front of the installed one for the "before" runs; so
harness, models and memory measurement are identical and only the engine differs. Each run is a fresh
process with one torch thread; two run at a time on a two-core machine (the before and after runs of
the same algorithm side by side), the order rotating from round to round. Throughput is by CPU time
(robust to other load with one thread); memory is `step_memory_bytes`, the growth of one step.

    .venv/bin/python scripts/perf_before_after.py                     # baseline 837c1d2, resnet18+vgg11, B 32/64

Runs of configurations not measured again are kept from earlier invocations (results-dir/runs.csv), so
the table can be built in parts, e.g. every algorithm at batch 32, then the targets' algorithms at 64.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from io import BytesIO
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dpbench.clipping import ALGORITHMS  # noqa: E402
from dpbench.report.performance import RATIO_COLUMNS  # noqa: E402  (what perf-report --ratios reads)
from dpbench.results import environment, write_text_atomic  # noqa: E402

PARTS = [".venv/bin/python scripts/perf_before_after.py --batch-sizes 32  # opacus and opacus_ghost rows",
         ".venv/bin/python scripts/perf_before_after.py --batch-sizes 32 --algorithms ghost bk_ghost --rounds 2",
         ".venv/bin/python scripts/perf_before_after.py --batch-sizes 32 --algorithms per_sample fastgradclip --rounds 2",
         ".venv/bin/python scripts/perf_before_after.py --batch-sizes 32 64 --algorithms nonprivate mixed_ghost bk_mixed "
         "--rounds 3",
         ".venv/bin/python scripts/perf_before_after.py --batch-sizes 32 64 --algorithms nonprivate mixed_ghost bk_mixed "
         "--rounds 6 --jobs 1 --engines after  # ratio-only: one run at a time"]
BASELINE = "837c1d2"  # the engine as issue 6 found it (end of the engine issue, H200 run paper/gpu_h200_engine_v1.md)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--baseline", default=BASELINE, help=f"git commit of the 'before' engine (default {BASELINE})")
    p.add_argument("--models", nargs="+", default=["resnet18", "vgg11"])
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[32, 64])
    p.add_argument("--algorithms", nargs="+", default=list(ALGORITHMS), choices=list(ALGORITHMS))
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--jobs", type=int, default=2, help="runs at a time, one thread each (default 2)")
    p.add_argument("--engines", choices=["both", "after"], default="both",
                   help="'after': only the working tree's engine (more rounds for the ratios to nonprivate)")
    p.add_argument("--results-dir", type=Path, default=ROOT / "results" / "perf_before_after")
    p.add_argument("--out-csv", type=Path, default=ROOT / "paper" / "perf_before_after.csv")
    p.add_argument("--out-md", type=Path, default=ROOT / "paper" / "perf_before_after.md")
    p.add_argument("--out-ratios-csv", type=Path, default=ROOT / "paper" / "perf_ratios.csv",
                   help="the ratios to nonprivate, read by the pipeline's performance report")
    p.add_argument("--report-only", action="store_true", help="measure nothing: rebuild from results-dir/runs.csv")
    return p.parse_args(argv)


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip()


def overlay_with_baseline_engine(commit: str, into: Path) -> Path:
    """A `dpbench` package = the working tree's modules, with `clipping` taken from `commit` (less the
    complexity model, which reads the current engine's internals and is not needed to bench)."""
    package = into / "dpbench"
    shutil.copytree(ROOT / "dpbench", package, ignore=shutil.ignore_patterns("__pycache__", "clipping", "complexity.py"))
    archive = subprocess.run(["git", "archive", commit, "dpbench/clipping"], cwd=ROOT, check=True,
                             capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def run_one(args, engine: str, pythonpath: str | None, algorithm: str, model: str, batch: int, rnd: int) -> dict:
    out = args.results_dir / f"{model}_b{batch}_{algorithm}_{engine}_r{rnd}.json"
    command = [str(ROOT / ".venv" / "bin" / "dpbench"), "bench", "--algorithm", algorithm, "--model", model,
               "--batch-size", str(batch), "--image-size", "32", "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--threads", "1", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    # `python -m` puts the working directory first on sys.path: run "before" from inside the overlay
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=pythonpath or ROOT)
    row = {"model": model, "batch_size": batch, "algorithm": algorithm, "engine": engine, "round": rnd,
           "invocation": args.invocation, "jobs": args.jobs, "ratio_only": args.engines == "after"}
    if done.returncode != 0 or not out.exists():
        return {**row, "status": f"error: {done.stderr.strip().splitlines()[-1:]}"}
    result = json.loads(out.read_text())
    if result["oom"]:
        return {**row, "status": "oom"}
    return {**row, "status": "ok", "step_cpu_time_s": result["step_cpu_time_s"]["median"],
            "step_time_s": result["step_time_s"]["median"], "step_memory_bytes": result.get("step_memory_bytes"),
            "commit": result["environment"].get("git_commit")}


def measure(args, overlay: Path) -> pd.DataFrame:
    jobs = []
    for model in args.models:
        for batch in args.batch_sizes:
            for rnd in range(args.rounds):
                shift = rnd % len(args.algorithms)
                for algorithm in args.algorithms[shift:] + args.algorithms[:shift]:
                    engines = ("before", "after") if rnd % 2 == 0 else ("after", "before")
                    for engine in (engines if args.engines == "both" else ("after",)):
                        jobs.append((engine, str(overlay) if engine == "before" else None, algorithm, model, batch, rnd))
    rows = []
    with ThreadPoolExecutor(args.jobs) as pool:
        for row in pool.map(lambda job: run_one(args, *job), jobs):
            rows.append(row)
            print(f"[{datetime.now():%H:%M:%S}] {row['model']} b{row['batch_size']} {row['algorithm']} "
                  f"{row['engine']}: {row['status']} {row.get('step_cpu_time_s', float('nan')):.3f} s", flush=True)
    return pd.DataFrame(rows)


def successful_runs(raw: pd.DataFrame) -> pd.DataFrame:
    """The runs that measured, with their throughput; runs of earlier versions of this script lack the
    part's invocation, jobs and ratio-only flag (one unnamed part, two at a time, both engines)."""
    ok = raw[raw["status"] == "ok"].copy()
    defaults = {"invocation": "earlier", "jobs": 2, "ratio_only": False}
    for column, default in defaults.items():
        ok[column] = ok[column].fillna(default) if column in ok else default
    ok = ok.astype({"jobs": int, "ratio_only": bool})
    ok["img_per_cpu_s"] = ok["batch_size"] / ok["step_cpu_time_s"]
    return ok


def _in_algorithm_order(table: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    order = {name: i for i, name in enumerate(ALGORITHMS)}
    return table.sort_values(columns, key=lambda c: c.map(order) if c.name == "algorithm" else c)


def summarise(ok: pd.DataFrame, baseline: str, after_commit: str) -> pd.DataFrame:
    """Median over rounds per (model, batch, algorithm, engine), before and after side by side (runs of
    parts that measured both engines only); speedup = median of after ÷ before within a round."""
    ok = ok[~ok["ratio_only"]]
    rounds = ok.pivot_table(index=["model", "batch_size", "algorithm", "invocation", "round"], columns="engine",
                            values="img_per_cpu_s")
    paired = (rounds["after"] / rounds["before"]).dropna().groupby(["model", "batch_size", "algorithm"]).median()
    med = ok.groupby(["model", "batch_size", "algorithm", "engine"]).agg(
        img_per_cpu_s=("img_per_cpu_s", "median"), step_memory_bytes=("step_memory_bytes", "median"),
        runs=("img_per_cpu_s", "size")).reset_index()
    rows = []
    for (model, batch, algorithm), g in med.groupby(["model", "batch_size", "algorithm"], sort=False):
        by = {e: r for e, r in zip(g["engine"], g.to_dict("records"))}
        b, a = by.get("before"), by.get("after")
        rows.append({"model": model, "image_size": 32, "batch_size": batch, "algorithm": algorithm,
                     "before_img_per_cpu_s": b and b["img_per_cpu_s"], "after_img_per_cpu_s": a and a["img_per_cpu_s"],
                     "speedup": paired.get((model, batch, algorithm)),
                     "before_step_memory_bytes": b and b["step_memory_bytes"],
                     "after_step_memory_bytes": a and a["step_memory_bytes"],
                     "before_commit": baseline, "after_commit": after_commit,
                     "before_runs": b and b["runs"], "after_runs": a and a["runs"]})
    return _in_algorithm_order(pd.DataFrame(rows), ["model", "batch_size", "algorithm"])


def paired_ratios(ok: pd.DataFrame) -> pd.DataFrame:
    """The working tree's throughput and step memory ÷ nonprivate's, per number of runs at a time (`jobs`).
    Throughput is paired within a round of one invocation (median of those ratios, their range, how many);
    a configuration without such pairs (measured in another part than nonprivate) falls back to median ÷
    median, marked 'unpaired'."""
    ok = ok[ok["engine"] == "after"]
    keys = ["model", "batch_size", "invocation", "round"]
    base = ok[ok["algorithm"] == "nonprivate"].set_index(keys)["img_per_cpu_s"]
    paired = ok.join(base.rename("nonprivate_img_per_cpu_s"), on=keys)
    paired["ratio"] = paired["img_per_cpu_s"] / paired["nonprivate_img_per_cpu_s"]
    config = ["model", "batch_size", "jobs"]
    medians = ok.groupby(config + ["algorithm"])[["img_per_cpu_s", "step_memory_bytes"]].median()
    rows = []
    for (model, batch, jobs, algorithm), g in paired.groupby(config + ["algorithm"]):
        if (model, batch, jobs, "nonprivate") not in medians.index:
            continue
        base_median = medians.loc[(model, batch, jobs, "nonprivate")]
        mine = medians.loc[(model, batch, jobs, algorithm)]
        ratios = g["ratio"].dropna()
        row = {"model": model, "batch_size": batch, "jobs": jobs, "algorithm": algorithm,
               "memory_ratio": mine["step_memory_bytes"] / base_median["step_memory_bytes"]}
        if len(ratios):
            row.update(throughput_ratio=ratios.median(), ratio_min=ratios.min(), ratio_max=ratios.max(),
                       paired=True, rounds=len(ratios))
        else:
            row.update(throughput_ratio=mine["img_per_cpu_s"] / base_median["img_per_cpu_s"], ratio_min=None,
                       ratio_max=None, paired=False, rounds=len(g))
        rows.append(row)
    if not rows:  # no part measured nonprivate: nothing to divide by
        return pd.DataFrame(columns=RATIO_COLUMNS)
    return _in_algorithm_order(pd.DataFrame(rows), ["model", "batch_size", "jobs", "algorithm"])


def markdown(table: pd.DataFrame, ratios: pd.DataFrame, args, env: dict, started: str) -> str:
    lines = [f"# Engine before / after issue 6 (CPU, 1 thread per run)", "",
             f"Measured {started} on {env['device_name']} ({os.cpu_count()} cores), torch {env['torch']}; "
             f"before = engine of `{args.baseline}`, after = `{table['after_commit'].iloc[0]}`; "
             f"{args.warmup} warm-up + {args.steps} timed steps per run (`runs`: how many, alternating), each run a "
             f"fresh process, one or two at a time (`--jobs`). Commands (the table was built in these parts; a part "
             f"replaces the earlier runs of the configurations it measures, a ratio-only part (`--engines after`) "
             f"only earlier ratio-only runs; this table uses the parts that measured both engines):", "",
             *[f"    {c}" for c in PARTS], "",
             "Throughput = images per CPU-second of the step (median over rounds; speedup: the median of after ÷ "
             "before within a round, the two runs taken side by side); memory = growth of one step "
             "over the memory in use before it (`step_memory_bytes`).", ""]
    if args.baseline == BASELINE:
        lines += ["`nonprivate` differs because the baseline still drew Gaussian noise for it (`add_noise` became "
                  "a no-op for plain training in 5e0240c): N(0, σ²) for every parameter costs ~45 ms for VGG11's "
                  "9.2M and ~55 ms for ResNet18's 11.2M on this CPU.", ""]
    view = table.assign(
        before=table["before_img_per_cpu_s"].map(lambda v: f"{v:.1f}" if pd.notna(v) else "n/a"),
        after=table["after_img_per_cpu_s"].map(lambda v: f"{v:.1f}" if pd.notna(v) else "n/a"),
        speedup=table["speedup"].map(lambda v: f"{v:.2f}x" if pd.notna(v) else "n/a"),
        mem_before=table["before_step_memory_bytes"].map(lambda v: f"{v / 2**20:.0f} MiB" if pd.notna(v) else "n/a"),
        mem_after=table["after_step_memory_bytes"].map(lambda v: f"{v / 2**20:.0f} MiB" if pd.notna(v) else "n/a"))
    view["runs"] = [f"{b:.0f} / {a:.0f}" if pd.notna(b) and pd.notna(a) else "n/a"
                    for b, a in zip(table["before_runs"], table["after_runs"])]
    lines += [view[["model", "batch_size", "algorithm", "before", "after", "speedup", "mem_before", "mem_after", "runs"]]
              .to_markdown(index=False), ""]
    ratio_rows = [{"model": r.model, "batch_size": r.batch_size, "runs at a time": r.jobs, "algorithm": r.algorithm,
                   "throughput ÷ nonprivate": f"{r.throughput_ratio:.2f}",
                   "range over rounds": f"{r.ratio_min:.2f}–{r.ratio_max:.2f}" if r.paired else "unpaired",
                   "rounds": r.rounds,
                   "step memory ÷ nonprivate": f"{r.memory_ratio:.2f}" if pd.notna(r.memory_ratio) else "n/a"}
                  for r in ratios.itertuples()]
    lines += ["## After: ratios to nonprivate", "",
              "Throughput: the median over rounds of the ratio within a round (the algorithm's run and the "
              "`nonprivate` run of the same model, batch size, part and round, taken minutes apart at most), with "
              "the range of those ratios ('unpaired': measured in another part than `nonprivate`, median ÷ median). "
              "Step memory: median memory ÷ median memory. Separately for one and two runs at a time: on this "
              "2-vCPU machine the ratios differ between the two (mostly lower with one run at a time) and spread "
              "widely from round to round: read the range, not only the median.", "",
              pd.DataFrame(ratio_rows).to_markdown(index=False), ""]
    return "\n".join(lines)


def measured_when(raw: pd.DataFrame, now: str) -> str:
    """When the runs were made (the start times of their parts), not when this report is written; `now`
    for runs that lack them."""
    parts = sorted(raw["invocation"].dropna().unique()) if "invocation" in raw else []
    stamps, others = [v for v in parts if v[:1].isdigit()], [v for v in parts if not v[:1].isdigit()]
    if not stamps:
        return now
    notes = (["the parts' start times"] if len(stamps) > 1 else []) + [f"older runs: {', '.join(others)}"] * bool(others)
    when = stamps[0] if len(stamps) == 1 else f"{stamps[0]} – {stamps[-1]}"
    return f"{when} ({'; '.join(notes)})" if notes else when


def main(argv=None) -> int:
    args = parse_args(argv)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    args.invocation = started
    after_commit = git("rev-parse", "--short=7", "HEAD") + ("-dirty" if git("status", "--porcelain", "dpbench") else "")
    runs_csv = args.results_dir / "runs.csv"
    if args.report_only:
        raw = pd.DataFrame(columns=["model", "batch_size", "algorithm", "engine"])
    else:
        with tempfile.TemporaryDirectory(prefix="dpbench-baseline-") as tmp:
            overlay = overlay_with_baseline_engine(args.baseline, Path(tmp))
            raw = measure(args, overlay)
    if runs_csv.exists():  # a part replaces the earlier runs of its kind (both engines / ratio-only) and configurations
        earlier = pd.read_csv(runs_csv)
        earlier["ratio_only"] = earlier.get("ratio_only", pd.Series(False, index=earlier.index)).fillna(False).astype(bool)
        columns = ["model", "batch_size", "algorithm"]
        keys = set(zip(*(raw[c] for c in columns)))
        earlier = earlier[[k not in keys or ratio_only != (args.engines == "after")
                           for k, ratio_only in zip(zip(*(earlier[c] for c in columns)), earlier["ratio_only"])]]
        raw = pd.concat([earlier, raw], ignore_index=True)
    write_text_atomic(runs_csv, raw.to_csv(index=False))
    measured_at = raw.loc[(raw["engine"] == "after") & raw["commit"].notna(), "commit"] if "commit" in raw else []
    after_commit = ", ".join(sorted({c[:7] + ("-dirty" if c.endswith("dirty") else "") for c in measured_at})) or after_commit
    ok = successful_runs(raw)
    table = summarise(ok, args.baseline, after_commit)
    args.out_csv.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out_csv, table.to_csv(index=False))
    ratios = paired_ratios(ok)
    write_text_atomic(args.out_ratios_csv, ratios.to_csv(index=False))
    write_text_atomic(args.out_md, markdown(table, ratios, args, environment("cpu", "float32", 0),
                                            measured_when(raw, started)))
    print(f"wrote {args.out_csv}, {args.out_ratios_csv} and {args.out_md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
