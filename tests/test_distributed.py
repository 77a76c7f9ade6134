"""Data-parallel DP-SGD on 2 CPU ranks (gloo): W = 2 reproduces W = 1 on the same logical batches, the
noise is added once per logical batch, and the traffic is one all-reduce of the parameters per step."""

from __future__ import annotations

import sys

import pytest
import torch

import distributed_workers as workers
from dpbench.distributed import World, launch_environment, rank_command
from dpbench.errors import DpbenchError
from dpbench.sampling import rank_share

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

CASES = [(model, algorithm) for model in workers.MODELS for algorithm in ("mixed_ghost", "bk_mixed", "opacus")]
CASES.append(("cnn", "opacus_ghost"))


@pytest.fixture(autouse=True)
def _one_thread():
    """Like each rank: one thread (the machine's cores are shared; conftest restores the count)."""
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """One launch of 2 ranks running every case and the noise draws; their rank 0's results."""
    out = tmp_path_factory.mktemp("ranks")
    workers.spawn(workers.suite_task, 2, out, CASES)
    return torch.load(out / "equality-w2.pt", weights_only=False), torch.load(out / "noise-w2.pt")


@pytest.mark.parametrize("case", CASES, ids=["-".join(c) for c in CASES])
def test_two_ranks_without_noise_equal_one_process(two_ranks, case):
    one, one_comm = workers.train_steps(World(), *case)
    two, two_comm = two_ranks[0][case]
    assert one.keys() == two.keys()
    start = dict(workers.MODELS[case[0]]().double().state_dict())
    for name in one:
        assert not torch.equal(one[name], start[name]) or "norm" in name, f"{name} never trained"
        torch.testing.assert_close(two[name], one[name], rtol=1e-9, atol=1e-12, msg=name)
    # no communication in the backward passes: one all-reduce per logical batch, every parameter once
    assert one_comm["collectives_per_step"] == 0
    assert two_comm["collectives_per_step"] == 1
    assert two_comm["bytes_per_step"] == two_comm["parameter_bytes"]


def noise_variance_is(draws: torch.Tensor, variance: float) -> bool:
    """Sample variance within 3% of `variance` (200 x 1010 draws: its relative sd is 0.3%)."""
    return abs(draws.var().item() / variance - 1) < 0.03


def test_noise_is_added_once_per_logical_batch(two_ranks):
    drawn = two_ranks[1]
    single = workers.noise_draws(World())
    expected = (workers.SIGMA * workers.R) ** 2
    assert noise_variance_is(single, expected)
    assert noise_variance_is(drawn["once"], expected)
    assert torch.equal(drawn["once"], single)  # rank 0's seeded draw: the same noise whatever W
    # drawing on every rank (independent generators) sums W draws: the check above catches it
    assert not noise_variance_is(drawn["every_rank"], expected)
    assert noise_variance_is(drawn["every_rank"], 2 * expected)
    # noise is independent across steps and coordinates
    assert abs(torch.corrcoef(torch.stack([single[:-1].flatten(), single[1:].flatten()]))[0, 1]) < 0.02


def test_rank_shares_cover_each_logical_batch_once():
    logical = torch.tensor([3, 5, 8, 13, 21])
    for world_size in (1, 2, 3, 7):
        shares = [rank_share(logical, r, world_size) for r in range(world_size)]
        assert torch.equal(torch.cat(shares), logical)
        assert max(map(len, shares)) - min(map(len, shares)) <= 1
    assert len(rank_share(torch.tensor([4]), 1, 2)) == 0  # an empty share: the rank still all-reduces


def test_launch_environment_of_torchrun_and_srun():
    assert launch_environment({}) is None
    assert launch_environment({"SLURM_PROCID": "0", "SLURM_NTASKS": "2"}) is None  # the batch script itself
    torchrun = launch_environment({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "h",
                                   "MASTER_PORT": "7"})
    assert (torchrun["rank"], torchrun["size"], torchrun["local_rank"], torchrun["launcher"]) == (1, 2, 1, "torchrun")
    srun = launch_environment({"SLURM_PROCID": "3", "SLURM_STEP_NUM_TASKS": "4", "SLURM_LOCALID": "1",
                               "SLURM_JOB_ID": "1234", "SLURM_STEP_NODELIST": "gpu[07-08]", "PATH": ""})
    assert (srun["rank"], srun["size"], srun["local_rank"], srun["launcher"]) == (3, 4, 1, "srun")
    assert srun["master_port"] == "29734"


def test_rank_command_picks_the_launcher(tmp_path):
    """One rank: the plain process; inside a SLURM allocation: srun tasks with their CPUs and GPUs; on a
    machine without SLURM: torchrun; several nodes without SLURM, or more nodes than ranks: refused."""
    module = ["-m", "dpbench", "train", "--model", "cnn"]
    assert rank_command(module, 1) == [sys.executable, *module]
    local = rank_command(module, 3, env={"PATH": ""})
    assert local == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=3", *module]
    srun = tmp_path / "srun"
    srun.write_text("#!/bin/sh\n")
    srun.chmod(0o755)
    inside = {"SLURM_JOB_ID": "7", "PATH": str(tmp_path)}
    assert rank_command(module, 4, nodes=2, threads=3, gpus_per_rank=1, env=inside) == [
        "srun", "--ntasks=4", "--nodes=2", "--cpus-per-task=3", "--gpus-per-task=1", "--kill-on-bad-exit=1",
        sys.executable, *module]
    assert "--gpus-per-task=1" not in rank_command(module, 2, env=inside)
    assert rank_command(module, 2, env={"PATH": str(tmp_path)})[:3] == [sys.executable, "-m", "torch.distributed.run"]
    with pytest.raises(DpbenchError, match="2 nodes need a SLURM allocation"):
        rank_command(module, 4, nodes=2, env={"PATH": ""})
    with pytest.raises(DpbenchError, match="need 1 <= nodes <= ranks"):
        rank_command(module, 2, nodes=3, env=inside)


def test_bench_on_two_ranks_records_the_all_reduce(tmp_path):
    from dpbench.measure import BenchConfig, bench_result

    config = BenchConfig("mixed_ghost", "cnn", batch_size=4, image_size=8, steps=2, warmup=0, threads=1).validate()
    result = bench_result(config, nproc=2)
    assert result["world_size"] == 2 and result["global_batch_size"] == 8 and result["world"]["backend"] == "gloo"
    assert result["allreduce_bytes_per_step"] == 4 * result["parameters"]
    assert len(result["peak_memory_bytes_by_rank"]) == 2 and not result["oom"]
    median = result["step_time_s"]["median"]
    assert result["throughput_img_s"]["median"] == pytest.approx(8 / median, rel=0.5)
