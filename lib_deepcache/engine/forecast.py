"""Forecasting the deep feature of a cached step from the last two full steps.

DeepCache holds the deep feature of the last full step constant until the next refresh, while
the true feature keeps drifting with the noise level. A first-order forecast (the idea behind
TaylorSeer-style caching) follows the drift: with ``F1`` stored at the last full step (UNet
timestep ``t1``) and ``F0`` at the full step before (``t0``), a cached step at ``t`` uses

    F1 + strength * (F1 - F0) * (t - t1) / (t1 - t0)

``strength`` 0 is plain DeepCache, 1 the undamped first-order extrapolation. Where a timestep is
unknown (a host that counts steps itself), step indices take its place. The forecast costs
elementwise operations only, and one extra stored feature per slot.
"""

from __future__ import annotations

import torch

from .cache import CacheEntry


def forecast_feature(
    entry: CacheEntry, timestep: float | None, step: int, strength: float
) -> torch.Tensor:
    """The feature a cached pass at ``timestep`` (step ``step``) splices in."""
    previous = entry.previous
    if strength == 0 or previous is None or previous.parts != entry.parts:
        return entry.feature
    if None in (timestep, entry.timestep, previous.timestep):
        x, x1, x0 = float(step), float(entry.step), float(previous.step)
    else:
        x, x1, x0 = timestep, entry.timestep, previous.timestep
    if x1 == x0:
        return entry.feature
    ratio = strength * (x - x1) / (x1 - x0)
    return torch.lerp(entry.feature, previous.feature, -ratio)
