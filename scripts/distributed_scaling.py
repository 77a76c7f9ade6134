"""Data-parallel scaling on this machine: W ranks against 1, non-private and DP (dpbench bench --nproc W),
and the gradient traffic per logical batch of dpbench's explicit all-reduce against DistributedDataParallel's
hooks, counted on 2 gloo ranks. Writes a Markdown report with the command, the machine and its load.

    python scripts/distributed_scaling.py --out paper/distributed_scaling.md
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

from dpbench.measure import BenchConfig, bench_result
from dpbench.results import git_commit, write_text_atomic

MIB = 2 ** 20


def scaling_rows(algorithms: list[str], model: str, batch: int, ranks: list[int], steps: int,
                 warmup: int) -> list[dict]:
    rows = []
    for algorithm in algorithms:
        for w in ranks:
            config = BenchConfig(algorithm, model, batch_size=batch, steps=steps, warmup=warmup, threads=1).validate()
            result = bench_result(config, nproc=w)
            peaks = result.get("peak_memory_bytes_by_rank", [result["peak_memory_bytes"]])
            rows.append({"algorithm": algorithm, "W": w, "global_batch": w * batch,
                         "step_s": result["step_time_s"]["median"], "img_s": result["throughput_img_s"]["median"],
                         "cpu_s": result["step_cpu_time_s"]["median"],
                         "allreduce_mib": result.get("allreduce_bytes_per_step", 0) / MIB,
                         "peak_mib": max(peaks) / MIB})
            print(rows[-1], flush=True)
    return rows


# ---- traffic: explicit all-reduce vs DDP's hooks ---------------------------------------------------
def _traffic_rank(rank: int, port: int, physical: int, queue) -> None:
    import torch.nn.functional as F
    from torch.nn.parallel import DistributedDataParallel

    from dpbench.clipping import PrivacyEngine
    from dpbench.distributed import init_world
    from dpbench.models import create_model

    os.environ.update(RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    world = init_world("cpu", 120)
    g = torch.Generator().manual_seed(rank)
    x, y = torch.randn(physical * 4, 3, 32, 32, generator=g), torch.randint(0, 10, (physical * 4,), generator=g)
    chunks = list(zip(x.split(4), y.split(4)))
    rows = []

    def counted(state, bucket):
        state["bytes"] += bucket.buffer().numel() * bucket.buffer().element_size()
        work = torch.distributed.all_reduce(bucket.buffer(), async_op=True)
        return work.get_future().then(lambda f: f.value()[0])

    for algorithm in ("nonprivate", "opacus", "mixed_ghost", "bk_mixed"):
        for no_sync in (False, True):
            torch.manual_seed(0)
            model = create_model("cnn", num_classes=10)
            ddp = DistributedDataParallel(model)
            state = {"bytes": 0}
            ddp.register_comm_hook(state, counted)
            note = ""
            try:
                engine = PrivacyEngine(ddp, algorithm, max_grad_norm=1.0, noise_multiplier=0.0)
                for i, (xb, yb) in enumerate(chunks):
                    sync = not no_sync or i == len(chunks) - 1
                    with (ddp.no_sync() if not sync else _nothing()):
                        engine.backward(F.cross_entropy(ddp(xb), yb, reduction="none"))
                engine.detach()
            except Exception as err:  # noqa: BLE001 (what DDP does with the algorithm is the finding)
                note = f"{type(err).__name__}: {str(err).strip().splitlines()[0][:120]}"
            rows.append({"algorithm": algorithm, "no_sync": no_sync, "ddp_bytes": state["bytes"], "note": note})
            torch.distributed.barrier()
    world.close()
    if rank == 0:
        queue.put({"rows": rows, "parameter_bytes": 4 * sum(p.numel() for p in create_model("cnn").parameters())})


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def traffic(physical: int) -> dict:
    import torch.multiprocessing as mp

    from dpbench.distributed import free_port

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_traffic_rank, args=(r, port, physical, queue)) for r in range(2)]
    for p in procs:
        p.start()
    found = queue.get(timeout=900)
    for p in procs:
        p.join(timeout=120)
    return found


def report(rows: list[dict], comm: dict, physical: int, args, load_before: str, load_after: str, elapsed: float) -> str:
    command = "PYTHONPATH=. python " + " ".join(shlex.quote(a) for a in sys.argv)
    lines = [
        "# Data-parallel scaling on CPU (gloo): W ranks against 1",
        "",
        f"Command: `{command}` ({elapsed / 60:.1f} min), commit {git_commit()}, torch {torch.__version__},",
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores SHARED with other jobs: "
        f"`uptime` before: `{load_before}`; after: `{load_after}`.",
        "",
        f"`dpbench bench --nproc W --model {args.model} --batch-size {args.batch} --threads 1 --steps {args.steps} "
        f"--warmup {args.warmup}` per row: each rank runs {args.batch} images per step (one thread), the "
        "gradients are all-reduced once per step (rank 0 adds the noise); medians of the timed steps. "
        "Speed-up = throughput of W ranks / throughput of 1 rank. With 2 cores shared with other jobs, W = 2 "
        "cannot reach 2x: a load above 2 means the ranks wait for cores.",
        "",
        "| algorithm | W | global batch | s/step | img/s | speed-up | CPU s/step (rank 0) "
        "| all-reduce MiB/step/rank | peak MiB/rank |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    base = {r["algorithm"]: r["img_s"] for r in rows if r["W"] == 1}
    for r in rows:
        speedup = r["img_s"] / base[r["algorithm"]] if r["algorithm"] in base else float("nan")
        lines.append(f"| {r['algorithm']} | {r['W']} | {r['global_batch']} | {r['step_s']:.3f} | {r['img_s']:.1f} | "
                     f"{speedup:.2f}x | {r['cpu_s']:.3f} | {r['allreduce_mib']:.2f} | {r['peak_mib']:.0f} |")
    p_mib = comm["parameter_bytes"] / MIB
    lines += [
        "",
        f"## Gradient traffic per logical batch: explicit all-reduce vs DistributedDataParallel ({args.model}, "
        f"{physical} physical batches of 4 per rank, 2 gloo ranks)",
        "",
        f"dpbench: one all-reduce of every trainable parameter per logical batch, {p_mib:.2f} MiB per rank "
        "for every algorithm (counted by `World.bytes_reduced`, the `all-reduce` column above). DDP: the bytes its "
        "comm hook was handed, counted during the physical batches' backward passes through the engine.",
        "",
        "| algorithm | DDP sync | DDP MiB reduced | what DDP reduced |",
        "|---|---|---|---|",
    ]
    meaning = {"nonprivate": "the (unclipped) gradient: correct for plain training",
               "opacus": "the UNCLIPPED sums autograd leaves in p.grad (wrong); the clipped sum needs its own "
                         "all-reduce",
               "mixed_ghost": "the second backward's clipped sums (the first backward forms no p.grad)",
               "bk_mixed": "nothing: book-keeping writes p.grad without autograd (wrong)"}
    for r in comm["rows"]:
        sync = "last physical batch only (no_sync)" if r["no_sync"] else "every physical batch"
        lines.append(f"| {r['algorithm']} | {sync} | {r['ddp_bytes'] / MIB:.2f} | "
                     f"{r['note'] or meaning[r['algorithm']]} |")
    lines += ["", "Why explicit all-reduces: see the docstring of `dpbench/distributed.py`.", ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("paper/distributed_scaling.md"))
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--ranks", default="1,2")
    parser.add_argument("--algorithms", default="nonprivate,mixed_ghost,bk_mixed,opacus")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--physical", type=int, default=4, help="physical batches per logical batch (traffic)")
    args = parser.parse_args()
    started = time.time()
    load_before = os.popen("uptime").read().strip()
    comm = traffic(args.physical)
    rows = scaling_rows(args.algorithms.split(","), args.model, args.batch, [int(w) for w in args.ranks.split(",")],
                        args.steps, args.warmup)
    load_after = os.popen("uptime").read().strip()
    write_text_atomic(args.out, report(rows, comm, args.physical, args, load_before, load_after, time.time() - started))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
