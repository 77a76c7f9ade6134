"""Subcommands of `dpbench`: one module each, each with `register(subparsers)` that sets `func`."""
