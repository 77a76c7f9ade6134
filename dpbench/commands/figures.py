"""`dpbench figures`: the paper's figures (PNG and PDF) from the tables written by `dpbench tables`."""

from __future__ import annotations

from pathlib import Path

from dpbench.errors import DpbenchError


def register(subparsers) -> None:
    p = subparsers.add_parser("figures", help="figures (PNG + PDF) from the result tables")
    p.add_argument("--throughput-memory", metavar="CSV",
                   help="throughput_memory.csv: Figure 4 scatter and throughput vs batch size")
    p.add_argument("--maxbatch", metavar="CSV", help="maxbatch.csv: the Figure 3 pair")
    p.add_argument("--accuracy", metavar="CSV", help="accuracy.csv: accuracy vs epsilon")
    p.add_argument("--complexity-layers", metavar="CSV", help="complexity_layers.csv: the layerwise figure")
    p.add_argument("--failures", metavar="CSV", help="failures.csv: failed configurations, named under each figure")
    p.add_argument("--dp-algorithm", default="mixed_ghost",
                   help="the DP algorithm of the Figure 4 scatter (default: mixed_ghost)")
    p.add_argument("--out-dir", required=True, help="directory of the figures")
    p.set_defaults(func=run)


def run(args) -> int:
    from dpbench.report import figures
    from dpbench.report.failures import footnote
    from dpbench.report.load import read_table
    from dpbench.report.style import ALGORITHM_ORDER

    if args.dp_algorithm not in ALGORITHM_ORDER:
        raise DpbenchError(f"unknown --dp-algorithm {args.dp_algorithm!r}; one of {', '.join(ALGORITHM_ORDER)}")
    drawings = []
    if args.throughput_memory:
        table = read_table(args.throughput_memory)
        drawings += [("fig4_memory_time_scatter", lambda t=table: figures.figure4(t, args.dp_algorithm)),
                     ("throughput_vs_batch", lambda t=table: figures.throughput_vs_batch(t))]
    if args.maxbatch:
        table = read_table(args.maxbatch)
        drawings.append(("fig3_maxbatch_throughput", lambda t=table: figures.figure3(t)))
    if args.accuracy:
        table = read_table(args.accuracy)
        drawings.append(("accuracy_vs_epsilon", lambda t=table: figures.accuracy_vs_epsilon(t)))
    if args.complexity_layers:
        table = read_table(args.complexity_layers)
        drawings.append(("layerwise_choice", lambda t=table: figures.layerwise(t)))
    if not drawings:
        raise DpbenchError("no table given (--throughput-memory, --maxbatch, --accuracy or --complexity-layers)")
    out = Path(args.out_dir)
    failures = read_table(args.failures)
    kinds = {"fig4_memory_time_scatter": ("bench",), "throughput_vs_batch": ("bench",),
             "fig3_maxbatch_throughput": ("maxbatch", "bench"), "accuracy_vs_epsilon": ("train",)}
    for name, draw in drawings:
        fig = draw()
        note = footnote(failures, kinds.get(name, ()))
        if note:
            fig.text(0.01, 0.0, note, fontsize=7, ha="left", va="top", wrap=True)
        figures.save(fig, out, name)
    print(f"dpbench figures: wrote {', '.join(name for name, _ in drawings)} (PNG, PDF) to {out}")
    return 0
