"""Paired timing for the speed grid: every cached run sits between two uncached runs of its own,
and each row is repeated until its range is tight, a cap is reached, or the time budget is spent.

Why pairs: on a shared CPU the machine's speed drifts over minutes (another program starts, the
page cache is evicted). An uncached time measured once, minutes away from a cached run, puts
that drift into the speedup; a cached run compared with the uncached runs just before and after
it sees the same machine. Why repeats: one pair cannot tell noise from speed; the spread of a
few pairs can, and a row whose pairs stay far apart is marked instead of trusted.

The runs go round the rows (U C1 U C2 U ... U C1 U ...): each cached run still has its own two
neighbours, one uncached run serves the pair on either side of it (one uncached run per cached
run instead of two), and a row's pairs are spread over the whole run rather than bunched in one
minute, so its range also sees the machine's slow drift.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

# Fewer pairs than this never count as a tight range: two close pairs are often luck.
MIN_PAIRS = 3


@dataclass(frozen=True)
class Policy:
    """When a row stops: ``max_pairs`` pairs, or at least ``MIN_PAIRS`` whose range is within
    ``spread`` of their median; and no new pair once ``budget_s`` seconds have gone since
    ``started`` (0: no budget). Every row gets its first pair whatever the budget says, so the
    table is never missing a row."""

    max_pairs: int = 5
    spread: float = 0.10
    budget_s: float = 0.0

    @property
    def min_pairs(self) -> int:
        return min(MIN_PAIRS, self.max_pairs)


@dataclass
class RowTiming:
    """One row's pairs: the cached run's UNet seconds, and the mean of its two neighbours'."""

    cached: list[float] = field(default_factory=list)
    uncached: list[float] = field(default_factory=list)

    def add(self, before: float, cached: float, after: float) -> None:
        self.cached.append(cached)
        self.uncached.append((before + after) / 2)

    @property
    def speedups(self) -> list[float]:
        return [off / on for off, on in zip(self.uncached, self.cached, strict=True)]

    @property
    def median(self) -> float:
        return statistics.median(self.speedups)

    @property
    def spread(self) -> float:
        """Range (highest - lowest pair) as a fraction of the median."""
        pairs = self.speedups
        return (max(pairs) - min(pairs)) / statistics.median(pairs)

    def tight(self, policy: Policy) -> bool:
        """Enough pairs, and their range within the policy's spread: the row can be trusted."""
        enough = len(self.cached) >= max(policy.min_pairs, 2)
        return enough and self.spread <= policy.spread

    def done(self, policy: Policy) -> bool:
        return len(self.cached) >= policy.max_pairs or self.tight(policy)


@dataclass
class Timed:
    """The pairs of every row, and whether the budget stopped rows that were not done."""

    rows: list[RowTiming]
    budget_hit: bool = False


def time_pairs(
    count: int,
    run_uncached: Callable[[], float],
    run_cached: Callable[[int], float],
    policy: Policy,
    clock: Callable[[], float] = time.monotonic,
    started: float | None = None,
) -> Timed:
    """Time ``count`` rows in rounds of (cached run, uncached run) for every row not done.

    ``run_uncached()`` and ``run_cached(row)`` sample once and return the UNet seconds they
    measured; ``clock`` (wall seconds) only decides whether the next pair still fits the budget,
    estimated from the last uncached run and the row's last cached run (or, before its first,
    the last uncached run: a cached run is never slower by design)."""
    started = clock() if started is None else started
    timed = Timed([RowTiming() for _ in range(count)])
    wall: dict[int | None, float] = {}

    def timed_run(key: int | None) -> float:
        begin = clock()
        seconds = run_uncached() if key is None else run_cached(key)
        wall[key] = clock() - begin
        return seconds

    before = timed_run(None)
    while open_rows := [i for i, row in enumerate(timed.rows) if not row.done(policy)]:
        for i in open_rows:
            estimate = wall.get(i, wall[None]) + wall[None]
            over = policy.budget_s and clock() + estimate > started + policy.budget_s
            if over and timed.rows[i].cached:
                timed.budget_hit = True
                continue
            cached = timed_run(i)
            after = timed_run(None)
            timed.rows[i].add(before, cached, after)
            before = after
        if timed.budget_hit:
            break
    return timed


def pairs_text(policy: Policy) -> str:
    """The settings line's words for the policy."""
    budget = f"{policy.budget_s:g} s budget" if policy.budget_s else "no time budget"
    within = f"within {policy.spread:.0%} of the median"
    if policy.min_pairs == policy.max_pairs:
        return f"{policy.max_pairs} per row (tight: range {within}), {budget}"
    count = f"{policy.min_pairs}-{policy.max_pairs} per row"
    return f"{count} (stop once the range is {within}), {budget}"
