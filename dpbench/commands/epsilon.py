"""`dpbench epsilon`: the ε of DP-SGD for a noise multiplier, sampling rate, number of steps and δ."""

from __future__ import annotations

import json

from dpbench.accounting import ACCOUNTANTS, epsilon


def add_accountant_arguments(parser) -> None:
    """--accountant and --json, shared with `dpbench noise`."""
    parser.add_argument("--accountant", choices=ACCOUNTANTS, default="prv",
                        help="prv: upper bound of the PRV accountant (default); rdp: Opacus' RDP analysis; "
                             "gdp: Opacus' Gaussian-DP (CLT) approximation, not an upper bound")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a sentence")


def register(subparsers) -> None:
    p = subparsers.add_parser("epsilon", help="privacy budget ε spent by DP-SGD with Poisson sampling")
    p.add_argument("--noise-multiplier", type=float, required=True, help="noise multiplier σ")
    p.add_argument("--sampling-rate", type=float, required=True, help="Poisson sampling rate q in (0, 1]")
    p.add_argument("--steps", type=int, required=True, help="number of noisy steps (logical batches)")
    p.add_argument("--delta", type=float, required=True, help="δ in (0, 1)")
    add_accountant_arguments(p)
    p.set_defaults(func=run)


def run(args) -> int:
    eps = epsilon(args.noise_multiplier, args.sampling_rate, args.steps, args.delta, args.accountant)
    if args.json:
        print(json.dumps({"epsilon": eps, "noise_multiplier": args.noise_multiplier,
                          "sampling_rate": args.sampling_rate, "steps": args.steps, "delta": args.delta,
                          "accountant": args.accountant}))
    else:
        print(f"epsilon = {eps:.4f} ({args.accountant} accountant; noise_multiplier {args.noise_multiplier:g}, "
              f"sampling_rate {args.sampling_rate:g}, steps {args.steps}, delta {args.delta:g})")
    return 0
