"""The Snakemake workflow: dry-runs of the default and the paper config with their job counts per
rule, schema rejection of bad configs, and the whole pipeline on a reduced config end to end in a
temporary directory (`.test/config/pipeline.yaml`, ~1-2 min), with its HTML report."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from itertools import product
from math import prod
from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
AGGREGATES = {"tables": 1, "figures": 1, "reproduction_report": 1, "perf_report": 1, "all": 1}


def snakemake(*args: str, cwd: Path, timeout: int = 120) -> subprocess.CompletedProcess:
    """Snakemake on the repository's Snakefile, with the working directory elsewhere."""
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(cwd), *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' table of a Snakemake run or dry-run."""
    table = output.split("Job stats:", 1)[1]
    counts = {}
    for line in table.splitlines()[3:]:
        name, _, count = line.strip().partition(" ")
        if name == "total" or not count.strip().isdigit():
            break
        counts[name] = int(count)
    return counts


def expected_counts(config: dict) -> dict[str, int]:
    """Jobs per rule before the maxbatch checkpoints have run (the throughput runs at the maximum
    batch sizes are added to the DAG afterwards)."""
    counts = {
        "bench": sum(prod(len(s[k]) for k in ("models", "image_sizes", "batch_sizes", "algorithms"))
                     for s in config["bench"]),
        "maxbatch": sum(prod(len(s[k]) for k in ("models", "image_sizes", "algorithms")) for s in config["maxbatch"]),
        "complexity": len({(m, i) for c in config["complexity"] for m, i in product(c["models"], c["image_sizes"])}),
        # nonprivate runs once per entry (no ε), every other algorithm once per ε
        "train": sum(len(set(r["algorithms"]) - {"nonprivate"}) * len(r.get("epsilons", []))
                     + ("nonprivate" in r["algorithms"]) for r in config["train"]),
        "profile": len({key for p in config["profile"]
                        for key in product(*(p[k] for k in ("models", "image_sizes", "batch_sizes", "algorithms")))}),
    }
    return {rule: n for rule, n in counts.items() if n} | AGGREGATES


@pytest.mark.parametrize("name", ["default", "paper"])
def test_dry_run_lists_every_job(name, tmp_path):
    configfile = REPO / "config" / f"{name}.yaml"
    run = snakemake("-n", "--configfile", str(configfile), cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    counts = job_counts(run.stdout + run.stderr)
    assert counts == expected_counts(yaml.safe_load(configfile.read_text()))
    if name == "paper":  # the paper's sweep, counted by hand
        assert counts == {"bench": 230, "maxbatch": 100, "complexity": 11, "train": 10, "profile": 7} | AGGREGATES
    else:  # every algorithm, two or three batch sizes, every stage
        config = yaml.safe_load(configfile.read_text())
        algorithms = {a for s in config["bench"] for a in s["algorithms"]}
        assert len(algorithms) == 9 and all(1 <= len(s["batch_sizes"]) <= 3 for s in config["bench"])


def group_jobs(output: str) -> dict[str, list[tuple[str, str]]]:
    """Group id -> [(previous result or '', result)] of each job in a dry run's group jobs."""
    groups = {}
    for block in re.split(r"\n(?=\[[^\]]*\] Group job )", output)[1:]:
        name = re.match(r"\[[^\]]*\] Group job (\S+)", block).group(1)
        jobs = re.findall(r"^    (?:rule|checkpoint) \w+:\n(?: +input: (\S+)\n)? +output: (\S+)", block, re.M)
        groups[name] = jobs
    return groups


def test_dry_run_of_the_slurm_profile(tmp_path):
    """`--profile slurm` parses (YTE templating, plugin options) and sends GPU rules with gpu=1; one
    SLURM job per comparison group, its algorithms chained in an order that alternates between groups."""
    run = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--profile", "slurm", "--configfile",
                          "config/paper.yaml", "--directory", str(tmp_path)], cwd=REPO, capture_output=True,
                         text=True, timeout=180, env={**os.environ, "DPBENCH_SLURM_PARTITION": "gpux"})
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-3000:]
    bench = re.search(r"rule bench:.*?resources: ([^\n]*)", output, re.S).group(1)
    assert "slurm_partition=gpux" in bench and "gpu=1" in bench and "runtime=60" in bench

    config = yaml.safe_load((REPO / "config/paper.yaml").read_text())
    groups = group_jobs(output)
    expected = ({f"bench.{s['name']}.{m}.s{i}.b{b}" for s in config["bench"]
                 for m, i, b in product(s["models"], s["image_sizes"], s["batch_sizes"])}
                | {f"maxbatch.{s['name']}.{m}.s{i}" for s in config["maxbatch"]
                   for m, i in product(s["models"], s["image_sizes"])}
                | {f"profile.{m}.s{i}.b{b}" for p in config["profile"]
                   for m, i, b in product(p["models"], p["image_sizes"], p["batch_sizes"])})
    assert set(groups) == expected and len(groups) == 48  # instead of 230 + 100 + 7 single jobs
    for s in config["bench"] + config["maxbatch"]:  # each group: every algorithm of its sweep
        kind = "bench" if s in config["bench"] else "maxbatch"
        assert all(len(jobs) == len(s["algorithms"]) for name, jobs in groups.items()
                   if name.startswith(f"{kind}.{s['name']}.")), s["name"]
    ungrouped = re.findall(r"^rule (\w+):", output, re.M)  # submitted alone: train; the rest run locally
    assert sorted(set(ungrouped)) == ["all", "complexity", "figures", "perf_report", "reproduction_report",
                                      "tables", "train"]
    table4 = config["bench"][0]["algorithms"]
    for position, batch in enumerate(["64", "256"]):  # resnet18 is table4's second model: groups 2 and 3
        jobs = groups[f"bench.table4.resnet18.s32.b{batch}"]
        chain = {Path(previous).stem if previous else None: Path(result).stem for previous, result in jobs}
        order, algorithm = [], None
        while algorithm in chain:
            algorithm = chain[algorithm]
            order.append(algorithm)
        assert order == (table4 if position == 0 else table4[::-1]), order


def test_dry_run_of_several_ranks_on_slurm(tmp_path):
    """What a data-parallel job asks SLURM for: a train run of 4 ranks over 2 nodes is one job of 4 tasks
    (the plugin's mpi resource: the command starts them with srun), one CPU each, one GPU per task on
    CUDA, memory per node for 2 ranks; a bench sweep on 2 ranks is one task with 2 CPUs and 2 GPUs."""
    config = yaml.safe_load((REPO / ".test/config/ranks.yaml").read_text())
    config["device"] = "cuda"
    config["train"][0].update(ranks=4, nodes=2)
    path = tmp_path / "ranks.yaml"
    path.write_text(yaml.safe_dump(config))
    run = subprocess.run([sys.executable, "-m", "snakemake", "-n", "-p", "--profile", "slurm", "--configfile", str(path),
                          "--directory", str(tmp_path / "work")], cwd=REPO, capture_output=True, text=True, timeout=180)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-3000:]
    train = re.search(r"rule train_ranks:.*?resources: ([^\n]*).*?Shell command: ([^\n]*)", output, re.S)
    resources = dict(item.split("=", 1) for item in train.group(1).split(", "))
    assert {k: resources.get(k) for k in ("tasks", "nodes", "mpi", "cpus_per_task", "gpu", "tasks_per_gpu", "mem_mb")} \
        == {"tasks": "4", "nodes": "2", "mpi": "srun", "cpus_per_task": "1", "gpu": "4", "tasks_per_gpu": "1",
            "mem_mb": "2000"}, train.group(1)
    assert "--ranks 4 --nodes 2 --cpus-per-rank 1 --gpus-per-rank 1 --" in train.group(2)
    bench = re.search(r"rule bench:.*?output: results/bench/two_ranks\S*.*?resources: ([^\n]*)", output, re.S).group(1)
    assert "gpu=2" in bench and "tasks" not in bench and "mpi" not in bench, bench
    local = snakemake("-n", "--cores", "4", "--configfile", str(REPO / ".test/config/ranks.yaml"), cwd=tmp_path)
    blocks = (local.stdout + local.stderr).split("\n\n")
    assert [re.search(r"threads: (\d+)", b).group(1) for b in blocks if "output: results/bench/two_ranks" in b
            or "rule train" in b] == ["2", "2"]  # local scheduling counts every rank's CPUs


@pytest.mark.slow
def test_several_ranks_end_to_end(tmp_path):
    """The data-parallel jobs on this machine: the 2-rank train run under torchrun and the 2-rank bench
    sweep, with the ranks in the tables and the scaling table against the 1-rank sweep."""
    run = snakemake("--cores", "2", "--configfile", str(REPO / ".test/config/ranks.yaml"), cwd=tmp_path, timeout=900)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    train = json.loads((tmp_path / "results/train/digits_2ranks/bk_mixed_eps8.json").read_text())
    assert train["world_size"] == 2 and train["distributed"]["launcher"] == "torchrun"
    assert train["steps"] == 4 and 0 < train["epsilon"] <= 8
    bench = json.loads((tmp_path / "results/bench/two_ranks/cnn/s16_b4/bk_mixed.json").read_text())
    assert bench["world_size"] == 2 and bench["allreduce_bytes_per_step"] > 0
    accuracy = pd.read_csv(tmp_path / "results/tables/accuracy.csv")
    assert accuracy["ranks"].tolist() == [2] and accuracy["device"].str.endswith("× 2 ranks").all()
    scaling = pd.read_csv(tmp_path / "results/tables/scaling.csv")
    assert len(scaling) == 1 and scaling.loc[0, "ranks"] == 2 and scaling.loc[0, "speedup"] > 0
    row = scaling.loc[0]
    assert row["speedup"] == pytest.approx(row["throughput_img_s"] / row["throughput_one_rank"])
    table = pd.read_csv(tmp_path / "results/tables/throughput_memory.csv")
    assert sorted(table["device"].str.endswith("× 2 ranks")) == [False, True]  # each compared with its own ranks


def write_config(tmp_path: Path, change) -> Path:
    config = yaml.safe_load((REPO / "config" / "default.yaml").read_text())
    change(config)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize("change, message", [
    (lambda c: c.update(bech=c.pop("bench")), "'bech' was unexpected"),
    (lambda c: c["bench"][0]["algorithms"].append("mixed_gost"), "'mixed_gost' is not one of"),
    (lambda c: c["bench"][0].update(batch_sizes=[0]), "0 is less than the minimum of 1"),
    (lambda c: c["maxbatch"][0].update(memory_budget="lots"), "lots"),
    (lambda c: c["train"][0]["options"].update(out="x.json"), "out"),
    (lambda c: c["train"][0].pop("epsilons"), "'epsilons' is a required property"),
    (lambda c: c["train"][0].update(algorithms=["nonprivate"]), "should not be valid"),
    (lambda c: c.update(device="gpu"), "'gpu' does not match"),
    (lambda c: c["maxbatch"][0].update(name=c["bench"][0]["name"]), "names must be unique"),
    (lambda c: c["profile"][0].update(warmup=-1), "-1 is less than the minimum of 0"),
    (lambda c: c["bench"][0].update(nproc=2, memory_budget="16GiB"), "a budget applies to one process"),
    (lambda c: c["train"][0].update(ranks=2, nodes=2), "needs SLURM (snakemake --profile slurm)"),
    (lambda c: c["train"][0].update(ranks=1, nodes=2), "nodes must be at most ranks"),
    (lambda c: c["train"][0].update(ranks=0), "0 is less than the minimum of 1"),
])
def test_bad_config_stops_before_any_job(change, message, tmp_path):
    run = snakemake("-n", "--configfile", str(write_config(tmp_path, change)), cwd=tmp_path)
    output = run.stdout + run.stderr
    assert run.returncode != 0
    assert message in output, output[-2000:]
    assert "Job stats" not in output


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
    """The reduced pipeline run to completion in a fresh directory."""
    work = tmp_path_factory.mktemp("pipeline")
    run = snakemake("--cores", "2", "--configfile", str(REPO / ".test/config/pipeline.yaml"), cwd=work, timeout=900)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    return work, run.stdout + run.stderr


@pytest.mark.slow
def test_pipeline_end_to_end(pipeline_run):
    work, output = pipeline_run
    finished = re.findall(r"Finished jobid: \d+ \(Rule: (\w+)\)", output)
    assert {rule: finished.count(rule) for rule in finished} == {"bench": 3, "maxbatch": 1, "complexity": 1,
                                                                  "train": 1, "profile": 2} | AGGREGATES
    # the maxbatch checkpoint added the throughput run at the maximum batch size (16: the limit)
    assert (work / "results/bench/tiny_budget/cnn/s16_b16/mixed_ghost.json").exists()
    throughput = pd.read_csv(work / "results/tables/throughput_memory.csv")
    assert sorted(throughput["algorithm"]) == ["mixed_ghost", "nonprivate"]
    assert throughput.set_index("algorithm").loc["nonprivate", "throughput_vs_nonprivate"] == 1.0
    maxbatch = pd.read_csv(work / "results/tables/maxbatch.csv")
    assert maxbatch["max_batch_size"].tolist() == [16] and maxbatch["throughput_at_max_img_s"].notna().all()
    accuracy = pd.read_csv(work / "results/tables/accuracy.csv")
    assert accuracy["dataset"].tolist() == ["digits"] and 0 < accuracy["epsilon"][0] <= 8
    for name in ["fig3_maxbatch_throughput", "fig4_memory_time_scatter", "layerwise_choice", "throughput_vs_batch",
                 "accuracy_vs_epsilon"]:
        png = work / "figures" / f"{name}.png"
        pixels = matplotlib.image.imread(png)
        assert png.stat().st_size > 10_000 and np.ptp(pixels[..., :3]) > 0.5, name
        assert (work / "figures" / f"{name}.pdf").stat().st_size > 1000
    assert "# Reproduction report" in (work / "paper/reproduction.md").read_text()
    profile = json.loads((work / "results/profile/cnn_s16_b4/mixed_ghost.json").read_text())
    assert profile["kind"] == "profile" and set(profile["regions"]) == {"forward", "engine.backward",
                                                                        "engine.add_noise", "optimizer.step"}
    performance = (work / "paper/performance.md").read_text()
    assert re.search(r"\| cnn 16², batch 4 +\| Mixed ghost throughput ÷ non-private +\| [0-9.]+ +\| ≥ 0.6 +\| (not )?met ",
                     performance), performance[:3000]
    assert "### cnn 16², batch 4" in performance and "`aten::" in performance  # the profiler section
    assert (work / "logs/bench/tiny/cnn/s16_b4/mixed_ghost.log").exists()
    # results are the only state: a second run has nothing to do
    again = snakemake("--cores", "2", "--configfile", str(REPO / ".test/config/pipeline.yaml"), cwd=work)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr
    # a failure record where a result was: the same command would redo exactly that one (and the reports)
    result = work / "results/bench/tiny/cnn/s16_b4/mixed_ghost.json"
    measured = result.read_text()
    record = {"kind": "bench", "status": "failed", "config": json.loads(measured)["config"],
              "failure": {"kind": "crash", "reason": "exited with code 1", "last_error_line": "boom"}}
    result.write_text(json.dumps(record))
    try:
        planned = snakemake("-n", "--configfile", str(REPO / ".test/config/pipeline.yaml"), cwd=work)
    finally:
        result.write_text(measured)
    output = planned.stdout + planned.stderr
    assert job_counts(output) == {"bench": 1, "tables": 1, "figures": 1, "reproduction_report": 1,
                                  "perf_report": 1, "all": 1}, output[-3000:]
    assert "Forced execution" in output


@pytest.mark.slow
def test_html_report_has_figures_and_tables(pipeline_run):
    work, _ = pipeline_run
    run = snakemake("--configfile", str(REPO / ".test/config/pipeline.yaml"), "--report", "report.html", cwd=work)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    html = (work / "report.html").read_text(errors="replace")
    for text in ["fig3_maxbatch_throughput.png", "throughput_memory.csv", "reproduction.md", "performance.md",
                 "Figure 3 of the paper, remeasured"]:
        assert text in html, text


def _guard_of(result: str) -> int | None:
    """The pid of the `dpbench guard` process that writes this result, once it runs."""
    import psutil

    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        if "guard" in cmdline and result in cmdline:
            return process.pid
    return None


@pytest.mark.slow
def test_killed_job_still_gives_tables_and_reports(tmp_path):
    """A measuring job killed from outside on its last attempt (SIGKILL: an out-of-memory kill, a node
    lost) leaves no result; the run fails, but its `onerror` records the missing result as failed and
    builds every table, figure and report from the rest, listing the killed configuration."""
    import signal
    import time

    config = yaml.safe_load((REPO / ".test/config/pipeline.yaml").read_text())
    config.update(maxbatch=[], profile=[], complexity=[], train=[], retries=0)
    config["bench"][0].update(steps=400)  # seconds long: time to kill it
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    work = tmp_path / "run"
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(work),
               "--cores", "2", "--configfile", str(path)]
    victim = "results/bench/tiny/cnn/s16_b4/mixed_ghost.json"  # second in its group
    with open(tmp_path / "log.txt", "w") as log:
        process = subprocess.Popen(command, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
        deadline, killed = time.monotonic() + 600, False
        while not killed and time.monotonic() < deadline and process.poll() is None:
            pid = _guard_of(victim)
            if pid:
                time.sleep(2)
                os.kill(pid, signal.SIGKILL)
                killed = True
            time.sleep(0.3)
        returncode = process.wait(timeout=900)
    output = (tmp_path / "log.txt").read_text()
    assert killed, output[-3000:]
    assert returncode != 0 and "missing result(s) recorded as failed" in output, output[-3000:]
    record = json.loads((work / victim).read_text())
    assert record["status"] == "failed" and record["failure"]["kind"] == "killed"
    throughput = pd.read_csv(work / "results/tables/throughput_memory.csv")
    assert throughput["algorithm"].tolist() == ["nonprivate"]
    for name in ["results/tables/failures.md", "results/tables/table4.md", "figures/fig4_memory_time_scatter.png",
                 "paper/reproduction.md", "paper/performance.md"]:
        assert (work / name).stat().st_size > 0, name
    assert "killed" in (work / "results/tables/failures.md").read_text()
    assert "cnn, 16², batch 4, Mixed ghost" in (work / "paper/reproduction.md").read_text()


def bench_algorithms(run: subprocess.CompletedProcess) -> list[str]:
    """The algorithms of the bench jobs a Snakemake run (or dry run) listed, in its order."""
    return [Path(p).stem for p in re.findall(r"output: (results/bench/\S+)", run.stdout + run.stderr)]


@pytest.mark.slow
def test_one_invocation_redoes_every_failure_of_a_group(tmp_path):
    """Two failure records in one comparison group (as after a group job killed from outside): the next
    invocation redoes both, and with them the algorithms after the first failure in the group's chain
    (Snakemake would not look at a job below a rerun one through an ancient input); the ones before it
    are kept. A third invocation has nothing to do; `-R bench` would rerun every job of the group."""
    from dpbench.failures import failure_record

    config = yaml.safe_load((REPO / ".test/config/pipeline.yaml").read_text())
    config.update(maxbatch=[], profile=[], complexity=[], train=[], retries=0)
    config["bench"][0].update(algorithms=["nonprivate", "mixed_ghost", "bk_mixed", "ghost"])
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    work = tmp_path / "run"
    work.mkdir()
    first = snakemake("--cores", "2", "--configfile", str(path), cwd=work, timeout=600)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    results = {a: work / f"results/bench/tiny/cnn/s16_b4/{a}.json" for a in config["bench"][0]["algorithms"]}
    chain = bench_algorithms(first)
    assert sorted(chain) == sorted(results)  # the order the group ran them in
    for algorithm in (chain[1], chain[3]):
        results[algorithm].write_text(json.dumps(failure_record(
            "bench", {"algorithm": algorithm}, "killed", "killed from outside", "", None, 1, 1, None, {})))
    kept = results[chain[0]].read_text()

    second = snakemake("--cores", "2", "--configfile", str(path), cwd=work, timeout=600)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    rerun = set(bench_algorithms(second))
    assert rerun == set(chain[1:])
    assert results[chain[0]].read_text() == kept
    assert all("status" not in json.loads(f.read_text()) for f in results.values())
    third = snakemake("-n", "--cores", "2", "--configfile", str(path), cwd=work)
    assert "Nothing to be done" in third.stdout + third.stderr, third.stdout[-3000:]
    # the same masking for the command line's -R: a rule reruns all its jobs, a file the ones after it
    for force, expected in [("bench", chain), (str(results[chain[2]].relative_to(work)), chain[2:])]:
        dry = snakemake("-n", "-R", force, "--cores", "2", "--configfile", str(path), cwd=work)
        forced = set(bench_algorithms(dry))
        assert forced == set(expected), (force, forced)


MEASURING_COMMANDS = REPO / "tests" / "reference" / "measuring_commands.txt"


def measuring_commands(work: Path) -> list[str]:
    """The shell commands of every measuring job (bench, maxbatch, profile, train: the `dpbench guard`
    ones) in a dry run of .test/config/pipeline.yaml, with this checkout's paths replaced."""
    run = snakemake("-n", "-p", "--configfile", str(REPO / ".test/config/pipeline.yaml"), cwd=work)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    commands = [line.removeprefix("Shell command: ") for line in (run.stdout + run.stderr).splitlines()
                if line.startswith("Shell command: ") and " guard --kind " in line]
    return sorted(c.replace(sys.executable, "<python>").replace(str(REPO), "<repo>") for c in commands)


def test_measuring_commands_are_unchanged(tmp_path):
    """Snakemake reruns every finished result whose rule command or params changed, so a change to the
    text of a measuring rule's command (or to a param it shows) makes every user's finished sweep run
    again, hours of GPU time. Such a change must be deliberate: if it is, say so in the commit and the
    README, then regenerate the reference with `.venv/bin/python -c "import sys; sys.path[:0] = ['tests', '.'];
    import test_pipeline; test_pipeline.write_measuring_commands()"`. (The reference was written by the rules
    of commit 0319b72, before rule train_ranks and bench's nproc, and by those after them: the same text.)"""
    assert measuring_commands(tmp_path) == MEASURING_COMMANDS.read_text().splitlines()


def write_measuring_commands() -> None:
    """Regenerate tests/reference/measuring_commands.txt (see test_measuring_commands_are_unchanged)."""
    import tempfile

    with tempfile.TemporaryDirectory() as work:
        MEASURING_COMMANDS.write_text("\n".join(measuring_commands(Path(work))) + "\n")
