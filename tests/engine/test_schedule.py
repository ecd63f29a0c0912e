"""The refresh schedule: a pure function of (params, step, executed steps).

Expected values are worked out by hand from the README's rule, or re-derived in the test from its
text: the window is ``[start, end)`` as fractions of the executed steps; outside it (and at step
0) every step is full; inside it uniform refreshes at the window's first step and every
interval-th step after it; non-uniform makes as many refreshes, denser near 30% of the window.
"""

from __future__ import annotations

import itertools

from hypothesis import example, given
from hypothesis import strategies as st

from lib_deepcache.engine.params import DeepCacheParams
from lib_deepcache.engine.schedule import full_steps, is_full_step, last_cached_step, window


def p(**kw):
    return DeepCacheParams(enabled=True, **kw)


def test_uniform_refreshes_every_interval_steps():
    # interval 3, 10 steps: full at 0, 3, 6, 9; interval 1: every step full
    assert full_steps(p(interval=3), 10) == [0, 3, 6, 9]
    assert full_steps(p(interval=1), 4) == [0, 1, 2, 3]


def test_window_is_a_fraction_of_the_executed_steps():
    """img2img at strength 0.5 of 20 steps executes 10: the window counts those 10.
    20%..80% of 10 = steps 2..7; interval 2 refreshes at window offsets 0, 2, 4 (steps 2, 4, 6);
    steps 0, 1 and 8, 9 lie outside: full at 0, 1, 2, 4, 6, 8, 9."""
    assert list(window(p(start=0.2, end=0.8), 10)) == [2, 3, 4, 5, 6, 7]
    assert full_steps(p(interval=2, start=0.2, end=0.8), 10) == [0, 1, 2, 4, 6, 8, 9]


def test_a_warmup_of_two_makes_the_second_step_full_and_counts_on_from_it():
    """Warm-up 2 (a forecast that runs no block): steps 0 and 1 full, then every interval-th
    from step 1: interval 3 over 10 steps, full 0, 1, 4, 7; a window opening later keeps its own
    start (20 % of 10: full 0, 1, 2, 5, 8); adaptive never caches step 1 either."""
    assert full_steps(p(interval=3), 10, warmup=2) == [0, 1, 4, 7]
    assert full_steps(p(interval=3, start=0.2), 10, warmup=2) == [0, 1, 2, 5, 8]
    adaptive = p(schedule="adaptive", threshold=0.5)
    assert [is_full_step(adaptive, i, 10, warmup=2) for i in range(3)] == [True, True, False]
    assert last_cached_step(p(interval=3), 10, warmup=2) == 9


def test_steps_past_the_expected_count_are_full():
    assert is_full_step(p(interval=3), 12, 10)


def test_non_uniform_is_denser_near_the_center_with_the_uniform_count():
    """Interval 5 over 50 steps: uniform refreshes at 0, 5, ..., 45, 10 of them; non-uniform
    keeps 10, starts at step 0, and its refreshes lie closer together around step 15 (30% of
    50) than at the ends."""
    refreshes = full_steps(p(interval=5, schedule="non-uniform"), 50)
    assert len(refreshes) == 10
    assert refreshes[0] == 0
    gaps = [b - a for a, b in itertools.pairwise(refreshes)]
    center = min(range(len(refreshes)), key=lambda i: abs(refreshes[i] - 15))
    assert gaps[center] < gaps[-1] and gaps[max(center - 1, 0)] <= gaps[0]


def test_last_cached_step():
    # interval 3, 10 steps: full 0, 3, 6, 9, so step 8 is the last cached one
    assert last_cached_step(p(interval=3), 10) == 8
    assert last_cached_step(p(interval=1), 10) == -1
    # end 50% of 10: window 0..4, full 0, 3 and 5..9: cached 1, 2, 4
    assert last_cached_step(p(interval=3, end=0.5), 10) == 4


@given(
    interval=st.integers(1, 20),
    total=st.integers(1, 150),
    start=st.integers(0, 900),
    span=st.integers(50, 1000),
    uniform=st.booleans(),
)
@example(interval=5, total=50, start=0, span=1000, uniform=False)
@example(interval=2, total=150, start=0, span=1000, uniform=False)
@example(interval=10, total=7, start=0, span=1000, uniform=False)
@example(interval=3, total=10, start=300, span=400, uniform=True)
@example(interval=3, total=10, start=300, span=400, uniform=False)
def test_first_step_full_outside_window_full_and_uniform_refresh_count(
    interval, total, start, span, uniform
):
    """``start``/``span`` in thousandths, so the window can be computed exactly: step i lies in
    it when start * total <= i < end * total. Uniform: full exactly at the window's first step
    and every interval-th step after it; non-uniform: as many full steps there."""
    end = min(1000, start + span)
    params = p(
        interval=interval,
        start=start / 1000,
        end=end / 1000,
        schedule="uniform" if uniform else "non-uniform",
    )
    inside = [i for i in range(total) if start * total <= 1000 * i < end * total]
    uniform_refreshes = [i for i in inside if (i - inside[0]) % interval == 0]
    decisions = [is_full_step(params, i, total) for i in range(total)]
    assert decisions[0]
    assert all(decisions[i] for i in range(total) if i not in inside)
    refreshes_inside = [i for i in inside if decisions[i]]
    if uniform:
        assert refreshes_inside == uniform_refreshes
    else:
        assert len(refreshes_inside) == len(uniform_refreshes)
