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
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts" / "local-slurm"
MARK = "# written by dpbench scripts/local-slurm/start.sh"
SLURM_TOOLS = ("slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "munged")


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
    command = ["timeout", "-s", "KILL", "420", sys.executable, "-m", "snakemake", "--profile", "slurm",
               "--profile", "profiles/ci-local", "--configfile", ".test/config/slurm.yaml", "--directory", str(work)]
    run = subprocess.run(command, cwd=REPO, env=cluster, capture_output=True, text=True)
    output = run.stdout + run.stderr
    assert run.returncode == 0, f"snakemake --profile slurm failed ({run.returncode}):\n{output[-6000:]}"

    # Every measuring job was an sbatch submission ...
    submitted = dict(re.findall(r"Job \d+ has been submitted with SLURM jobid (\d+) \(log: \S*/rule_(\w+?)/", output))
    assert sorted(submitted.values()) == ["bench", "bench", "complexity"], output[-3000:]
    # ... that SLURM ran to completion (finished jobs stay visible for MinJobAge = 300 s) ...
    queue = subprocess.run(["squeue", "--states=all", "--noheader", "--format=%i|%T"], env=cluster,
                           capture_output=True, text=True, check=True).stdout
    states = dict(line.split("|") for line in queue.split())
    for job_id in submitted:
        assert states.get(job_id) == "COMPLETED", f"SLURM job {job_id}: {states.get(job_id)}\n{queue}"
    # ... with the GPU request the rule makes (gpus_per_job: 1 -> --gpus=1, on the fake GPUs).
    for job_id, rule in submitted.items():
        details = subprocess.run(["scontrol", "show", "job", job_id], env=cluster, capture_output=True, text=True,
                                 check=True).stdout
        has_gpu = re.search(r"gres[:/]gpu[:=]1", details) is not None
        assert has_gpu == (rule == "bench"), f"job {job_id} ({rule}):\n{details}"

    # The aggregation ran where Snakemake runs and produced everything.
    for name in ["results/tables/throughput_memory.csv", "results/tables/table4.md", "figures/layerwise_choice.png",
                 "figures/fig4_memory_time_scatter.pdf", "paper/reproduction.md"]:
        assert (work / name).stat().st_size > 0, name
    result = json.loads((work / "results/bench/slurm/cnn/s16_b4/mixed_ghost.json").read_text())
    assert result["kind"] == "bench" and result["config"]["algorithm"] == "mixed_ghost"
    assert result["environment"]["threads"] == 1  # the rule's threads reached torch inside the SLURM job
