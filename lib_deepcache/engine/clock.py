"""Denoising-step detection from the timesteps the UNet receives.

Counting UNet calls is wrong (second-order samplers and split CFG call the UNet several times a
step), so a step is identified by its timestep instead:

* the same timestep as the current step: the same step (another call slot of it);
* a lower timestep: the next step. When the host supplied the sampler's timestep grid, only a
  timestep on the grid starts a step, and the step index is its position in the grid: midpoint
  evaluations of DPM2 / DPM++ 2S / DPM++ SDE stay inside their step, and a session opened in the
  middle of a pass (after a model swap) knows which step it is at;
* a higher timestep: a new pass (hires fix, Restart sampler) that starts from step 0 again.

Heun-type samplers evaluate their correction at the next step's timestep; that call joins the
next step (same noise level), which is the same grouping a grid gives.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass

_REL_TOL = 1e-5
_ABS_TOL = 1e-7
# how far from a grid timestep, as a share of the gap to its neighbour, still starts that step
GRID_SLACK = 0.02


def same_timestep(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=_REL_TOL, abs_tol=_ABS_TOL)


@dataclass(frozen=True)
class Tick:
    """The clock's verdict for one UNet call."""

    step: int
    new_step: bool
    restarted: bool


class StepClock:
    def __init__(self, grid: Sequence[float] | None = None) -> None:
        order = [float(t) for t in grid] if grid is not None else None
        # (timestep, step index) sorted by timestep, for bisection
        self._grid = sorted((t, i) for i, t in enumerate(order)) if order is not None else None
        self._current: float | None = None
        self._step = -1

    def observe(self, timestep: float) -> Tick:
        first = self._current is None
        if not first and same_timestep(timestep, self._current):
            return Tick(self._step, new_step=False, restarted=False)
        restarted = not first and timestep > self._current
        if self._grid is not None:
            index = self._grid_index(timestep)
            if index is None and not (first or restarted):
                return Tick(self._step, new_step=False, restarted=False)  # a midpoint
            step = 0 if index is None else index
        else:
            step = 0 if first or restarted else self._step + 1
        self._current, self._step = timestep, step
        return Tick(step, new_step=True, restarted=restarted)

    def observe_index(self, step: int) -> Tick:
        """Take the step index from a host that counts steps itself (e.g. its step callback).

        Used where the timestep cannot be read, such as tensors on the ``meta`` device.
        """
        if step == self._step:
            return Tick(step, new_step=False, restarted=False)
        restarted = step < self._step
        self._step, self._current = step, None
        return Tick(step, new_step=True, restarted=restarted)

    def _grid_index(self, timestep: float) -> int | None:
        """The step that starts at this timestep, or None for a timestep between steps.

        A timestep within :data:`GRID_SLACK` of the gap to the neighbouring step starts that
        step: a refiner loaded mid-pass converts the sampler's sigmas to timesteps with its own
        (e.g. fp16-rounded) noise schedule, a fraction of a timestep off the base model's grid,
        while midpoint evaluations lie about half a gap away.
        """
        grid = self._grid or []
        i = bisect.bisect_left(grid, (timestep, -1))
        near = [j for j in (i - 1, i) if 0 <= j < len(grid)]
        if not near:
            return None
        j = min(near, key=lambda k: abs(grid[k][0] - timestep))
        value, step = grid[j]
        if same_timestep(value, timestep):
            return step
        gaps = [abs(grid[k][0] - value) for k in (j - 1, j + 1) if 0 <= k < len(grid)]
        if gaps and abs(value - timestep) <= GRID_SLACK * min(gaps):
            return step
        return None
