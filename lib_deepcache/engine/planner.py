"""Planning: for each UNet pass of a sampling pass, run the whole UNet or reuse a deep feature.

Per UNet call the :class:`StepClock` says which denoising step it belongs to and the schedule
says whether that step is full. Per pass through the blocks (cond, uncond, a second-order
sampler's second evaluation: one call slot each) the planner looks the slot's feature up in the
:class:`FeatureCache`; a miss runs fully and refreshes the slot. The adaptive schedule leaves a
step undecided until its first pass has computed the depth-``d`` skip, whose change since the
last refresh settles it. The planner also counts what really happened (:class:`DeepCacheStats`).
It knows nothing of modules or hooks: the session feeds it timesteps and tensors.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum

import torch

from . import schedule
from .cache import CacheEntry, CacheKey, FeatureCache, ResidualPart, key_of
from .clock import StepClock, Tick
from .forecast import forecast_feature
from .params import DeepCacheParams
from .report import DeepCacheStats
from .shapes import OutputShapes

logger = logging.getLogger("deepcache")


class Mode(Enum):
    FULL = "full"
    CACHED = "cached"
    # adaptive: runs like a cached pass up to the depth-d skip, which decides full or cached
    UNDECIDED = "undecided"
    PASS_THROUGH = "pass-through"


@dataclass
class PassState:
    """One pass through the UNet's blocks: what it does and what it carries to the splice."""

    mode: Mode
    slot: int
    key: CacheKey | None = None
    store: bool = False
    entry: CacheEntry | None = None
    skip_channels: int | None = None
    skipped_shapes: dict[str, OutputShapes] = field(default_factory=dict)


class StepPlanner:
    """The schedule, the cache and the counts of one session (``total_steps`` executed steps)."""

    def __init__(
        self,
        params: DeepCacheParams,
        total_steps: int,
        timestep_grid: Sequence[float] | None,
        stats: DeepCacheStats,
        warmup: int = 1,
    ) -> None:
        self.params = params
        self.total_steps = total_steps
        self.warmup = warmup  # full steps before the first cached one (schedule.window)
        self.stats = stats
        self.cache = FeatureCache()
        self._clock = StepClock(timestep_grid)
        self._host_step: int | None = None
        self._announced = False
        self._step = -1
        self._slot = 0
        self._step_is_full = True
        self._step_ran_full: bool | None = None  # what the current step's passes really did
        self._last_full_step = 0
        # disabled: nothing is ever cached (and an ``auto`` interval was never resolved)
        self._last_cached = (
            schedule.last_cached_step(params, total_steps, warmup) if params.enabled else -1
        )
        self._adaptive = params.schedule == "adaptive"
        self._step_undecided = False
        self._change_sum = 0.0
        self._cached_in_a_row = 0
        self._skip_at_refresh: torch.Tensor | None = None
        self._warned_overflow = False
        self._timestep: float | None = None  # of the current UNet call, when readable

    # ----------------------------------------------------------------- per UNet call
    def set_step(self, step: int) -> None:
        """The host counts steps itself: the next calls belong to ``step``, whatever their
        timestep (needed where the timestep cannot be read, e.g. on ``meta``)."""
        self._host_step = int(step)

    @property
    def host_counts_steps(self) -> bool:
        return self._host_step is not None

    def on_call(self, timestep: float | None) -> None:
        """A UNet call with this timestep (None: unreadable, its passes run untouched)."""
        self._timestep = timestep
        if self._host_step is not None:
            self._on_tick(self._clock.observe_index(self._host_step))
        elif timestep is None:
            self._announced = False
        else:
            self._on_tick(self._clock.observe(timestep))

    def _on_tick(self, tick: Tick) -> None:
        self._announced = True
        if tick.restarted:
            self.clear()
            self.stats.restarts += 1
        if not tick.new_step:
            return
        self._step, self._slot = tick.step, 0
        self._step_ran_full = None
        if tick.step >= self.total_steps:
            self._note_overflow(tick.step)
        self._step_is_full = schedule.is_full_step(
            self.params, tick.step, self.total_steps, self.warmup
        )
        self._step_undecided = False
        if self._adaptive and not self._step_is_full:
            if self.params.threshold == 0 or self._cached_in_a_row >= self.params.max_cached:
                self._step_is_full = True
            else:
                self._step_undecided = True
                return
        self._plan_step(full=self._step_is_full)

    def _note_overflow(self, step: int) -> None:
        self.stats.steps_beyond_total += 1
        if not self._warned_overflow:
            self._warned_overflow = True
            logger.warning(
                "DeepCache: the sampler reached step %d of %d expected; extra steps run fully"
                " (a sampler with intermediate timesteps needs the timestep grid)",
                step + 1,
                self.total_steps,
            )

    def _plan_step(self, full: bool) -> None:
        """Settle the schedule's verdict for the current step (what the passes then really do
        is counted by :meth:`_count_pass`)."""
        if full:
            self._last_full_step = self._step
            self._change_sum, self._cached_in_a_row = 0.0, 0
        else:
            self._cached_in_a_row += 1

    def _count_pass(self, ran_full: bool) -> None:
        """Count the step by what its passes did: it is a cached step only while every pass of
        it has reused a stored feature; one pass that ran the whole UNet (a full step, or a miss)
        makes it a full step."""
        if self._step_ran_full is None:
            self._step_ran_full = ran_full
            if ran_full:
                self.stats.full_steps += 1
            else:
                self.stats.cached_steps += 1
        elif ran_full and not self._step_ran_full:
            self._step_ran_full = True
            self.stats.cached_steps -= 1
            self.stats.full_steps += 1

    # ----------------------------------------------------------------- per pass
    def begin_pass(self, h: torch.Tensor, key: CacheKey | None = None) -> PassState:
        """A pass enters the first unit with ``h`` (its cache ``key``: ``h``'s shape, dtype and
        device unless given): take the step's next call slot."""
        if not self._announced:
            self.stats.unannounced_passes += 1
            return PassState(Mode.PASS_THROUGH, slot=-1)
        slot, self._slot = self._slot, self._slot + 1
        key = key_of(h) if key is None else key
        store = self._step < self._last_cached
        entry = None
        if not self._step_is_full:
            entry = self.cache.get(slot, key, stored_since=self._last_full_step)
        if self._step_undecided:
            if entry is not None and self._skip_at_refresh is not None:
                return PassState(Mode.UNDECIDED, slot, key, store=store, entry=entry)
            self._step_undecided, self._step_is_full = False, True
            self._plan_step(full=True)
        if self._step_is_full or entry is None:
            if self._step_is_full:
                self.stats.full_passes += 1
            else:
                self.stats.miss_passes += 1
            self._count_pass(ran_full=True)
            return PassState(Mode.FULL, slot, key, store=store)
        self.stats.cached_passes += 1
        self._count_pass(ran_full=False)
        return PassState(Mode.CACHED, slot, key, store=store, entry=entry)

    def on_skip(self, p: PassState, skip: torch.Tensor) -> None:
        """The pass computed the depth-``d`` skip (the last input unit a cached pass runs)."""
        p.skip_channels = skip.shape[1]
        if p.mode is Mode.UNDECIDED:
            self._decide_adaptively(p, skip)
        if self._adaptive and p.mode is Mode.FULL and p.slot == 0:
            self._skip_at_refresh = skip.detach().clone()

    def _decide_adaptively(self, p: PassState, skip: torch.Tensor) -> None:
        """Accumulate the skip feature's relative L1 change since the last refresh (one
        reduction and one device sync per step) and settle the step full or cached."""
        reference = self._skip_at_refresh
        if reference is None or reference.shape != skip.shape:
            change = float("inf")
        else:
            distance = (skip - reference).abs().mean() / reference.abs().mean().clamp_min(1e-12)
            change = float(distance)
        self._change_sum += change
        full = self._change_sum >= self.params.threshold
        self._step_undecided, self._step_is_full = False, full
        self._plan_step(full=full)
        if full:
            p.mode, p.entry = Mode.FULL, None
            self.stats.full_passes += 1
        else:
            p.mode = Mode.CACHED
            self.stats.cached_passes += 1
        self._count_pass(ran_full=full)

    def store(
        self, p: PassState, feature: torch.Tensor, parts: tuple[ResidualPart, ...] = ()
    ) -> None:
        """Keep a full pass's deep feature for its slot (and the shapes of what it skipped, or
        the residual parts it holds); with forecasting on, the slot's feature from the full step
        before stays too."""
        entry = CacheEntry(
            p.key, feature, self._step, dict(p.skipped_shapes), self._timestep, parts=parts
        )
        self.cache.put(p.slot, entry, keep_previous=self.params.forecast > 0)

    def feature(self, p: PassState) -> torch.Tensor:
        """The deep feature a cached pass splices in: the stored one, or its forecast."""
        if p.entry is None:
            raise RuntimeError("DeepCache: a cached pass without a stored feature")
        return forecast_feature(p.entry, self._timestep, self._step, self.params.forecast)

    def clear(self) -> None:
        """Forget every stored feature (a restart of the pass, or the session closing)."""
        self.cache.clear()
        self._skip_at_refresh = None
