"""Which denoising steps refresh the deep feature (full) and which reuse it (cached).

Pure functions of (params, step index, executed steps, warm-up), so the decision for a step never
depends on how many UNet calls a sampler makes. The first ``warmup`` steps are always full (at
least step 0), so a cached step always has a feature stored before it; a forecast that has
nothing else to go on needs two (:data:`FORECAST_WARMUP`).
"""

from __future__ import annotations

import math
from functools import lru_cache

from .params import AUTO_INTERVAL, DeepCacheParams

# The paper tuned its non-uniform schedule on 50 PLMS steps with the densest refreshes around
# step 15 and a power of 1.4; the center is kept at the same fraction of the window.
NON_UNIFORM_CENTER = 0.3
NON_UNIFORM_POWER = 1.4
_POWER_STEP = 0.02
# Full steps before the first cached one when a cached step runs no block at all and forecasts:
# with one full step it has no trajectory yet and holds the first step's feature through the
# first interval, where sampling changes the most (measured: docs/quality.md, warm-up).
FORECAST_WARMUP = 2


def window(params: DeepCacheParams, total_steps: int, warmup: int = 1) -> range:
    """Step indices in which caching may happen: ``[start, end)`` of the executed steps; it
    opens no earlier than step ``warmup - 1``, whose offset 0 is a refresh."""
    first = math.ceil(params.start * total_steps - 1e-9)
    last = math.ceil(params.end * total_steps - 1e-9)
    return range(max(0, warmup - 1, first), min(total_steps, last))


@lru_cache(maxsize=256)
def _non_uniform_refreshes(length: int, interval: int) -> frozenset[int]:
    """Refresh offsets in a window of ``length`` steps, denser around the center.

    As many refreshes as the uniform schedule would make (ceil(length / interval)), placed at
    ``c + sign(u)|u|^p`` for ``u`` evenly spaced, so their spacing grows with the distance from the
    center ``c``. When rounding merges two of them the power is lowered until all are distinct;
    at power 1 the spacing is even, which always fits.
    """
    count = math.ceil(length / interval)
    if count >= length:
        return frozenset(range(length))
    center = NON_UNIFORM_CENTER * length
    power = NON_UNIFORM_POWER
    while True:
        low = -(center ** (1 / power))
        high = (length - center) ** (1 / power)
        offsets = set()
        for k in range(count):
            u = low + (high - low) * k / count
            position = center + math.copysign(abs(u) ** power, u)
            offsets.add(min(length - 1, max(0, math.floor(position + 1e-9))))
        if len(offsets) == count or power <= 1.0:
            return frozenset(offsets)
        power = max(1.0, power - _POWER_STEP)


def is_full_step(params: DeepCacheParams, step: int, total_steps: int, warmup: int = 1) -> bool:
    """True when ``step`` (0-based, of ``total_steps`` executed) must run the whole UNet.

    For the ``adaptive`` schedule this is only the forced part (step 0, outside the window);
    inside the window the session decides from the features (``may_cache`` is True there).
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if params.schedule == "adaptive":
        return not may_cache(params, step, total_steps, warmup)
    if params.interval == AUTO_INTERVAL:
        raise ValueError("interval auto has no schedule until a UNet resolves it (resolved())")
    if params.interval == 1 or not may_cache(params, step, total_steps, warmup):
        return True
    span = window(params, total_steps, warmup)
    offset = step - span.start
    if params.schedule == "uniform":
        return offset % params.interval == 0
    return offset in _non_uniform_refreshes(len(span), params.interval)


def may_cache(params: DeepCacheParams, step: int, total_steps: int, warmup: int = 1) -> bool:
    """Whether the step lies where caching is allowed at all (never in the warm-up)."""
    return max(1, warmup) <= step < total_steps and step in window(params, total_steps, warmup)


def full_steps(params: DeepCacheParams, total_steps: int, warmup: int = 1) -> list[int]:
    """All full steps of a pass, e.g. for reporting the expected counts."""
    return [i for i in range(total_steps) if is_full_step(params, i, total_steps, warmup)]


def last_cached_step(params: DeepCacheParams, total_steps: int, warmup: int = 1) -> int:
    """Index of the last cached step, or -1: after it no feature needs to be stored."""
    if params.schedule == "adaptive" and params.threshold == 0:
        return -1
    for step in range(total_steps - 1, -1, -1):
        if not is_full_step(params, step, total_steps, warmup):
            return step
    return -1
