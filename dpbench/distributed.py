"""Data-parallel DP-SGD over torch.distributed: who this process is, and the few collectives it needs.

Launch with `torchrun --nproc-per-node N` (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT;
multi-node with the usual rendezvous variables) or with `srun` inside a SLURM job (SLURM_PROCID,
SLURM_STEP_NUM_TASKS, SLURM_LOCALID; MASTER_ADDR/MASTER_PORT derived from the step when unset).
Without either, `World()` is the single process and every collective is a no-op.

Why explicit all-reduces and not DistributedDataParallel: DDP's hooks reduce what autograd accumulates into
p.grad during a backward, once per physical batch unless all but the last run under no_sync. That is right
for plain training and happens to be right for the two-pass algorithms (their first backward forms no
p.grad, only the second backward of Σ Cᵢ Lᵢ reaches DDP), but book-keeping writes the clipped sums into
p.grad without autograd (DDP reduces nothing) and Opacus' hooks backward leaves the UNCLIPPED sum there
(DDP reduces the wrong tensor, then the clipped sum needs an all-reduce of its own). So each rank
accumulates its clipped sum over all its physical batches, rank 0 alone adds the noise, and one bucketed
SUM all-reduce per logical batch sends every trainable parameter once: 4·P bytes per rank per step in
float32 for every algorithm and any number of physical batches, what DDP sends at best (with no_sync);
`World.bytes_reduced` counts it, and scripts/distributed_scaling.py measures both (paper/distributed_scaling.md).
What this gives up is DDP's overlap of the reduction with the last backward.
"""

from __future__ import annotations

import datetime
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass, field

import torch
from torch import nn

from dpbench.errors import DpbenchError

DEFAULT_TIMEOUT_S = 600.0
"""How long a collective waits for the other ranks before the run ends with an error."""
BUCKET_ELEMENTS = 2 ** 24
"""Gradients are flattened into buffers of at most this many elements (64 MiB in float32) per all-reduce."""
DEFAULT_SLURM_PORT_BASE = 29500


@dataclass
class World:
    """This process's place among the W ranks of a run (the default: one process, no collectives)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S
    launcher: str | None = None  # "torchrun" (or any env:// launcher), "srun"; None for one process
    bytes_reduced: int = 0  # payload all-reduced by this rank so far (counted, not estimated)
    collectives: int = 0
    _group_owned: bool = field(default=False, repr=False)

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def describe(self) -> dict:
        """What a result file records about the ranks of the run."""
        return {"world_size": self.size, "backend": self.backend, "launcher": self.launcher,
                "timeout_s": self.timeout_s if self.distributed else None}

    # ---- collectives (each a no-op for one process) ----------------------------------------------
    def all_reduce_sum(self, tensors: list[torch.Tensor]) -> None:
        """Sum each tensor over the ranks in place, through flat buffers of at most BUCKET_ELEMENTS."""
        if not self.distributed or not tensors:
            return
        for bucket in _buckets(tensors):
            flat = torch.cat([t.reshape(-1) for t in bucket]) if len(bucket) > 1 else bucket[0].reshape(-1)
            self._collective("all_reduce", torch.distributed.all_reduce, flat, op=torch.distributed.ReduceOp.SUM)
            self.bytes_reduced += flat.numel() * flat.element_size()
            if len(bucket) > 1 or flat.data_ptr() != bucket[0].data_ptr():
                offset = 0
                for t in bucket:
                    t.copy_(flat[offset:offset + t.numel()].view_as(t))
                    offset += t.numel()

    def sum_numbers(self, *values: float) -> list[float]:
        """Python numbers summed over the ranks (float64)."""
        if not self.distributed:
            return list(values)
        buffer = torch.tensor(values, dtype=torch.float64, device=self._collective_device())
        self._collective("all_reduce", torch.distributed.all_reduce, buffer, op=torch.distributed.ReduceOp.SUM)
        return buffer.tolist()

    def broadcast_module(self, module: nn.Module) -> None:
        """Give every rank rank 0's parameters and buffers (a replica that drifted or loaded other weights)."""
        if not self.distributed:
            return
        with torch.no_grad():
            for t in [*module.parameters(), *module.buffers()]:
                self._collective("broadcast", torch.distributed.broadcast, t.data, src=0)

    def gather_objects(self, obj) -> list:
        """Every rank's `obj` (picklable), in rank order, on every rank."""
        if not self.distributed:
            return [obj]
        gathered = [None] * self.size
        self._collective("all_gather_object", torch.distributed.all_gather_object, gathered, obj)
        return gathered

    def barrier(self) -> None:
        if self.distributed:
            self._collective("barrier", torch.distributed.barrier)

    def close(self) -> None:
        """Leave the process group if this World created it."""
        if self._group_owned and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        self._group_owned = False

    def _collective_device(self) -> torch.device:
        return torch.device("cuda", torch.cuda.current_device()) if self.backend == "nccl" else torch.device("cpu")

    def _collective(self, name: str, function, *args, **kwargs):
        self.collectives += 1
        try:
            return function(*args, **kwargs)
        except (RuntimeError, ValueError) as err:  # DistBackendError, DistNetworkError are RuntimeErrors
            first = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
            raise DpbenchError(f"rank {self.rank} of {self.size}: {name} failed: another rank exited or did not "
                               f"answer within {self.timeout_s:g} s ({first[:200]})") from None


def _buckets(tensors: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    """Consecutive tensors of one dtype and device, at most BUCKET_ELEMENTS per bucket (or one larger tensor)."""
    buckets: list[list[torch.Tensor]] = []
    size = 0
    for t in tensors:
        last = buckets[-1] if buckets else None
        if last is None or size + t.numel() > BUCKET_ELEMENTS or (t.dtype, t.device) != (last[0].dtype, last[0].device):
            buckets.append([t])
            size = t.numel()
        else:
            last.append(t)
            size += t.numel()
    return buckets


def launch_environment(env: dict | None = None) -> dict | None:
    """rank, size, local_rank, launcher, MASTER_ADDR/PORT from a torchrun or srun environment; None when
    this process was started alone (or as the single task of a SLURM step)."""
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:
        return {"rank": int(env["RANK"]), "size": int(env["WORLD_SIZE"]), "local_rank": int(env.get("LOCAL_RANK", 0)),
                "launcher": "torchrun", "master_addr": env.get("MASTER_ADDR"), "master_port": env.get("MASTER_PORT")}
    tasks = int(env.get("SLURM_STEP_NUM_TASKS", "1") or 1)  # set by srun only, not in the batch script
    if tasks > 1 and "SLURM_PROCID" in env:
        nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST", "")
        port = env.get("MASTER_PORT") or str(DEFAULT_SLURM_PORT_BASE + int(env.get("SLURM_JOB_ID", "0")) % 1000)
        return {"rank": int(env["SLURM_PROCID"]), "size": tasks, "local_rank": int(env.get("SLURM_LOCALID", 0)),
                "launcher": "srun", "master_addr": env.get("MASTER_ADDR") or _first_host(nodes), "master_port": port}
    return None


def _first_host(nodelist: str) -> str:
    """The first host of a SLURM node list ("node[01-04]" -> "node01"), through scontrol when present."""
    if not nodelist:
        return "127.0.0.1"
    if shutil.which("scontrol"):
        try:
            hosts = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                                   timeout=30, check=True).stdout.split()
            if hosts:
                return hosts[0]
        except (OSError, subprocess.SubprocessError):
            pass
    head = nodelist.split(",")[0]
    if "[" in head:
        prefix, rest = head.split("[", 1)
        head = prefix + rest.split("-")[0].split(",")[0].rstrip("]")
    return head


def init_world(device_type: str, timeout_s: float = DEFAULT_TIMEOUT_S, env: dict | None = None) -> World:
    """Join the process group described by the launcher's environment (gloo on CPU, nccl on CUDA);
    a single process gets World(). Collectives then fail after `timeout_s` instead of hanging."""
    launch = launch_environment(env)
    if launch is None or launch["size"] == 1:
        return World(timeout_s=timeout_s)
    if not 0 <= launch["rank"] < launch["size"]:
        raise DpbenchError(f"rank {launch['rank']} is outside a world of {launch['size']} processes")
    backend = "nccl" if device_type == "cuda" else "gloo"
    if torch.distributed.is_initialized():
        if torch.distributed.get_world_size() != launch["size"]:
            raise DpbenchError("a process group of another size is already initialised in this process")
        return World(launch["rank"], launch["size"], launch["local_rank"], torch.distributed.get_backend(),
                     timeout_s, launch["launcher"])
    if launch["master_addr"] is None or launch["master_port"] is None:
        raise DpbenchError("MASTER_ADDR and MASTER_PORT must be set for a multi-process run (torchrun sets them)")
    if device_type == "cuda":
        torch.cuda.set_device(launch["local_rank"] % max(1, torch.cuda.device_count()))
    try:
        torch.distributed.init_process_group(
            backend, init_method=f"tcp://{launch['master_addr']}:{launch['master_port']}", rank=launch["rank"],
            world_size=launch["size"], timeout=datetime.timedelta(seconds=timeout_s))
    except (RuntimeError, ValueError) as err:
        first = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
        where = f"{launch['master_addr']}:{launch['master_port']}"
        raise DpbenchError(f"rank {launch['rank']} of {launch['size']}: could not join the process group at "
                           f"{where} within {timeout_s:g} s ({first[:200]})") from None
    return World(launch["rank"], launch["size"], launch["local_rank"], backend, timeout_s, launch["launcher"],
                 _group_owned=True)


def free_port() -> int:
    """A TCP port free on this machine now (for MASTER_PORT of a single-node launch)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_device(device: torch.device, world: World) -> torch.device:
    """The device of this rank: cuda:LOCAL_RANK for a multi-rank CUDA run (whatever index was asked for:
    one GPU per rank), else `device`."""
    if device.type == "cuda" and world.distributed:
        return torch.device("cuda", world.local_rank % max(1, torch.cuda.device_count()))
    return device


def rank_command(python_args: list[str], ranks: int, nodes: int = 1, threads: int = 1, gpus_per_rank: int = 0,
                 env: dict | None = None) -> list[str]:
    """The command that runs `python python_args…` as `ranks` ranks: one plain process for one rank; inside
    a SLURM allocation (SLURM_JOB_ID set, srun on PATH) `srun` with that many tasks over `nodes` nodes,
    each with `threads` CPUs and `gpus_per_rank` GPUs; elsewhere torchrun on this machine."""
    env = os.environ if env is None else env
    if ranks < 1 or nodes < 1 or nodes > ranks:
        raise DpbenchError(f"{ranks} ranks on {nodes} nodes: need 1 <= nodes <= ranks")
    python = [sys.executable, *python_args]
    if ranks == 1:
        return python
    if env.get("SLURM_JOB_ID") and shutil.which("srun", path=env.get("PATH")):
        gpus = [f"--gpus-per-task={gpus_per_rank}"] if gpus_per_rank else []
        return ["srun", f"--ntasks={ranks}", f"--nodes={nodes}", f"--cpus-per-task={threads}", *gpus,
                "--kill-on-bad-exit=1", *python]
    if nodes > 1:
        raise DpbenchError(f"{nodes} nodes need a SLURM allocation (srun); outside SLURM the ranks of a run share "
                           "this machine (nodes: 1), or start torchrun on each node yourself")
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}", *python_args]
