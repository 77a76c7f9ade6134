"""`dpbench profile`: torch.profiler summary of one DP-SGD training step (regions and top operators)."""

from __future__ import annotations

from dpbench.cli import positive_int
from dpbench.measure.cli_args import add_config_arguments, config_from_args
from dpbench.results import environment, write_json_atomic


def register(subparsers) -> None:
    p = subparsers.add_parser("profile", help="torch.profiler view of one training step: regions and top operators")
    add_config_arguments(p, steps=1, warmup=2)
    p.add_argument("--batch-size", type=positive_int, required=True)
    p.add_argument("--rows", type=positive_int, default=12, help="operators listed, by self time (default: 12)")
    p.add_argument("--out", required=True, help="result JSON file")
    p.set_defaults(func=run)


def run(args) -> int:
    from dpbench.measure.profile import profile_step, summary_table

    config = config_from_args(args, args.batch_size)
    measured = profile_step(config, rows=args.rows)
    result = {"kind": "profile", "config": config.as_dict(), **measured,
              "environment": environment(config.device, config.dtype, config.seed)}
    write_json_atomic(args.out, result)
    print(summary_table(result))
    return 0
