"""Paired timing (lib_deepcache/bench/pairing.py): which runs happen in which order, which
uncached runs each cached run is compared with, when a row stops, and the marks and the reading
line of the table. Hand-written timings and a fake clock: nothing here is timed."""

from __future__ import annotations

import pytest

from lib_deepcache.bench.pairing import Policy, RowTiming, time_pairs
from lib_deepcache.bench.report import Report, Row
from lib_deepcache.bench.speed import fill_timing


class FakeRuns:
    """Hands out prepared UNet seconds per run, logs the order, and moves a fake clock on by
    each run's wall seconds (the UNet seconds unless ``wall`` says otherwise)."""

    def __init__(self, uncached, cached, wall=None):
        self.uncached = list(uncached)
        self.cached = {row: list(times) for row, times in cached.items()}
        self.wall = wall or {}
        self.order: list[int | None] = []
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    def run_uncached(self) -> float:
        self.order.append(None)
        seconds = self.uncached.pop(0)
        self.now += self.wall.get(None, seconds)
        return seconds

    def run_cached(self, row: int) -> float:
        self.order.append(row)
        seconds = self.cached[row].pop(0)
        self.now += self.wall.get(row, seconds)
        return seconds


U = None  # an uncached run in an expected order


def test_each_cached_run_is_paired_with_the_uncached_runs_just_before_and_after_it():
    # the machine slows down steadily: uncached 10, 12, 14, ... seconds
    runs = FakeRuns(uncached=[10, 12, 14, 16, 18, 20, 22], cached={0: [2, 2.6, 3], 1: [5, 6.5, 7]})
    timed = time_pairs(2, runs.run_uncached, runs.run_cached, Policy(3, 0.5), runs.clock)
    assert runs.order == [U, 0, U, 1, U, 0, U, 1, U, 0, U, 1, U]
    # row 0 sits between 10|12, 14|16, 18|20; row 1 between 12|14, 16|18, 20|22
    assert timed.rows[0].uncached == [11, 15, 19]
    assert timed.rows[1].uncached == [13, 17, 21]
    assert timed.rows[0].speedups == pytest.approx([11 / 2, 15 / 2.6, 19 / 3])
    assert timed.rows[1].speedups == pytest.approx([13 / 5, 17 / 6.5, 21 / 7])
    assert not timed.budget_hit


def test_a_row_stops_at_three_tight_pairs_and_a_wide_one_goes_on_to_the_cap():
    # row 0: 3.0x every time (tight at 3 pairs); row 1: 2.0x, 4.0x, ... (never within 10 %)
    runs = FakeRuns(uncached=[8.0] * 20, cached={0: [8 / 3] * 5, 1: [4.0, 2.0] * 3})
    timed = time_pairs(2, runs.run_uncached, runs.run_cached, Policy(5, 0.10), runs.clock)
    assert runs.order == [U, 0, U, 1, U, 0, U, 1, U, 0, U, 1, U, 1, U, 1, U]
    assert [len(row.cached) for row in timed.rows] == [3, 5]
    assert timed.rows[0].tight(Policy(5, 0.10))
    assert not timed.rows[1].tight(Policy(5, 0.10))
    assert timed.rows[1].median == pytest.approx(2.0)  # 2, 4, 2, 4, 2
    assert timed.rows[1].spread == pytest.approx((4 - 2) / 2)


@pytest.mark.parametrize(
    ("speedups", "tight"),
    [
        ([3.0, 3.0], False),  # two equal pairs: too few to trust
        ([3.0, 3.0, 3.0], True),
        ([2.85, 3.0, 3.15], True),  # range 0.30 = 10 % of the median 3.0: still tight
        ([2.8, 3.0, 3.15], False),  # range 0.35 > 10 %
        ([1.0, 3.0, 3.0, 3.0, 3.0], False),  # one outlier widens the range
    ],
)
def test_a_range_is_tight_with_three_pairs_within_the_spread_of_their_median(speedups, tight):
    row = RowTiming(cached=[1.0] * len(speedups), uncached=list(speedups))
    assert row.tight(Policy(5, 0.10)) is tight


def test_one_pair_is_never_tight_even_when_the_cap_is_one():
    row = RowTiming(cached=[1.0], uncached=[3.0])
    assert Policy(max_pairs=1).min_pairs == 1
    assert row.done(Policy(max_pairs=1)) and not row.tight(Policy(max_pairs=1))


def test_the_budget_stops_new_pairs_but_every_row_gets_one():
    # uncached runs take 100 s and cached 40 s of wall time; a budget of 150 s is spent by the
    # first uncached run and pair already, yet row 1 still gets its first pair
    runs = FakeRuns(uncached=[10] * 9, cached={0: [1, 5, 9], 1: [2, 7, 3]})
    runs.wall = {None: 100.0, 0: 40.0, 1: 40.0}
    policy = Policy(5, 0.10, budget_s=150)
    timed = time_pairs(2, runs.run_uncached, runs.run_cached, policy, runs.clock)
    assert runs.order == [U, 0, U, 1, U]
    assert timed.budget_hit and [len(row.cached) for row in timed.rows] == [1, 1]


def test_the_budget_counts_from_the_start_and_lets_pairs_in_while_they_fit():
    # each pair costs 10 + 10 s; the bench started 25 s before the first run (building the
    # model); budget 75 s: the first uncached run ends at 35, then pairs end at 55 and 75 (fits
    # exactly); the next would end at 95
    runs = FakeRuns(uncached=[10] * 9, cached={0: [1, 2, 4, 8, 16]}, wall={None: 10, 0: 10})
    runs.now = 25.0
    timed = time_pairs(
        1, runs.run_uncached, runs.run_cached, Policy(5, 0.10, 75), runs.clock, started=0.0
    )
    assert runs.order == [U, 0, U, 0, U]
    assert timed.budget_hit and len(timed.rows[0].cached) == 2


def test_without_budget_a_wide_row_runs_to_the_cap():
    runs = FakeRuns(uncached=[10] * 9, cached={0: [1, 2, 4, 8, 16]}, wall={None: 1e6, 0: 1e6})
    timed = time_pairs(1, runs.run_uncached, runs.run_cached, Policy(4, 0.10), runs.clock)
    assert runs.order == [U, 0, U, 0, U, 0, U, 0, U]
    assert not timed.budget_hit


def _row(flop_speedup: float, timing: RowTiming, policy: Policy) -> Row:
    # 4 full / 6 cached of 10 steps at N=3: the FLOP speedup is under the limit S
    limit = flop_speedup + 0.5
    row = Row(3, 0, "uniform", 4, 6, flop_speedup=flop_speedup, limit=limit)
    fill_timing(row, timing, policy)
    return row


def test_a_rows_columns_come_from_its_pairs():
    timing = RowTiming(cached=[10.0, 12.0, 8.0], uncached=[20.0, 36.0, 32.0])
    row = _row(2.5, timing, Policy(5, 0.10))
    assert row.pairs == pytest.approx([2.0, 3.0, 4.0])
    # the median pair, not the median uncached over the median cached time (32 / 10)
    assert row.measured_speedup == pytest.approx(3.0)
    assert (row.speedup_low, row.speedup_high) == pytest.approx((2.0, 4.0))
    assert (row.unet_seconds_off, row.unet_seconds_on) == (32.0, 10.0)
    assert row.efficiency == pytest.approx(3.0 / 2.5)
    assert row.wide and not row.above_flops and row.mark == "*"  # 2.0x is under 2.5x


@pytest.mark.parametrize(
    ("uncached", "mark"),
    [
        # tight, and the slowest pair (3.0x) beats the FLOP speedup 2.9x (not the limit 3.4x)
        ([30.0, 31.0, 32.0], "^"),
        ([28.0, 29.0, 30.0], ""),  # tight; the slowest pair (2.8x) is under the FLOP speedup
        ([24.0, 31.0, 40.0], "*"),  # wide, reaching under the FLOP speedup
        ([30.0, 34.0, 40.0], "*^"),  # wide, and all of it above the FLOP speedup
    ],
)
def test_marks_say_wide_and_above_the_flop_speedup(uncached, mark):
    row = _row(2.9, RowTiming(cached=[10.0] * 3, uncached=uncached), Policy(5, 0.10))
    assert row.mark == mark
    report = Report({"steps": 15}, [row], Policy(5, 0.10))
    table_row = next(line for line in report.to_markdown().splitlines() if "N=3" in line)
    assert f"| {row.measured_speedup:.2f}x {mark} |".replace("  |", " |") in table_row


def test_the_reading_line_names_the_threshold_and_the_budget_when_it_stopped_repeats():
    report = Report({"steps": 15}, [], Policy(5, 0.15, 240))
    line = report.how_to_read()
    assert "under 3 pairs" in line and "wider than 15% of the median" in line
    assert "busy machine widens" in line and "budget" not in line
    report.budget_hit = True
    assert "The 240 s budget stopped repeats" in report.how_to_read()
    markdown = report.to_markdown()
    assert markdown.rstrip().splitlines()[-1] == report.how_to_read()
    assert len([line for line in markdown.splitlines() if "How to read" in line]) == 1
