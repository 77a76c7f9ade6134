#!/usr/bin/env python3
"""A before/after table of the clipping engine: every algorithm with the engine of a baseline commit and
with the engine of the working tree, side by side, measured by the same harness (`dpbench bench`).

The baseline's `dpbench/clipping` is extracted from git into an overlay package (every other module is
the working tree's), which `PYTHONPATH` puts in front of the installed one for the "before" runs; so
harness, models and memory measurement are identical and only the engine differs. Each run is a fresh
process with one torch thread; two run at a time on a two-core machine (the before and after runs of
the same algorithm side by side), the order rotating from round to round. Throughput is by CPU time
(robust to other load with one thread); memory is `step_memory_bytes`, the growth of one step.

    .venv/bin/python scripts/perf_before_after.py                     # baseline 837c1d2, resnet18+vgg11, B 32/64

Runs of configurations not measured again are kept from earlier invocations (results-dir/runs.csv), so
the table can be built in parts, e.g. every algorithm at batch 32, then the targets' algorithms at 64.

The two engines can also be measured in separate parts, e.g. the baseline's now (`--engines before`)
and the working tree's once it is ready (`--engines after`). A table with such a baseline-only part
pairs its before and after runs across parts (speedup = median ÷ median, column `paired` false) and
gives the ratios to nonprivate of both engines (columns `engine`, `image_size` and `status`, which
names the error of a configuration whose runs all failed). Vision transformers at their own input
size (224², CrossViT 240²), in a table of their own:

    .venv/bin/python scripts/perf_before_after.py --baseline 25102c2 --engines before --jobs 1 --rounds 1 \
        --models deit_tiny_patch16_224 crossvit_tiny_240 deit_small_patch16_224 beit_base_patch16_224 \
        --image-size model --batch-sizes 8 16 --algorithms nonprivate mixed_ghost bk_mixed opacus opacus_ghost \
        --steps 2 --warmup 1 --results-dir results/vit_before_after --out-csv paper/vit_before_after.csv \
        --out-md paper/vit_before_after.md --out-ratios-csv paper/vit_ratios.csv
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
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
from dpbench.measure.cli_args import positive_int  # noqa: E402
from dpbench.report.load import RATIO_COLUMNS  # noqa: E402  (what perf-report --ratios reads)
from dpbench.report.ratios import ratio_to  # noqa: E402
from dpbench.results import environment, write_text_atomic  # noqa: E402

PARTS = [".venv/bin/python scripts/perf_before_after.py --batch-sizes 32  # opacus and opacus_ghost rows",
         ".venv/bin/python scripts/perf_before_after.py --batch-sizes 32 --algorithms ghost bk_ghost --rounds 2",
         ".venv/bin/python scripts/perf_before_after.py --batch-sizes 32 --algorithms per_sample fastgradclip --rounds 2",
         ".venv/bin/python scripts/perf_before_after.py --batch-sizes 32 64 --algorithms nonprivate mixed_ghost bk_mixed "
         "--rounds 3",
         ".venv/bin/python scripts/perf_before_after.py --batch-sizes 32 64 --algorithms nonprivate mixed_ghost bk_mixed "
         "--rounds 6 --jobs 1 --engines after  # ratio-only: one run at a time"]
BASELINE = "837c1d2"  # the first engine, before the CPU optimisation (end of the engine work, H200 run paper/gpu_h200_engine_v1.md)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--baseline", default=BASELINE, help=f"git commit of the 'before' engine (default {BASELINE})")
    p.add_argument("--models", nargs="+", default=["resnet18", "vgg11"])
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[32, 64])
    p.add_argument("--image-size", type=image_size, default=32,
                   help="input height = width of every model, or 'model': each model's own (timm's default "
                        "configuration: 224 for DeiT and BEiT, 240 for CrossViT) (default 32)")
    p.add_argument("--algorithms", nargs="+", default=list(ALGORITHMS), choices=list(ALGORITHMS))
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--jobs", type=int, default=2, help="runs at a time, one thread each (default 2)")
    p.add_argument("--engines", choices=["both", "after", "before"], default="both",
                   help="'after': only the working tree's engine (more rounds for the ratios to nonprivate); "
                        "'before': only the baseline's (its after runs come from a later 'after' part)")
    p.add_argument("--results-dir", type=Path, default=ROOT / "results" / "perf_before_after")
    p.add_argument("--out-csv", type=Path, default=ROOT / "paper" / "perf_before_after.csv")
    p.add_argument("--out-md", type=Path, default=ROOT / "paper" / "perf_before_after.md")
    p.add_argument("--out-ratios-csv", type=Path, default=ROOT / "paper" / "perf_ratios.csv",
                   help="the ratios to nonprivate, read by the pipeline's performance report")
    p.add_argument("--report-only", action="store_true", help="measure nothing: rebuild from results-dir/runs.csv")
    return p.parse_args(argv)


def image_size(text: str) -> int | str:
    """argparse type: a positive number of pixels, or 'model' (each model's default input size)."""
    return text if text == "model" else positive_int(text)


def size_of(args, model: str) -> int:
    """The input size `model` is measured at."""
    if args.image_size != "model":
        return args.image_size
    from dpbench.models import default_image_size

    return default_image_size(model)


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
    size = size_of(args, model)
    command = [str(ROOT / ".venv" / "bin" / "dpbench"), "bench", "--algorithm", algorithm, "--model", model,
               "--batch-size", str(batch), "--image-size", str(size), "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--threads", "1", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    out.unlink(missing_ok=True)  # a failed run must not leave an earlier invocation's result to be read
    # `python -m` puts the working directory first on sys.path: run "before" from inside the overlay
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=pythonpath or ROOT)
    row = {"model": model, "batch_size": batch, "algorithm": algorithm, "engine": engine, "round": rnd,
           "invocation": args.invocation, "jobs": args.jobs, "ratio_only": args.engines == "after",
           "engines": args.engines, "image_size": size, "baseline": args.baseline, "command": args.command}
    if done.returncode != 0 or not out.exists():
        last = done.stderr.strip().splitlines()[-1:] or [f"exit status {done.returncode}, no result written"]
        return {**row, "status": f"error: {last[0]}"}
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
                    for engine in (engines if args.engines == "both" else (args.engines,)):
                        jobs.append((engine, str(overlay) if engine == "before" else None, algorithm, model, batch, rnd))
    rows = []
    with ThreadPoolExecutor(args.jobs) as pool:
        for row in pool.map(lambda job: run_one(args, *job), jobs):
            rows.append(row)
            print(f"[{datetime.now():%H:%M:%S}] {row['model']} b{row['batch_size']} {row['algorithm']} "
                  f"{row['engine']}: {row['status']} {row.get('step_cpu_time_s', float('nan')):.3f} s", flush=True)
    return pd.DataFrame(rows)


def with_defaults(raw: pd.DataFrame) -> pd.DataFrame:
    """Every run with the columns of this version of the script. Runs of earlier versions lack the part's
    invocation, jobs and ratio-only flag (one unnamed part, two at a time, both engines), the engines the
    part measured (a ratio-only part measured 'after', any other both), the image size (32) and the
    command."""
    raw = raw.copy()
    defaults = {"invocation": "earlier", "jobs": 2, "ratio_only": False, "image_size": 32}
    for column, default in defaults.items():
        raw[column] = raw[column].fillna(default) if column in raw else default
    raw = raw.astype({"jobs": int, "ratio_only": bool, "image_size": int})
    kind = raw["ratio_only"].map({True: "after", False: "both"})
    raw["engines"] = raw["engines"].fillna(kind) if "engines" in raw else kind
    return raw


def successful_runs(raw: pd.DataFrame) -> pd.DataFrame:
    """The runs that measured, with their throughput (images per CPU-second)."""
    ok = with_defaults(raw[raw["status"] == "ok"])
    ok["img_per_cpu_s"] = ok["batch_size"] / ok["step_cpu_time_s"]
    return ok


def _in_algorithm_order(table: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    order = {name: i for i, name in enumerate(ALGORITHMS)}
    return table.sort_values(columns, key=lambda c: c.map(order) if c.name == "algorithm" else c)


CONFIGURATION = ["model", "batch_size", "algorithm"]


def _configurations(frame: pd.DataFrame) -> list[tuple]:
    return list(zip(*(frame[c] for c in CONFIGURATION)))


def summarise(ok: pd.DataFrame, baseline: str, after_commit: str, separate: bool = False) -> pd.DataFrame:
    """Median over rounds per (model, batch, algorithm, engine), before and after side by side;
    speedup = median of after ÷ before within a round. From the parts that measured both engines; with
    `separate` (the table has baseline-only parts) a configuration no such part measured takes its
    before runs from the baseline-only parts and its after runs from the after-only parts, speedup =
    median ÷ median (`paired` false)."""
    both = ok[ok["engines"] == "both"]
    runs = both
    if separate:
        measured = set(_configurations(both))
        rest = ok[[k not in measured for k in _configurations(ok)]]
        runs = pd.concat([both, rest[rest["engines"] == rest["engine"]]])
    if both.empty:
        paired = pd.Series(dtype=float)
    else:
        rounds = both.pivot_table(index=[*CONFIGURATION, "invocation", "round"], columns="engine",
                                  values="img_per_cpu_s")
        paired = (rounds["after"] / rounds["before"]).dropna().groupby(CONFIGURATION).median()
    med = runs.groupby([*CONFIGURATION, "engine"]).agg(
        img_per_cpu_s=("img_per_cpu_s", "median"), step_memory_bytes=("step_memory_bytes", "median"),
        runs=("img_per_cpu_s", "size")).reset_index()
    sizes = runs.groupby(CONFIGURATION)["image_size"].first()
    rows = []
    for (model, batch, algorithm), g in med.groupby(CONFIGURATION, sort=False):
        by = {e: r for e, r in zip(g["engine"], g.to_dict("records"))}
        b, a = by.get("before"), by.get("after")
        key = (model, batch, algorithm)
        speedup = paired.get(key)
        if speedup is None and separate and a and b:
            speedup = a["img_per_cpu_s"] / b["img_per_cpu_s"]
        row = {"model": model, "image_size": int(sizes[key]), "batch_size": batch, "algorithm": algorithm,
               "before_img_per_cpu_s": b and b["img_per_cpu_s"], "after_img_per_cpu_s": a and a["img_per_cpu_s"],
               "speedup": speedup,
               "before_step_memory_bytes": b and b["step_memory_bytes"],
               "after_step_memory_bytes": a and a["step_memory_bytes"],
               "before_commit": baseline, "after_commit": after_commit,
               "before_runs": b and b["runs"], "after_runs": a and a["runs"]}
        if separate:
            row["paired"] = key in paired.index
        rows.append(row)
    if not rows:
        return pd.DataFrame(columns=["model", "image_size", "batch_size", "algorithm"])
    return _in_algorithm_order(pd.DataFrame(rows), ["model", "batch_size", "algorithm"])


def paired_ratios(ok: pd.DataFrame, engine: str = "after") -> pd.DataFrame:
    """The `engine`'s throughput and step memory ÷ nonprivate's (by default the working tree's), per number
    of runs at a time (`jobs`). Throughput is paired within a round of one invocation (median of those
    ratios, their range, how many); a configuration without such pairs (measured in another part than
    nonprivate) falls back to median ÷ median, marked 'unpaired'."""
    ok = ok[ok["engine"] == engine]
    paired = ok.assign(ratio=ratio_to(ok, "img_per_cpu_s", ["model", "batch_size", "invocation", "round"]))
    config = ["model", "batch_size", "jobs"]
    medians = ok.groupby(config + ["algorithm"])[["img_per_cpu_s", "step_memory_bytes"]].median().reset_index()
    medians = medians.assign(throughput_ratio=ratio_to(medians, "img_per_cpu_s", config),
                             memory_ratio=ratio_to(medians, "step_memory_bytes", config))
    medians = medians.set_index(config + ["algorithm"])
    rows = []
    for (model, batch, jobs, algorithm), g in paired.groupby(config + ["algorithm"]):
        if (model, batch, jobs, "nonprivate") not in medians.index:
            continue
        mine = medians.loc[(model, batch, jobs, algorithm)]
        ratios = g["ratio"].dropna()
        row = {"model": model, "batch_size": batch, "jobs": jobs, "algorithm": algorithm,
               "memory_ratio": mine["memory_ratio"]}
        if len(ratios):
            row.update(throughput_ratio=ratios.median(), ratio_min=ratios.min(), ratio_max=ratios.max(),
                       paired=True, rounds=len(ratios))
        else:
            row.update(throughput_ratio=mine["throughput_ratio"], ratio_min=None, ratio_max=None, paired=False,
                       rounds=len(g))
        rows.append(row)
    if not rows:  # no part measured nonprivate: nothing to divide by
        return pd.DataFrame(columns=RATIO_COLUMNS)
    return _in_algorithm_order(pd.DataFrame(rows), ["model", "batch_size", "jobs", "algorithm"])


PER_ENGINE_COLUMNS = [*RATIO_COLUMNS, "image_size", "engine", "status"]


def per_engine_ratios(raw: pd.DataFrame, ok: pd.DataFrame) -> pd.DataFrame:
    """paired_ratios of both engines (column `engine`), with each model's input size, and a row per
    configuration whose runs all failed (ratios empty, `status` = the last run's error or 'oom'; 'ok'
    for the rest)."""
    runs = with_defaults(raw)
    sizes = runs.groupby("model")["image_size"].first()
    frames = [paired_ratios(ok, engine).assign(engine=engine, status="ok") for engine in ("after", "before")]
    keys = ["model", "batch_size", "jobs", "engine", "algorithm"]
    failed = [{**dict(zip(keys, key)), "status": g["status"].iloc[-1], "rounds": 0}
              for key, g in runs.groupby(keys) if not (g["status"] == "ok").any()]
    frames.append(pd.DataFrame(failed, columns=[*keys, "status", "rounds"]))
    table = pd.concat([f for f in frames if len(f)], ignore_index=True) if any(len(f) for f in frames) else \
        pd.DataFrame(columns=PER_ENGINE_COLUMNS)
    table["image_size"] = table["model"].map(sizes)
    return _in_algorithm_order(table[PER_ENGINE_COLUMNS], ["model", "batch_size", "jobs", "engine", "algorithm"])


def commands(raw: pd.DataFrame) -> list[str]:
    """The commands of the parts the table holds, in the order they ran; runs of versions of this script
    that did not record theirs count as the parts of the CNN table (PARTS)."""
    recorded = raw["command"] if "command" in raw else pd.Series(index=raw.index, dtype=object)
    order = raw.assign(command=recorded).dropna(subset=["command"]).sort_values("invocation", kind="stable")
    return (PARTS if recorded.isna().any() else []) + list(dict.fromkeys(order["command"]))


def _number(value, fmt: str) -> str:
    return format(value, fmt) if pd.notna(value) else "n/a"


def markdown(table: pd.DataFrame, ratios: pd.DataFrame, args, env: dict, started: str, baseline: str | None = None,
             parts: list[str] = PARTS, separate: bool = False) -> str:
    baseline = baseline or args.baseline
    after = table["after_commit"].iloc[0] if len(table) else "not measured"
    title = ("Engine before / after the CPU optimisation" if baseline == BASELINE else
             f"Clipping engine before / after: `{baseline}` and the working tree")
    lines = [f"# {title} (CPU, 1 thread per run)", "",
             f"Measured {started} on {env['device_name']} ({os.cpu_count()} cores), torch {env['torch']}; "
             f"before = engine of `{baseline}`, after = `{after}`; "
             f"{args.warmup} warm-up + {args.steps} timed steps per run (`runs`: how many, alternating), each run a "
             f"fresh process, one or two at a time (`--jobs`). Commands (the table was built in these parts; a part "
             f"replaces the earlier runs of the configurations it measures, a ratio-only part (`--engines after`) "
             f"only earlier ratio-only runs; this table uses the parts that measured both engines):", "",
             *[f"    {c}" for c in parts], ""]
    if separate:
        lines[2] = lines[2].replace(
            "; this table uses the parts that measured both engines):",
            ", a baseline-only part (`--engines before`) only earlier baseline-only runs; a configuration that no "
            "part measured with both engines takes its before runs from the baseline-only parts and its after runs "
            "from the ratio-only parts):")
        lines[2] = lines[2].replace(f"{args.warmup} warm-up + {args.steps} timed steps per run",
                                    "warm-up and timed steps per run as in the commands")
    lines += ["Throughput = images per CPU-second of the step (median over rounds; speedup: the median of after ÷ "
              "before within a round, the two runs taken side by side); memory = growth of one step "
              "over the memory in use before it (`step_memory_bytes`).", ""]
    if separate:
        lines[-2] = lines[-2].replace("side by side);", "side by side, or median ÷ median where they were measured "
                                      "in separate parts: `paired` no);")
    if baseline == BASELINE:
        lines += ["`nonprivate` differs because the baseline still drew Gaussian noise for it (`add_noise` became "
                  "a no-op for plain training in 5e0240c): N(0, σ²) for every parameter costs ~45 ms for VGG11's "
                  "9.2M and ~55 ms for ResNet18's 11.2M on this CPU.", ""]
    columns = ["model", "batch_size", "algorithm", "before", "after", "speedup", "mem_before", "mem_after", "runs"]
    if len(table):
        view = table.assign(
            before=table["before_img_per_cpu_s"].map(lambda v: _number(v, ".1f")),
            after=table["after_img_per_cpu_s"].map(lambda v: _number(v, ".1f")),
            speedup=table["speedup"].map(lambda v: f"{v:.2f}x" if pd.notna(v) else "n/a"),
            mem_before=table["before_step_memory_bytes"].map(lambda v: f"{v / 2**20:.0f} MiB" if pd.notna(v) else "n/a"),
            mem_after=table["after_step_memory_bytes"].map(lambda v: f"{v / 2**20:.0f} MiB" if pd.notna(v) else "n/a"))
        view["runs"] = [f"{b:.0f} / {a:.0f}" if pd.notna(b) and pd.notna(a) else "n/a"
                        for b, a in zip(table["before_runs"], table["after_runs"])]
        if separate:
            view["runs"] = [f"{_number(b, '.0f')} / {_number(a, '.0f')}"
                            for b, a in zip(table["before_runs"], table["after_runs"])]
            view["paired"] = table["paired"].map({True: "yes", False: "no"})
            columns = ["model", "image_size", *columns[1:], "paired"]
        lines += [view[columns].to_markdown(index=False), ""]
    else:
        lines += ["No configuration measured.", ""]
    ratio_rows = []
    for r in ratios.itertuples():
        failed = separate and r.status != "ok"
        row = {"model": r.model, "batch_size": r.batch_size, "runs at a time": r.jobs, "algorithm": r.algorithm,
               "throughput ÷ nonprivate": f"fails: {r.status}" if failed else f"{r.throughput_ratio:.2f}",
               "range over rounds": ("" if failed else
                                     f"{r.ratio_min:.2f}–{r.ratio_max:.2f}" if r.paired else "unpaired"),
               "rounds": r.rounds,
               "step memory ÷ nonprivate": f"{r.memory_ratio:.2f}" if pd.notna(r.memory_ratio) else "n/a"}
        if separate:
            row = {"model": r.model, "image_size": r.image_size, "engine": r.engine, **{k: v for k, v in row.items()
                                                                                      if k != "model"}}
        ratio_rows.append(row)
    heading = "## Ratios to nonprivate, before and after" if separate else "## After: ratios to nonprivate"
    lines += [heading, "",
              "Throughput: the median over rounds of the ratio within a round (the algorithm's run and the "
              "`nonprivate` run of the same model, batch size, part and round, taken minutes apart at most), with "
              "the range of those ratios ('unpaired': measured in another part than `nonprivate`, median ÷ median). "
              "Step memory: median memory ÷ median memory. Separately for one and two runs at a time: on this "
              "2-vCPU machine the ratios differ between the two (mostly lower with one run at a time) and spread "
              "widely from round to round: read the range, not only the median.", "",
              pd.DataFrame(ratio_rows).to_markdown(index=False) if ratio_rows else "Not measured: no `nonprivate` run.",
              ""]
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
    args.command = shlex.join([".venv/bin/python", "scripts/perf_before_after.py",
                               *(sys.argv[1:] if argv is None else argv)])
    args.results_dir = args.results_dir.resolve()  # "before" runs start inside the overlay: absolute result paths
    runs_csv = args.results_dir / "runs.csv"
    if args.report_only and not runs_csv.exists():
        print(f"--report-only: no runs to report ({runs_csv} does not exist); nothing written", file=sys.stderr)
        return 1
    args.results_dir.mkdir(parents=True, exist_ok=True)
    started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    args.invocation = started
    after_commit = git("rev-parse", "--short=7", "HEAD") + ("-dirty" if git("status", "--porcelain", "dpbench") else "")
    if args.report_only:
        raw = pd.DataFrame(columns=["model", "batch_size", "algorithm", "engine"])
    else:
        with tempfile.TemporaryDirectory(prefix="dpbench-baseline-") as tmp:
            overlay = overlay_with_baseline_engine(args.baseline, Path(tmp)) if args.engines != "after" else None
            raw = measure(args, overlay)
    if runs_csv.exists():  # a part replaces the earlier runs of its kind (engines measured) and configurations
        earlier = with_defaults(pd.read_csv(runs_csv))
        if args.report_only:  # nothing measured: the runs as they were (their columns as written)
            earlier = pd.read_csv(runs_csv)
            earlier["ratio_only"] = earlier.get("ratio_only", pd.Series(False, index=earlier.index)).fillna(False).astype(bool)
        else:
            keys = set(_configurations(raw))
            earlier = earlier[[k not in keys or kind != args.engines
                               for k, kind in zip(_configurations(earlier), earlier["engines"])]]
        raw = pd.concat([earlier, raw], ignore_index=True)
    write_text_atomic(runs_csv, raw.to_csv(index=False))
    measured_at = raw.loc[(raw["engine"] == "after") & raw["commit"].notna(), "commit"] if "commit" in raw else []
    has_after = len(measured_at) > 0
    after_commit = ", ".join(sorted({c[:7] + ("-dirty" if c.endswith("dirty") else "") for c in measured_at})) or after_commit
    separate = "engines" in raw and bool((raw["engines"] == "before").any())
    if separate and not has_after:
        after_commit = "not measured"
    recorded = raw.loc[raw["engine"] == "before", "baseline"].dropna().unique() if "baseline" in raw else []
    baseline = ", ".join(sorted(recorded)) or args.baseline
    ok = successful_runs(raw)
    table = summarise(ok, baseline, after_commit, separate)
    args.out_csv.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out_csv, table.to_csv(index=False))
    ratios = per_engine_ratios(raw, ok) if separate else paired_ratios(ok)
    write_text_atomic(args.out_ratios_csv, ratios.to_csv(index=False))
    write_text_atomic(args.out_md, markdown(table, ratios, args, environment("cpu", "float32", 0),
                                            measured_when(raw, started), baseline, commands(raw), separate))
    print(f"wrote {args.out_csv}, {args.out_ratios_csv} and {args.out_md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
