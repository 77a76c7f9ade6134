"""The `dpbench` command. Each subcommand lives in its own module under dpbench/commands/ and
defines `register(subparsers)`; they are discovered here, so adding one touches no shared file. Here
too: every subcommand reports a bad argument as one line (exit 2), and the argparse types they share."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

import dpbench
from dpbench.errors import DpbenchError


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand found in dpbench.commands."""
    import dpbench.commands as commands

    parser = argparse.ArgumentParser(prog="dpbench", description="dpbench: exact DP-SGD clipping algorithms and their benchmarks")
    parser.add_argument("--version", action="version", version=f"dpbench {dpbench.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"dpbench.commands.{info.name}")
        module.register(sub)
    for subcommand in sub.choices.values():
        one_line_errors(subcommand)
    return parser


def one_line_errors(parser: argparse.ArgumentParser) -> None:
    """Make argparse report a bad argument of this subcommand as one line (no usage block), exit 2."""
    def error(message: str):
        parser.exit(2, f"{parser.prog}: error: {message}\n")
    parser.error = error


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _int_at_least(text, 0)


def memory_size(text: str) -> int:
    """argparse type for --memory-budget: a size such as 16GiB, 512MiB, 2GB or bytes."""
    from dpbench.measure.memory import parse_memory_size

    try:
        return parse_memory_size(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; user errors become one line on stderr and exit code 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except DpbenchError as err:
        print(f"dpbench {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dpbench {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
