"""Passes inside one diffusers pipeline run, for hosts with no hook between them (SD.Next).

SD.Next calls its scripts once per batch around ``process_diffusers``, which runs the base
pass, the hires pass and the refiner one after another. A pass is recognised where it begins:
at the first UNet call, and whenever the UNet's timestep rises again (a new pipeline call starts
from high noise). At that moment the watcher asks the host for the pass's plan and opens a fresh
session for it through :class:`GenerationRun`; the session's own step clock takes over from
there. The plan (executed steps, timestep grid) is the host's to give: it is asked with the
timestep the pass starts at.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from .clock import StepClock
from .generation import GenerationRun, PassPlan
from .shapes import read_timestep

logger = logging.getLogger("deepcache")


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
