"""The refresh schedule: a pure function of (params, step, executed steps)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lib_deepcache.engine.params import DeepCacheParams
from lib_deepcache.engine.schedule import full_steps, is_full_step, last_cached_step, window


def p(**kw):
    return DeepCacheParams(enabled=True, **kw)


def test_uniform_refreshes_every_interval_steps():
    assert full_steps(p(interval=3), 10) == [0, 3, 6, 9]
    assert full_steps(p(interval=1), 4) == [0, 1, 2, 3]


def test_window_is_a_fraction_of_the_executed_steps():
    """img2img at strength 0.5 of 20 steps executes 10: the window counts those 10."""
    assert list(window(p(start=0.2, end=0.8), 10)) == [2, 3, 4, 5, 6, 7]
    assert full_steps(p(interval=2, start=0.2, end=0.8), 10) == [0, 1, 2, 4, 6, 8, 9]


def test_steps_past_the_expected_count_are_full():
    assert is_full_step(p(interval=3), 12, 10)


def test_non_uniform_keeps_the_uniform_count_and_is_denser_near_the_center():
    params = p(interval=5, schedule="non-uniform")
    refreshes = full_steps(params, 50)
    assert len(refreshes) == len(full_steps(p(interval=5), 50)) == 10
    assert refreshes[0] == 0
    gaps = [b - a for a, b in itertools.pairwise(refreshes)]
    center = min(range(len(refreshes)), key=lambda i: abs(refreshes[i] - 15))
    assert gaps[center] < gaps[-1] and gaps[max(center - 1, 0)] <= gaps[0]


def test_last_cached_step():
    assert last_cached_step(p(interval=3), 10) == 8
    assert last_cached_step(p(interval=1), 10) == -1
    assert last_cached_step(p(interval=3, end=0.5), 10) == 4


@given(
    interval=st.integers(1, 20),
    total=st.integers(1, 150),
    start=st.floats(0, 0.9),
    span=st.floats(0.05, 1),
    uniform=st.booleans(),
)
def test_first_step_full_outside_window_full_and_uniform_refresh_count(
    interval, total, start, span, uniform
):
    params = p(
        interval=interval,
        start=start,
        end=min(1.0, start + span),
        schedule="uniform" if uniform else "non-uniform",
    )
    decisions = [is_full_step(params, i, total) for i in range(total)]
    assert decisions[0]
    inside = window(params, total)
    assert all(decisions[i] for i in range(total) if i not in inside)
    refreshes_inside = sum(decisions[i] for i in inside)
    expected = -(-len(inside) // interval)
    assert refreshes_inside == expected


@pytest.mark.parametrize("steps", [1, 2, 3, 7, 20, 50, 150])
@pytest.mark.parametrize("interval", [2, 3, 5, 10])
def test_non_uniform_count_equals_uniform_count_in_the_window(steps, interval):
    uniform = full_steps(p(interval=interval), steps)
    non_uniform = full_steps(p(interval=interval, schedule="non-uniform"), steps)
    assert len(non_uniform) == len(uniform)
