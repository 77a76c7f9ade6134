"""Alternating rounds: how the scripts that compare algorithms side by side order their runs
(scripts/cpu_reference_bench.py, scripts/perf_before_after.py). Every round runs each algorithm once,
the order rotated by one from round to round, so that no algorithm always runs first or right after
the same neighbour; the variants of one algorithm (the engines before and after a change) run next to
each other, their order reversed every other round."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Hashable, Sequence


@dataclass(frozen=True)
class Run:
    """One run of alternating rounds: a configuration (model, batch size, ...), the round, the algorithm
    and the variant (None without variants)."""

    configuration: tuple
    round: int
    algorithm: str
    variant: Hashable = None


def alternating_rounds(configurations: Sequence[tuple], algorithms: Sequence[str], rounds: int,
                       variants: Sequence[Hashable] = (None,)) -> list[Run]:
    """The runs in the order they are made: configuration by configuration, round by round."""
    algorithms, variants = list(algorithms), list(variants)
    runs = []
    for configuration in configurations:
        for round_index in range(rounds):
            shift = round_index % len(algorithms)
            for algorithm in algorithms[shift:] + algorithms[:shift]:
                order = variants if round_index % 2 == 0 else variants[::-1]
                runs += [Run(tuple(configuration), round_index, algorithm, variant) for variant in order]
    return runs


def run_rounds(runs: list[Run], run: Callable[[Run], object], jobs: int = 1,
               done: Callable[[object], None] | None = None) -> list:
    """`run(r)` for every run in order, `jobs` at a time (threads: each run is expected to start a process
    of its own), `done(result)` as the results come in order; the results in order."""
    results = []
    if jobs == 1:
        outcomes = map(run, runs)
        pool = None
    else:
        pool = ThreadPoolExecutor(jobs)
        outcomes = pool.map(run, runs)
    try:
        for result in outcomes:
            if done is not None:
                done(result)
            results.append(result)
    finally:
        if pool is not None:
            pool.shutdown()
    return results
