"""`dpbench noise`: the noise multiplier σ that reaches a target ε for DP-SGD with Poisson sampling."""

from __future__ import annotations

import json

from dpbench.accounting import SEARCH_TOLERANCE, epochs_to_steps, epsilon, noise_multiplier_for
from dpbench.commands.epsilon import add_accountant_arguments


def register(subparsers) -> None:
    p = subparsers.add_parser("noise", help="noise multiplier σ for a target ε (DP-SGD, Poisson sampling)")
    p.add_argument("--epsilon", type=float, required=True, help="target ε > 0")
    p.add_argument("--delta", type=float, required=True, help="δ in (0, 1)")
    p.add_argument("--sampling-rate", type=float, required=True, help="Poisson sampling rate q in (0, 1]")
    length = p.add_mutually_exclusive_group(required=True)
    length.add_argument("--steps", type=int, help="number of noisy steps (logical batches)")
    length.add_argument("--epochs", type=float, help="number of epochs; steps = ceil(epochs / sampling rate)")
    add_accountant_arguments(p)
    p.set_defaults(func=run)


def run(args) -> int:
    steps = args.steps if args.epochs is None else epochs_to_steps(args.epochs, args.sampling_rate)
    sigma = noise_multiplier_for(args.epsilon, args.delta, args.sampling_rate, steps, args.accountant)
    eps = epsilon(sigma, args.sampling_rate, steps, args.delta, args.accountant)
    if args.json:
        print(json.dumps({"noise_multiplier": sigma, "epsilon": eps, "target_epsilon": args.epsilon,
                          "tolerance": SEARCH_TOLERANCE, "delta": args.delta,
                          "sampling_rate": args.sampling_rate, "steps": steps, "epochs": args.epochs,
                          "accountant": args.accountant}))
    else:
        length = f"steps {steps}" if args.epochs is None else f"epochs {args.epochs:g} = steps {steps}"
        # Full precision: a rounded-down σ could spend slightly more than the target.
        print(f"noise_multiplier = {sigma!r} (epsilon {eps:.4f} <= target {args.epsilon:g}, {args.accountant} "
              f"accountant; sampling_rate {args.sampling_rate:g}, {length}, delta {args.delta:g})")
    return 0
