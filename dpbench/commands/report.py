"""`dpbench report`: paper/reproduction.md, the paper's numbers next to this run's, from the result tables."""

from __future__ import annotations

from dpbench.errors import DpbenchError

REPORTED_COLUMNS = {"quantity", "model", "layer", "algorithm", "image_size", "batch_size", "dataset", "epsilon",
                    "value", "unit", "device", "source", "exactness"}


def register(subparsers) -> None:
    p = subparsers.add_parser("report", help="the reproduction report (Markdown): paper vs this run")
    p.add_argument("--reported", required=True, metavar="CSV", help="the paper's numbers (paper/reported.csv)")
    p.add_argument("--throughput-memory", metavar="CSV", help="throughput_memory.csv of this run")
    p.add_argument("--maxbatch", metavar="CSV", help="maxbatch.csv of this run")
    p.add_argument("--accuracy", metavar="CSV", help="accuracy.csv of this run")
    p.add_argument("--complexity-layers", metavar="CSV", help="complexity_layers.csv of this run")
    p.add_argument("--failures", metavar="CSV", help="failures.csv of this run (the configurations that failed)")
    p.add_argument("--dp-algorithm", default="mixed_ghost",
                   help="the DP algorithm compared with the paper's mixed ghost clipping (default: mixed_ghost)")
    p.add_argument("--out", required=True, help="the Markdown report to write")
    p.set_defaults(func=run)


def run(args) -> int:
    from dpbench.report.load import read_table
    from dpbench.report.reproduction import Ours, render
    from dpbench.report.style import ALGORITHM_ORDER
    from dpbench.results import write_text_atomic

    if args.dp_algorithm not in ALGORITHM_ORDER:
        raise DpbenchError(f"unknown --dp-algorithm {args.dp_algorithm!r}; one of {', '.join(ALGORITHM_ORDER)}")
    reported = read_table(args.reported)
    missing = REPORTED_COLUMNS - set(reported.columns)
    if missing:
        raise DpbenchError(f"{args.reported} lacks the columns {', '.join(sorted(missing))}")
    ours = Ours(read_table(args.throughput_memory), read_table(args.maxbatch), read_table(args.accuracy),
                read_table(args.complexity_layers), failures=read_table(args.failures))
    write_text_atomic(args.out, render(reported, ours, args.dp_algorithm))
    print(f"dpbench report: wrote {args.out}")
    return 0
