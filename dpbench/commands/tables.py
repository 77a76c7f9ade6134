"""`dpbench tables`: the result tables (CSV and Markdown) from bench, maxbatch, train and complexity results."""

from __future__ import annotations

from pathlib import Path

from dpbench.cli import positive_int
from dpbench.errors import DpbenchError


def register(subparsers) -> None:
    p = subparsers.add_parser("tables", help="result tables (CSV + Markdown) from result files")
    p.add_argument("--bench", nargs="*", default=[], metavar="JSON", help="bench results (throughput/memory, Table 4)")
    p.add_argument("--maxbatch", nargs="*", default=[], metavar="JSON", help="maxbatch results")
    p.add_argument("--bench-at-max", nargs="*", default=[], metavar="JSON",
                   help="bench results measured at the maximum batch sizes (throughput column of the maxbatch table)")
    p.add_argument("--train", nargs="*", default=[], metavar="JSON", help="train results (accuracy table)")
    p.add_argument("--complexity", nargs="*", default=[], metavar="CSV", help="per-layer complexity tables")
    p.add_argument("--epoch-images", type=positive_int, default=50000,
                   help="images per epoch for the Table 4 layout (default: 50000, CIFAR-10)")
    p.add_argument("--scaling", action="store_true",
                   help="also the data-parallel scaling table (bench runs of several ranks ÷ 1 rank)")
    p.add_argument("--out-dir", required=True, help="directory of the tables")
    p.set_defaults(func=run)


def run(args) -> int:
    from dpbench.report import failures as failed, load, tables

    if not (args.bench or args.maxbatch or args.train or args.complexity):
        raise DpbenchError("no result files given (--bench, --maxbatch, --train or --complexity)")
    if args.bench_at_max and not args.maxbatch:
        raise DpbenchError("--bench-at-max needs the --maxbatch results it belongs to")
    if args.scaling and not args.bench:
        raise DpbenchError("--scaling needs the --bench results it compares")
    out = Path(args.out_dir)
    written = []
    failures = failed.failures_frame({"bench": args.bench + args.bench_at_max, "maxbatch": args.maxbatch,
                                      "train": args.train})
    if args.bench or args.maxbatch or args.train:
        tables.write_table(failures, out, "failures", failed.failures_markdown(failures))
        written.append("failures")
    if args.bench:
        bench = load.bench_frame(args.bench)
        frame = tables.throughput_memory(bench)
        tables.write_table(frame, out, "throughput_memory",
                           tables.markdown_table(frame, "Throughput and peak memory per configuration"))
        frame = tables.table4(bench, args.epoch_images)
        tables.write_table(frame, out, "table4", tables.table4_markdown(frame, failures))
        written += ["throughput_memory", "table4"]
        if args.scaling:
            frame = tables.scaling(bench)
            tables.write_table(frame, out, "scaling", tables.markdown_table(
                frame, "Data-parallel scaling: throughput of W ranks ÷ 1 rank"))
            written.append("scaling")
    if args.maxbatch:
        frame = tables.maxbatch(load.maxbatch_frame(args.maxbatch), load.bench_frame(args.bench_at_max))
        tables.write_table(frame, out, "maxbatch", tables.markdown_table(frame, "Maximum batch size within the memory budget"))
        written.append("maxbatch")
    if args.train:
        frame = tables.accuracy(load.train_frame(args.train))
        tables.write_table(frame, out, "accuracy", tables.markdown_table(frame, "Test accuracy of DP training"))
        written.append("accuracy")
    if args.complexity:
        layers = load.complexity_frame(args.complexity)
        tables.write_table(layers, out, "complexity_layers", None)
        frame = tables.complexity_totals(layers)
        tables.write_table(frame, out, "complexity_totals",
                           tables.markdown_table(frame, "Predicted cost of the whole model (complexity model)"))
        written += ["complexity_layers", "complexity_totals"]
    print(f"dpbench tables: wrote {', '.join(written)} to {out}")
    return 0
