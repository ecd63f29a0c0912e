"""Passes inside one diffusers pipeline run, for hosts with no hook between them (SD.Next).

SD.Next calls its scripts once per batch around ``process_diffusers``, which runs the base
pass, the hires pass and the refiner one after another. A pass is recognised where it begins:
at the first UNet call, and whenever the UNet's timestep rises again (a new pipeline call starts
from high noise). At that moment the watcher asks the host for the pass's plan and opens a fresh
session for it through :class:`GenerationRun`; the session's own step clock takes over from
there. The executed steps and the timestep grid come from the pipeline's scheduler, which the
pipeline has set up before its first UNet call, read from the timestep the pass starts at (an
img2img pass starts part-way down the schedule, and not every scheduler records where).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

from .clock import StepClock, same_timestep
from .generation import GenerationRun, PassPlan
from .session import read_timestep

logger = logging.getLogger("deepcache")


def scheduler_steps(scheduler: Any, first_timestep: float) -> tuple[int, list[float]]:
    """Steps a diffusers scheduler executes from ``first_timestep`` on, and the timesteps they
    start at.

    Schedulers of order 2 (Heun, KDPM2, DPM SDE) list every step ``order`` times in
    ``timesteps``: the step's start, then its second evaluation (at the next step's timestep
    for Heun, at an interpolated one for KDPM2), the last step alone. A pass starts on a step
    start (img2img pipelines slice at ``t_start * order``), so every ``order``-th timestep from
    there is a step start.
    """
    timesteps = [float(t) for t in getattr(scheduler, "timesteps", [])]
    order = max(1, int(getattr(scheduler, "order", 1) or 1))
    # a step start first: Heun repeats each timestep, as a second evaluation and a start
    candidates = [*range(0, len(timesteps), order), *range(len(timesteps))]
    begin = next((i for i in candidates if same_timestep(timesteps[i], first_timestep)), None)
    if begin is None:
        raise ValueError(
            f"{type(scheduler).__name__} has no timestep {first_timestep:g} in its schedule"
        )
    grid = timesteps[begin::order]
    return len(grid), grid


class PassWatcher:
    """Opens a session per pipeline pass on ``unet``; ``plan_for_pass(first_timestep)`` is asked
    at each start and may return None to leave that pass uncached."""

    def __init__(
        self,
        run: GenerationRun,
        unet: torch.nn.Module,
        plan_for_pass: Callable[[float], PassPlan | None],
    ) -> None:
        self.run = run
        self.unet = unet
        self._plan_for_pass = plan_for_pass
        self._clock = StepClock()
        self._handle = unet.register_forward_pre_hook(self._on_call, with_kwargs=True)

    def _on_call(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        timestep = read_timestep(args, kwargs)
        if timestep is None:
            return
        tick = self._clock.observe(timestep)
        if not (tick.new_step and tick.step == 0):  # without a grid: the first call or a rise
            return
        try:
            plan = self._plan_for_pass(timestep)
            session = None if plan is None else self.run.begin_pass(self.unet, plan)
        except Exception as error:  # raising inside the UNet's hook would end the generation
            logger.warning("DeepCache: this pass runs uncached: %s", error)
            plan = session = None
        if plan is None:
            self.run.close()
            return
        if session is not None:
            # this call's hooks were gathered before the session's own pre-hook existed
            session.observe_call(args, kwargs)

    def remove(self) -> None:
        """Stop watching; safe to call any number of times."""
        self._handle.remove()
