"""The live SLURM test of data-parallel training: one job of 2 tasks on the local cluster (the `cluster`
fixture of test_slurm.py), `srun python -m dpbench train`, the ranks found from SLURM's variables."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from test_slurm import REPO, cluster  # noqa: F401  (the fixture: a running local cluster)

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def test_a_two_task_job_trains_on_two_ranks(cluster, tmp_path):  # noqa: F811
    out = tmp_path / "result.json"
    job = tmp_path / "job.sh"
    job.write_text(f"""#!/bin/bash
#SBATCH --job-name=dpbench-2ranks --nodes=1 --ntasks=2 --cpus-per-task=1 --mem=4000 --time=10
#SBATCH --output={tmp_path}/job.log
export PYTHONPATH={REPO} HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1
srun {sys.executable} -m dpbench train --model cnn --dataset digits --algorithm bk_mixed --noise-multiplier 1 \\
    --accountant rdp --epochs 1 --batch-size 50 --physical-batch-size 16 --train-size 200 --threads 1 \\
    --no-progress --dist-timeout 120 --out {out}
""")
    done = subprocess.run(["timeout", "-s", "KILL", "420", "sbatch", "--wait", str(job)], env=cluster,
                          capture_output=True, text=True, cwd=tmp_path)
    log = (tmp_path / "job.log").read_text() if (tmp_path / "job.log").exists() else ""
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n{log[-3000:]}"
    result = json.loads(out.read_text())
    assert result["world_size"] == 2, log
    assert result["distributed"]["launcher"] == "srun" and result["distributed"]["backend"] == "gloo"
    assert result["steps"] == 4 and result["epsilon"] > 0
    assert log.count("epoch 1/1:") == 1  # rank 0 alone reports
