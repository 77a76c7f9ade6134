"""`dpbench maxbatch`: the largest batch size of one configuration within a memory budget."""

from __future__ import annotations

import sys

from dpbench.cli import memory_size, positive_int
from dpbench.errors import DpbenchError
from dpbench.measure import MeasurementFailed, maxbatch_result
from dpbench.measure.cli_args import add_config_arguments, config_from_args
from dpbench.measure.memory import format_bytes, total_memory_bytes
from dpbench.results import write_json_atomic


def register(subparsers) -> None:
    p = subparsers.add_parser("maxbatch", help="largest batch size within a memory budget (fresh process per probe)")
    add_config_arguments(p, steps=1, warmup=1)
    p.add_argument("--memory-budget", type=memory_size, default=None,
                   help="e.g. 8GiB, 512MiB, 2GB or bytes (default: the device's total memory)")
    p.add_argument("--start", type=positive_int, default=8, help="first batch size probed (default: 8)")
    p.add_argument("--limit", type=positive_int, default=8192, help="largest batch size probed (default: 8192)")
    p.add_argument("--tolerance", type=positive_int, default=1,
                   help="stop bisecting when the largest fit and the smallest failure differ by at most this (default: 1)")
    p.add_argument("--no-verify", dest="verify", action="store_false",
                   help="do not check the algorithm's per-sample norms against brute force (recorded as "
                        "'verified: skipped (disabled by --no-verify)'; default: checked once, in a process of its own)")
    p.add_argument("--out", required=True, help="result JSON file")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.limit < args.start:
        raise DpbenchError(f"--limit ({args.limit}) must be >= --start ({args.start})")
    config = config_from_args(args, args.start)
    budget = args.memory_budget or total_memory_bytes(config.device)
    try:
        result = maxbatch_result(config, budget, args.start, args.limit, args.tolerance, args.verify)
    except MeasurementFailed as failure:
        sys.stderr.write(failure.log)
        print(f"dpbench maxbatch: error: {failure}", file=sys.stderr)
        return 1
    write_json_atomic(args.out, result)
    from dpbench.verify import text

    c = result["config"]
    print(f"{c['algorithm']} {c['model']} {c['image_size']}² {c['device']}: max batch {result['max_batch_size']} "
          f"within {format_bytes(budget)} ({len(result['probes'])} probes); verified: {text(result['verified'])}")
    return 0
