"""`dpbench complexity`: the per-layer time and memory model of every algorithm, as CSV and Markdown."""

from __future__ import annotations

from dpbench.cli import positive_int
from dpbench.complexity import model_complexity, to_markdown
from dpbench.results import write_text_atomic


def register(subparsers) -> None:
    p = subparsers.add_parser("complexity", help="predicted per-layer FLOPs and extra memory of every algorithm")
    p.add_argument("--model", required=True, help="model name from the registry (dpbench.models)")
    p.add_argument("--image-size", type=positive_int, default=None, help="input height = width (default: the model's)")
    p.add_argument("--num-classes", type=positive_int, default=10)
    p.add_argument("--batch-size", type=positive_int, default=1, help="batch size B of the costs (default: 1)")
    p.add_argument("--out-csv", required=True, help="per-layer table, CSV")
    p.add_argument("--out-md", default=None, help="the same as a Markdown report (optional)")
    p.set_defaults(func=run)


def run(args) -> int:
    frame = model_complexity(args.model, args.image_size, args.num_classes, args.batch_size)
    write_text_atomic(args.out_csv, frame.to_csv(index=False))
    if args.out_md:
        write_text_atomic(args.out_md, to_markdown(frame))
    total = frame.iloc[-1]
    print(f"{args.model} at {frame.iloc[0]['image_size']}²: {len(frame) - 1} layers; predicted time / nonprivate: "
          + ", ".join(f"{a.removeprefix('time_')} {total[a] / total['time_nonprivate']:.2f}"
                      for a in frame.columns if a.startswith("time_")))
    return 0
