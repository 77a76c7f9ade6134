"""Command-line options shared by `dpbench bench` and `dpbench maxbatch`."""

from __future__ import annotations

import argparse
from dataclasses import replace

from dpbench.measure.config import DTYPES, BenchConfig


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def memory_size(text: str) -> int:
    """argparse type for --memory-budget: a size such as 16GiB, 512MiB, 2GB or bytes."""
    from dpbench.measure.memory import parse_memory_size

    try:
        return parse_memory_size(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def one_line_errors(parser: argparse.ArgumentParser) -> None:
    """Make argparse report a bad argument of this subcommand as one line (no usage block), exit 2."""
    def error(message: str):
        parser.exit(2, f"{parser.prog}: error: {message}\n")
    parser.error = error


def add_config_arguments(parser: argparse.ArgumentParser, *, steps: int, warmup: int) -> None:
    """The options that define one measured configuration (all but the batch size)."""
    parser.add_argument("--algorithm", required=True, help="clipping algorithm (see dpbench.clipping.ALGORITHMS)")
    parser.add_argument("--model", required=True, help="model name from the registry (dpbench.models)")
    parser.add_argument("--image-size", type=positive_int, default=None, help="input height = width (default: the model's)")
    parser.add_argument("--num-classes", type=positive_int, default=10)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    parser.add_argument("--dtype", default="float32", choices=DTYPES)
    parser.add_argument("--steps", type=positive_int, default=steps, help=f"timed steps (default: {steps})")
    parser.add_argument("--warmup", type=non_negative_int, default=warmup, help=f"untimed warm-up steps (default: {warmup})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--max-grad-norm", type=float, default=1.0, help="clipping norm R (default: 1.0)")
    parser.add_argument("--noise-multiplier", type=float, default=1.0, help="noise multiplier σ (default: 1.0)")


def config_from_args(args: argparse.Namespace, batch_size: int) -> BenchConfig:
    """The validated configuration, with the model's default image size filled in."""
    from dpbench.models import default_image_size

    config = BenchConfig(algorithm=args.algorithm, model=args.model, batch_size=batch_size,
                         image_size=args.image_size, num_classes=args.num_classes, device=args.device,
                         dtype=args.dtype, steps=args.steps, warmup=args.warmup, seed=args.seed,
                         threads=args.threads, max_grad_norm=args.max_grad_norm,
                         noise_multiplier=args.noise_multiplier).validate()
    default = default_image_size(config.model)  # also rejects an unknown model before any process starts
    return replace(config, image_size=config.image_size or default)
