"""The max-batch search: double until a probe fails, then bisect to a tolerance.

Pure logic: the probe is any callable batch_size -> ProbeResult, so the search is testable with a fake.
A probe that fails for a non-memory reason must raise; it is not a result.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable


@dataclass(frozen=True)
class ProbeResult:
    """One probe: did `batch_size` fit, its peak memory, and why it failed ("oom" | "over_budget")."""

    batch_size: int
    ok: bool
    peak_memory_bytes: int | None = None
    reason: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class SearchResult:
    """The largest batch size that fitted (0 if none did) and every probe made, in order."""

    max_batch_size: int
    probes: list[ProbeResult]


def search_max_batch(probe: Callable[[int], ProbeResult], start: int, limit: int,
                     tolerance: int = 1) -> SearchResult:
    """Largest batch size b ≤ limit with probe(b).ok, assuming fitting is monotone in b.

    Probes start, 2·start, 4·start, … (capped at limit) until one fails, then bisects between the
    largest success and the smallest failure until they differ by at most `tolerance`. If `start`
    itself fails, the bisection runs between 0 and start, so the answer can be any size down to 0.
    """
    if start < 1 or limit < start or tolerance < 1:
        raise ValueError(f"need 1 <= start <= limit and tolerance >= 1, got start={start}, "
                         f"limit={limit}, tolerance={tolerance}")
    probes: list[ProbeResult] = []

    def run(batch_size: int) -> bool:
        result = probe(batch_size)
        probes.append(result)
        return result.ok

    largest_ok, smallest_failed = 0, None
    batch_size = start
    while True:
        if run(batch_size):
            largest_ok = batch_size
            if batch_size >= limit:
                break
            batch_size = min(2 * batch_size, limit)
        else:
            smallest_failed = batch_size
            break
    if smallest_failed is not None:
        while smallest_failed - largest_ok > tolerance:
            middle = (largest_ok + smallest_failed) // 2
            if run(middle):
                largest_ok = middle
            else:
                smallest_failed = middle
    return SearchResult(largest_ok, probes)
