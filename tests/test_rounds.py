"""dpbench.measure.rounds: the order of alternating rounds the comparison scripts run in."""

from __future__ import annotations

from dpbench.measure.rounds import alternating_rounds, run_rounds


def test_each_round_rotates_the_algorithms_and_reverses_the_variants():
    runs = alternating_rounds([("vgg11", 32)], ["a", "b", "c"], rounds=3, variants=("before", "after"))
    assert [(r.round, r.algorithm, r.variant) for r in runs] == [
        (0, "a", "before"), (0, "a", "after"), (0, "b", "before"), (0, "b", "after"), (0, "c", "before"), (0, "c", "after"),
        (1, "b", "after"), (1, "b", "before"), (1, "c", "after"), (1, "c", "before"), (1, "a", "after"), (1, "a", "before"),
        (2, "c", "before"), (2, "c", "after"), (2, "a", "before"), (2, "a", "after"), (2, "b", "before"), (2, "b", "after")]
    assert {r.configuration for r in runs} == {("vgg11", 32)}


def test_runs_come_back_in_order_whatever_the_number_at_a_time():
    runs = alternating_rounds([("m", 1), ("m", 2)], ["x", "y"], rounds=2)
    seen = []
    for jobs in (1, 2):
        results = run_rounds(runs, lambda r: (r.configuration[1], r.round, r.algorithm), jobs, seen.append)
        assert results == [(1, 0, "x"), (1, 0, "y"), (1, 1, "y"), (1, 1, "x"),
                           (2, 0, "x"), (2, 0, "y"), (2, 1, "y"), (2, 1, "x")]
    assert seen == results * 2
