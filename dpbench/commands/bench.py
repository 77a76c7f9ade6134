"""`dpbench bench`: time full DP-SGD training steps of one configuration and record its peak memory."""

from __future__ import annotations

import dataclasses
import sys

from dpbench.cli import memory_size, positive_int
from dpbench.measure import MeasurementFailed, bench_result
from dpbench.measure.cli_args import add_config_arguments, config_from_args
from dpbench.measure.memory import format_bytes
from dpbench.results import write_json_atomic


def register(subparsers) -> None:
    p = subparsers.add_parser("bench", help="throughput and peak memory of one configuration (fresh process)")
    add_config_arguments(p, steps=10, warmup=3)
    p.add_argument("--batch-size", type=positive_int, required=True, help="examples per rank and step")
    p.add_argument("--memory-budget", type=memory_size, default=None,
                   help="memory the step may use, e.g. 16GiB (a smaller GPU on a larger one); "
                        "over it the result is out of memory (default: the device's memory)")
    p.add_argument("--nproc", type=positive_int, default=1,
                   help="data-parallel ranks on this machine (torchrun; gloo on CPU, nccl on CUDA): each runs "
                        "--batch-size examples, the gradients are all-reduced every step; --threads are shared "
                        "by the ranks, each taking threads / nproc (at least 1) (default: 1)")
    p.add_argument("--no-verify", dest="verify", action="store_false",
                   help="do not check the algorithm's per-sample norms against brute force (recorded as "
                        "'verified: skipped (disabled by --no-verify)'; default: checked once, in a process of its own)")
    p.add_argument("--out", required=True, help="result JSON file")
    p.set_defaults(func=run)


def run(args) -> int:
    config = config_from_args(args, args.batch_size)
    if args.nproc > 1 and config.threads:  # the CPUs of the measurement, shared by its ranks
        config = dataclasses.replace(config, threads=max(1, config.threads // args.nproc))
    try:
        result = bench_result(config, args.memory_budget, args.nproc, args.verify)
    except MeasurementFailed as failure:
        sys.stderr.write(failure.log)
        print(f"dpbench bench: error: {failure}", file=sys.stderr)
        return 1
    write_json_atomic(args.out, result)
    print(summary(result))
    return 0


def summary(result: dict) -> str:
    """One line for the terminal."""
    from dpbench.verify import text

    c = result["config"]
    ranks = f" x {c['nproc']} ranks" if c.get("nproc", 1) > 1 else ""
    name = f"{c['algorithm']} {c['model']} batch {c['batch_size']}{ranks} {c['image_size']}² {c['device']}"
    if result["oom"]:
        budget = result["config"].get("memory_budget_bytes")
        within = f" within the budget of {format_bytes(budget)}" if budget else ""
        return f"{name}: out of memory{within} ({result['error']}); verified: {text(result.get('verified'))}"
    return (f"{name}: {result['step_time_s']['median']:.4f} s/step, "
            f"{result['throughput_img_s']['median']:.1f} img/s, peak {format_bytes(result['peak_memory_bytes'])} "
            f"({result['memory_method']}); verified: {text(result.get('verified'))}")
