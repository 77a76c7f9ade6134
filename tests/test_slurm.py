"""The live SLURM test: a real one-node cluster on localhost (scripts/local-slurm/start.sh), the
pipeline run through it with the project's SLURM profile (`--profile slurm`, CI settings layered on
top), and proof that the jobs went through SLURM. Takes 1.5-3 minutes; skipped only where it cannot
run at all (not root, or SLURM missing and no apt-get to install it)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts" / "local-slurm"
MARK = "# written by dpbench scripts/local-slurm/start.sh"
SCHEDULER_BUG = "BUG: Out of jobs ready to be started"
SLURM_TOOLS = ("slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "munged")
# (SLURM job id, group id + "_" + its rules, or rule name) of each submission in Snakemake's output
SUBMITTED = r"Job \S+ has been submitted with SLURM jobid (\d+) \(log: \S*/(?:group|rule)_([\w.]+?)/"


def _cannot_run() -> str | None:
    if os.geteuid() != 0:
        return "the live SLURM test starts munged, slurmctld and slurmd: it needs root"
    if not all(shutil.which(tool) for tool in SLURM_TOOLS) and not shutil.which("apt-get"):
        return "SLURM is not installed and apt-get is unavailable to install it"
    conf = Path("/etc/slurm/slurm.conf")
    if conf.exists() and MARK not in conf.read_text():
        return "this machine has its own SLURM configuration; the test does not touch a real cluster"
    return None


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A running local cluster; its daemons are stopped by PID afterwards, whatever happens."""
    reason = _cannot_run()
    if reason:
        pytest.skip(reason)
    state = tmp_path_factory.mktemp("slurm-state")
    env = {**os.environ, "STATE": str(state)}
    env.pop("SLURM_CONF", None)
    try:
        started = subprocess.run(["timeout", "-s", "KILL", "600", "bash", str(SCRIPTS / "start.sh")], env=env,
                                 capture_output=True, text=True)
        assert started.returncode == 0, f"start.sh failed ({started.returncode}):\n{started.stdout}\n{started.stderr}"
        yield env
    finally:
        subprocess.run(["bash", str(SCRIPTS / "stop.sh")], env=env, capture_output=True, text=True, timeout=120)


def test_pipeline_runs_through_slurm(cluster, tmp_path):
    work = tmp_path / "run"
    command = ["timeout", "-s", "KILL", "600", sys.executable, "-m", "snakemake", "--profile", "slurm",
               "--profile", "profiles/ci-local", "--configfile", ".test/config/slurm.yaml", "--directory", str(work)]
    run = subprocess.run(command, cwd=REPO, env=cluster, capture_output=True, text=True)
    output = run.stdout + run.stderr
    assert run.returncode == 0, f"snakemake --profile slurm failed ({run.returncode}):\n{output[-6000:]}"

    # The comparison group (both algorithms) was one sbatch submission, the 2-rank train run another;
    # the complexity table, CPU only, ran where Snakemake runs ...
    submitted = dict(re.findall(SUBMITTED, output))
    assert sorted(submitted.values()) == ["bench.slurm.cnn.s16.b4_bench", "train_ranks"], output[-3000:]
    # ... that SLURM ran to completion (finished jobs stay visible for MinJobAge = 300 s) ...
    queue = subprocess.run(["squeue", "--states=all", "--noheader", "--format=%i|%T"], env=cluster,
                           capture_output=True, text=True, check=True).stdout
    states = dict(line.split("|") for line in queue.split())
    for job_id in submitted:
        assert states.get(job_id) == "COMPLETED", f"SLURM job {job_id}: {states.get(job_id)}\n{queue}"
    # ... with the one GPU the group needs (gpus_per_job: 1 -> --gpus=1, on the fake GPUs), and for the
    # train run 2 tasks with one GPU each.
    for job_id, name in submitted.items():
        details = subprocess.run(["scontrol", "show", "job", job_id], env=cluster, capture_output=True, text=True,
                                 check=True).stdout
        gpus, tasks = (2, 2) if name == "train_ranks" else (1, 1)
        assert re.search(rf"gres[:/]gpu[:=]{gpus}", details) is not None, details
        assert f"NumTasks={tasks} " in details, details
    # The train run's two ranks were srun tasks of that job, joined over gloo; rank 0 wrote the result.
    train = json.loads((work / "results/train/ranks/bk_mixed_eps8.json").read_text())
    assert train["world_size"] == 2 and train["distributed"]["launcher"] == "srun", train["distributed"]
    assert train["steps"] == 4 and 0 < train["epsilon"] <= 8

    # The aggregation ran where Snakemake runs and produced everything.
    for name in ["results/tables/throughput_memory.csv", "results/tables/table4.md", "figures/layerwise_choice.png",
                 "figures/fig4_memory_time_scatter.pdf", "paper/reproduction.md"]:
        assert (work / name).stat().st_size > 0, name
    result = json.loads((work / "results/bench/slurm/cnn/s16_b4/mixed_ghost.json").read_text())
    assert result["kind"] == "bench" and result["config"]["algorithm"] == "mixed_ghost"
    assert result["environment"]["threads"] == 1  # the rule's threads reached torch inside the SLURM job


def _squeue(env) -> list[dict]:
    """Every job SLURM still shows (finished ones for MinJobAge = 300 s): id, state, comment."""
    out = subprocess.run(["squeue", "--states=all", "--noheader", "--format=%i|%T|%k"], env=env,
                         capture_output=True, text=True, check=True).stdout
    return [dict(zip(("id", "state", "comment"), line.split("|", 2))) for line in out.splitlines() if line]


def _cancel_when_running(env, comment: str, process: subprocess.Popen, timeout_s: float) -> tuple[str, str]:
    """scancel the first job with this comment once SLURM runs it; then wait for SLURM to show it
    cancelled and for Snakemake to submit its retry. Returns (the cancelled job's SLURM state, the retry's
    `scontrol show job`), read while SLURM still shows them (finished jobs vanish after MinJobAge)."""
    deadline = time.monotonic() + timeout_s
    cancelled, state = None, None
    while time.monotonic() < deadline and process.poll() is None:
        jobs = [j for j in _squeue(env) if j["comment"] == comment]
        if cancelled is None:
            running = [j for j in jobs if j["state"] == "RUNNING"]
            if running:
                cancelled = running[0]["id"]
                subprocess.run(["scancel", cancelled], env=env, check=True)
        else:
            state = next((j["state"] for j in jobs if j["id"] == cancelled), state)
            retry = [j for j in jobs if j["id"] != cancelled]
            if retry and state == "CANCELLED":
                details = subprocess.run(["scontrol", "show", "job", retry[0]["id"]], env=env, capture_output=True,
                                         text=True, check=True).stdout
                return state, details
        time.sleep(0.5)
    return state, ""


def _snakemake_faults(work: Path) -> list[str]:
    return ["timeout", "-s", "KILL", "900", sys.executable, "-m", "snakemake", "--profile", "slurm",
            "--profile", "profiles/ci-local", "--configfile", ".test/config/slurm_faults.yaml", "--directory", str(work)]


def test_faults_through_slurm(cluster, tmp_path):
    """The paper config's structure in miniature through `--profile slurm` with three faults: a
    configuration that fails (vgg11 at 16x16), one over its memory budget (1 MiB: an OOM result) and a
    running group job cancelled with scancel (retried). The run finishes with every table, figure and
    the report, which name the failure and the OOM; a second invocation reruns only the failed one."""
    work = tmp_path / "faults"
    log = tmp_path / "first.log"
    with open(log, "w") as out:
        process = subprocess.Popen(_snakemake_faults(work), cwd=REPO, env=cluster, stdout=out, stderr=subprocess.STDOUT)
        cancelled_state, retry = _cancel_when_running(cluster, "rule_bench.table4.cnn.s16.b8_bench", process, timeout_s=600)
        returncode = process.wait(timeout=900)
    output = log.read_text()
    # Snakemake 9.27 can stop scheduling after a retried group job with "BUG: Out of jobs ready to be
    # started" (snakemake/snakemake#823) and exit 1 (seen once in CI). The workflow's onerror handler
    # then still builds every table, figure and report from the results. That is what this test checks
    # below, so that one known exit is accepted here.
    assert returncode == 0 or SCHEDULER_BUG in output, f"snakemake --profile slurm failed ({returncode}):\n{output[-6000:]}"
    # the cancelled group job was retried with twice its runtime (2 jobs x 10 min x attempt 2)
    assert cancelled_state == "CANCELLED" and "TimeLimit=00:40:00" in retry, (cancelled_state, retry)

    # One SLURM job per comparison group (the complexity tables ran locally) ...
    submitted = re.findall(SUBMITTED, output)
    names = sorted(name for _, name in submitted)
    assert names == sorted(["bench.table4.cnn.s16.b4_bench", "bench.table4.cnn.s16.b8_bench",
                            "bench.table4.cnn.s16.b8_bench", "bench.budget.cnn.s16.b4_bench",
                            "bench.crash.vgg11.s16.b4_bench", "maxbatch.fig3.cnn.s16_maxbatch",
                            "at_max.fig3.cnn.s16_bench"]), output[-4000:]
    # ... and the cancelled group's retry measured both algorithms.
    for algorithm in ("nonprivate", "mixed_ghost"):
        result = json.loads((work / f"results/bench/table4/cnn/s16_b8/{algorithm}.json").read_text())
        assert "status" not in result and result["throughput_img_s"]["median"] > 0

    # The failed configuration left a failure record; the one over budget an OOM result.
    crash = json.loads((work / "results/bench/crash/vgg11/s16_b4/nonprivate.json").read_text())
    assert crash["status"] == "failed" and crash["failure"]["kind"] == "error"
    assert "needs images of at least 32x32" in crash["failure"]["last_error_line"]
    over = json.loads((work / "results/bench/budget/cnn/s16_b4/opacus.json").read_text())
    assert over["oom"] and over["config"]["memory_budget_bytes"] == 1024**2
    # Every table, figure and the report exist and name the failure and the OOM.
    for name in ["results/tables/throughput_memory.csv", "results/tables/table4.md", "results/tables/maxbatch.csv",
                 "results/tables/failures.csv", "results/tables/failures.md", "figures/fig3_maxbatch_throughput.png",
                 "figures/fig4_memory_time_scatter.pdf", "figures/layerwise_choice.png", "paper/reproduction.md",
                 "paper/performance.md"]:
        assert (work / name).stat().st_size > 0, name
    table4 = (work / "results/tables/table4.md").read_text()
    assert re.search(r"\| cnn +\| .*OOM", table4) and "1.0 MiB" in table4, table4
    for text in [(work / "results/tables/failures.md").read_text(), (work / "paper/reproduction.md").read_text()]:
        assert "vgg11" in text and "needs images of at least 32x32" in text, text[-3000:]

    # The same command again reruns exactly the failed configuration (and the tables and reports after it).
    again = subprocess.run(_snakemake_faults(work), cwd=REPO, env=cluster, capture_output=True, text=True)
    output = again.stdout + again.stderr
    assert again.returncode == 0, output[-6000:]
    rerun = [name for _, name in re.findall(SUBMITTED, output)]
    assert rerun == ["bench.crash.vgg11.s16.b4_bench"], output[-4000:]
