"""Passes inside one diffusers pipeline run, for hosts with no hook between them (SD.Next).

SD.Next calls its scripts once per batch around ``process_diffusers``, which runs the base
pass, the hires pass and the refiner one after another. A pass is recognised where it begins:
at the first UNet call, and whenever the UNet's timestep rises again (a new pipeline call starts
from high noise). At that moment the watcher asks the host for the pass's plan and opens a fresh
session for it through :class:`GenerationRun`; the session's own step clock takes over from
there. The executed steps and the timestep grid come from the pipeline's scheduler, which the
pipeline has set up before its first UNet call.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import torch

from .generation import GenerationRun, PassPlan
from .session import read_timestep

logger = logging.getLogger("deepcache")


def scheduler_steps(scheduler: Any) -> tuple[int, list[float] | None]:
    """Steps a diffusers scheduler is about to execute, and the timesteps they start at.

    img2img pipelines start at ``begin_index`` (set through ``set_begin_index``); schedulers of
    order 2 (Heun, DPM2) evaluate twice per step, so their grid is left to the step clock.
    """
    timesteps = [float(t) for t in getattr(scheduler, "timesteps", [])]
    begin = getattr(scheduler, "begin_index", None) or 0
    order = int(getattr(scheduler, "order", 1) or 1)
    executed = timesteps[begin:]
    if not executed:
        raise ValueError(f"{type(scheduler).__name__} has no timesteps set")
    steps = math.ceil(len(executed) / order)
    return steps, executed if order == 1 else None


class PassWatcher:
    """Opens a session per pipeline pass on ``unet``; ``plan_for_pass`` is asked at each start
    and may return None to leave that pass uncached (a pass DeepCache is off for)."""

    def __init__(
        self,
        run: GenerationRun,
        unet: torch.nn.Module,
        plan_for_pass: Callable[[], PassPlan | None],
    ) -> None:
        self.run = run
        self.unet = unet
        self._plan_for_pass = plan_for_pass
        self._last: float | None = None
        self._handle = unet.register_forward_pre_hook(self._on_call, with_kwargs=True)

    def _on_call(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        timestep = read_timestep(args, kwargs)
        if timestep is None:
            return
        starts = self._last is None or timestep > self._last
        self._last = timestep
        if not starts:
            return
        plan = self._plan_for_pass()
        if plan is None:
            self.run.close()
            return
        session = self.run.begin_pass(self.unet, plan)
        if session is not None:
            # this call's hooks were gathered before the session's own pre-hook existed
            session.observe_call(args, kwargs)

    def remove(self) -> None:
        """Stop watching; safe to call any number of times."""
        self._handle.remove()
