"""`dpbench perf-report`: paper/performance.md, the CNN performance targets measured in this run, the
before/after table and the torch.profiler summary per algorithm; with `--layout vit` the vision
transformers' report (paper/vit_performance.md), rendered from the committed ratios over alternating runs
of both engines and the before/after table, with the profiles of this run."""

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
    p.add_argument("--layout", choices=["study", "vit"], default="study",
                   help="study: the targets of this run's results (default); vit: the vision transformers' "
                        "targets before and after, from --ratios and --before-after, with this run's profiles")
    p.add_argument("--cost-model", nargs="*", default=[], metavar="CSV",
                   help="--layout vit: `dpbench complexity` tables whose predicted time ratios are shown beside the "
                        "measured ones (the analytic bound of each algorithm)")
    p.add_argument("--out", required=True, help="the Markdown report to write")
    p.set_defaults(func=run)


def run(args) -> int:
    from dpbench.report import load, performance
    from dpbench.results import write_text_atomic

    if args.layout == "vit":
        return run_vit(args)
    if not (args.bench or args.maxbatch or args.profile):
        raise DpbenchError("no result files given (--bench, --maxbatch or --profile)")
    bench = load.bench_frame(args.bench)
    maxbatch = load.maxbatch_frame(args.maxbatch)
    profiles = load.profile_results(args.profile)
    before_after = load.read_before_after(args.before_after)
    alternating = load.read_after_ratios(args.ratios)
    environments = (list(bench["environment"]) + [p["environment"] for p in profiles]
                    + [load.maxbatch_environment(path) for path in args.maxbatch])
    text = performance.render(bench, maxbatch, profiles, before_after, environments,
                              [*args.bench, *args.maxbatch, *args.profile], alternating)
    write_text_atomic(args.out, text)
    print(f"dpbench perf-report: wrote {args.out}")
    return 0



def run_vit(args) -> int:
    from pathlib import Path

    from dpbench.report import load, ratios, vit_performance
    from dpbench.results import write_text_atomic

    if args.cost_model and args.layout != "vit":
        raise DpbenchError("--cost-model is shown by --layout vit only")
    if args.bench or args.maxbatch:
        raise DpbenchError("--layout vit reads the committed --ratios and --before-after, not --bench or --maxbatch")
    if not (args.ratios or args.before_after or args.profile):
        raise DpbenchError("nothing to report (--ratios, --before-after or --profile)")

    def name(path):  # as the report names a committed CSV: its folder and file (paper/vit_ratios.csv)
        return "/".join(Path(path).parts[-2:]) if path else "—"

    bounds = ratios.cost_model_bounds(load.complexity_frame(args.cost_model)) if args.cost_model else {}
    text = vit_performance.render(load.read_ratio_table(args.ratios), load.read_before_after(args.before_after),
                                  load.profile_results(args.profile), name(args.ratios), name(args.before_after),
                                  bounds)
    write_text_atomic(args.out, text)
    print(f"dpbench perf-report: wrote {args.out}")
    return 0
