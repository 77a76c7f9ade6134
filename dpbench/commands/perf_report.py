"""`dpbench perf-report`: paper/performance.md, the targets of issue 6 measured in this run, the
before/after table and the torch.profiler summary per algorithm."""

from __future__ import annotations

from dpbench.errors import DpbenchError
from dpbench.measure.cli_args import one_line_errors


def register(subparsers) -> None:
    p = subparsers.add_parser("perf-report", help="the performance report (Markdown): targets, before/after, profiles")
    one_line_errors(p)
    p.add_argument("--bench", nargs="*", default=[], metavar="JSON", help="bench results of this run")
    p.add_argument("--maxbatch", nargs="*", default=[], metavar="JSON", help="maxbatch results of this run")
    p.add_argument("--profile", nargs="*", default=[], metavar="JSON", help="profile results of this run")
    p.add_argument("--before-after", metavar="CSV",
                   help="before/after table (paper/perf_before_after.csv); without it the report says 'not measured'")
    p.add_argument("--ratios", metavar="CSV",
                   help="ratios to nonprivate over alternating runs (paper/perf_ratios.csv); without it the report "
                        "says 'not measured'")
    p.add_argument("--out", required=True, help="the Markdown report to write")
    p.set_defaults(func=run)


def run(args) -> int:
    from dpbench.report import performance
    from dpbench.results import write_text_atomic

    if not (args.bench or args.maxbatch or args.profile):
        raise DpbenchError("no result files given (--bench, --maxbatch or --profile)")
    bench = performance.bench_frame(args.bench)
    maxbatch = performance.maxbatch_frame(args.maxbatch)
    profiles = performance.profile_results(args.profile)
    before_after = performance.read_before_after(args.before_after)
    alternating = performance.read_alternating_ratios(args.ratios)
    environments = (list(bench["environment"]) + [p["environment"] for p in profiles]
                    + [performance.maxbatch_environment(path) for path in args.maxbatch])
    text = performance.render(bench, maxbatch, profiles, before_after, environments,
                              [*args.bench, *args.maxbatch, *args.profile], alternating)
    write_text_atomic(args.out, text)
    print(f"dpbench perf-report: wrote {args.out}")
    return 0

