"""`dpbench audit`: the zoo audit (dpbench/audit.py) of every timm family and torchvision classification
model, or a seeded random sample of them, as CSV and Markdown."""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path

from dpbench.cli import positive_int
from dpbench.errors import DpbenchError


def _positive_float(text: str) -> float:
    import argparse

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def register(subparsers) -> None:
    from dpbench import audit

    p = subparsers.add_parser("audit", help="every timm family and torchvision classifier against brute-force "
                                            "per-sample gradients (own algorithms and Opacus)")
    p.add_argument("--entries", nargs="+", default=None, metavar="ENTRY",
                   help="timm/FAMILY or torchvision/MODEL entries (default: the whole zoo)")
    p.add_argument("--sample", type=positive_int, default=None, help="a random sample of this many entries")
    p.add_argument("--seed", type=int, default=0, help="seed of the sample (default 0)")
    p.add_argument("--timeout", type=_positive_float, default=audit.DEFAULT_TIMEOUT,
                   help=f"seconds per model, its process killed after (default {audit.DEFAULT_TIMEOUT:.0f})")
    p.add_argument("--max-params", type=positive_int, default=audit.DEFAULT_MAX_PARAMS,
                   help=f"skip models with more parameters (default {audit.DEFAULT_MAX_PARAMS})")
    p.add_argument("--memory-gib", type=_positive_float, default=audit.DEFAULT_MEMORY_GIB,
                   help=f"memory limit per model process in GiB (default {audit.DEFAULT_MEMORY_GIB:g})")
    p.add_argument("--raw", default=None, help="append each model's row to this JSON-lines file as it ends")
    p.add_argument("--resume", action="store_true", help="keep the rows already in --raw, run only the others")
    p.add_argument("--report-only", action="store_true",
                   help="run nothing: write the CSV and Markdown from the rows in --raw (the command recorded "
                        "is the one without --raw and --report-only)")
    p.add_argument("--out-csv", required=True, help="the table, CSV (e.g. paper/zoo_audit.csv)")
    p.add_argument("--out-md", required=True, help="the report, Markdown (e.g. paper/zoo_audit.md)")
    p.set_defaults(func=run)


def command_line(args) -> str:
    """The command that regenerates this result (every option that is not its default)."""
    from dpbench import audit

    parts = ["dpbench", "audit"]
    if args.entries:
        parts += ["--entries", *args.entries]
    if args.sample is not None:
        parts += ["--sample", str(args.sample), "--seed", str(args.seed)]
    for flag, value, default in (("--timeout", args.timeout, audit.DEFAULT_TIMEOUT),
                                 ("--max-params", args.max_params, audit.DEFAULT_MAX_PARAMS),
                                 ("--memory-gib", args.memory_gib, audit.DEFAULT_MEMORY_GIB)):
        if value != default:
            parts += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
    parts += ["--out-csv", args.out_csv, "--out-md", args.out_md]
    return shlex.join(parts)


def run(args) -> int:
    from dpbench import audit
    from dpbench.results import write_text_atomic

    if (args.resume or args.report_only) and not args.raw:
        raise DpbenchError("--resume and --report-only need --raw FILE (the rows of the earlier run)")
    entries = audit.zoo_entries()
    if args.entries:
        unknown = [e for e in args.entries if e not in entries]
        if unknown:
            raise DpbenchError(f"not in the zoo: {', '.join(unknown)} (entries are timm/FAMILY or "
                               "torchvision/MODEL, see dpbench.audit.zoo_entries())")
        entries = [e for e in entries if e in set(args.entries)]
    done = {}
    if (args.resume or args.report_only) and Path(args.raw).exists():
        for line in Path(args.raw).read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                done[row["entry"]] = row
    chosen = audit.sample_entries(entries, args.sample, args.seed)
    t0 = time.perf_counter()
    count = iter(range(1, len(chosen) + 1))

    def progress(row):
        if args.raw:
            Path(args.raw).parent.mkdir(parents=True, exist_ok=True)
            with open(args.raw, "a") as fh:
                fh.write(json.dumps(row) + "\n")
        statuses = " ".join(f"{a}={row[a]}" for a in audit.STATUS_COLUMNS)
        print(f"[{next(count)}/{len(chosen)}] {row['entry']} {row['model']} ({row['seconds']} s): "
              f"{row['status']} {statuses}", file=sys.stderr, flush=True)

    if args.report_only:
        missing = [e for e in chosen if e not in done]
        if missing:
            raise DpbenchError(f"--report-only: {len(missing)} entries have no row in {args.raw}, e.g. {missing[0]}")
        rows = [done[e] for e in chosen]
    else:
        rows = audit.audit(chosen, timeout=args.timeout, max_params=args.max_params, memory_gib=args.memory_gib,
                           done=done, progress=progress)
    elapsed = sum(float(r["seconds"] or 0) for r in rows)
    write_text_atomic(args.out_csv, audit.to_csv(rows))
    write_text_atomic(args.out_md, audit.to_markdown(rows, command_line(args), audit.environment(), elapsed))
    c = audit.counts(rows)
    print(f"{len(rows)} entries in {(time.perf_counter() - t0) / 60:.1f} min; "
          + "; ".join(f"{a}: " + ", ".join(f"{k} {v}" for k, v in sorted(c[a].items())) for a in audit.STATUS_COLUMNS))
    return 0
