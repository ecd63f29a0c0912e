"""The session: the one owner of every patch DeepCache applies to a denoiser (a UNet, or a
diffusion transformer's block stack).

``with DeepCacheSession(model, params, total_steps):`` wraps the sites of the model's layout
(:class:`UNetLayout`: blocks and layers; :class:`StackLayout`: transformer blocks) and registers
a pre-hook on the model itself; leaving the block (normally, by exception or by
``KeyboardInterrupt``) removes them all and frees the cache. Hosts that hand over each model
call (Forge's model-function wrapper) use :meth:`attached` instead: the wrappers are in place
only during the call, the session's state lives on. Nothing replaces the model's own
``forward``, so a foreign forward (ControlNet's) keeps running, and so do its residual pops:
skipped UNet blocks return correctly shaped zeros.

Per model call the pre-hook hands the timestep to the :class:`StepPlanner`, which decides what
each pass through the blocks does (:mod:`.planner`); a splicer carries it out for the layout at
hand (:mod:`.unet_splice`: skip the deep units, splice the stored feature into the boundary
unit; :mod:`.stack_splice`: run the first and last ``depth`` blocks, add the skipped span's
stored residual) and stores a full pass's feature. What happened is reported by :mod:`.report`.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from . import schedule
from .denoisers import Layout, layout_of
from .layout import UNetLayout
from .params import AUTO_INTERVAL, DeepCacheParams
from .patches import Forward, PatchSet, WrapperFactory
from .planner import StepPlanner
from .report import DeepCacheStats, measure_flops
from .shapes import CallRecord, read_timestep
from .stack import StackLayout
from .stack_splice import StackSplicer
from .unet_splice import UNetSplicer

logger = logging.getLogger("deepcache")

# Models with a session open; a second session on the same model would double-wrap its blocks.
_ACTIVE: weakref.WeakSet[torch.nn.Module] = weakref.WeakSet()


class SessionConflictError(RuntimeError):
    """A second DeepCache session was opened on a model that already has one."""


class DeepCacheSession:
    """Applies DeepCache to ``unet`` (any supported denoiser) for one sampling pass of
    ``total_steps`` executed steps.

    ``timestep_grid``: the timesteps at which the sampler's steps start, when the host knows
    them; with it, midpoint evaluations of DPM2/DPM++ SDE-type samplers stay in their step.
    A disabled ``params`` installs nothing at all. ``params.interval`` ``auto`` becomes the
    model's own default here, where its layout is known; :attr:`params` holds the number.
    """

    def __init__(
        self,
        unet: torch.nn.Module,
        params: DeepCacheParams,
        total_steps: int,
        timestep_grid: Sequence[float] | None = None,
    ) -> None:
        if not isinstance(total_steps, int) or isinstance(total_steps, bool) or total_steps < 1:
            raise ValueError(f"total_steps must be a positive integer, got {total_steps!r}")
        self.unet = unet
        self.total_steps = total_steps
        self.layout: Layout | None = layout_of(unet) if params.enabled else None
        self.params = params = self._resolve_interval(params)
        self.depth = min(params.depth, self.layout.max_depth) if self.layout else 0
        if self.layout and self.depth != params.depth:
            logger.info(
                "DeepCache: depth %d clamped to %d for %s",
                params.depth,
                self.depth,
                self.layout.describe(),
            )
        self.stats = DeepCacheStats(depth=self.depth, interval=params.interval)
        self._planner = StepPlanner(
            params, total_steps, timestep_grid, self.stats, self._warmup(params)
        )
        self._splicer = _splicer(self.layout, self.depth, self._planner)
        self._patches = PatchSet()
        self._active = False
        self._nesting = 0
        self._closed = False
        self._call: CallRecord | None = None

    def _warmup(self, params: DeepCacheParams) -> int:
        """Full steps before the first cached one: two where a cached step forecasts and runs no
        block (a transformer at depth 0), so the forecast has a trajectory from the start."""
        if (
            params.forecast > 0
            and self.layout is not None
            and self.layout.runs_no_block(self.depth)
        ):
            return schedule.FORECAST_WARMUP
        return 1

    def _resolve_interval(self, params: DeepCacheParams) -> DeepCacheParams:
        """``auto`` made the model's own interval, now that its layout is known."""
        if self.layout is None or params.interval != AUTO_INTERVAL:
            return params
        params = params.resolved(self.layout.family, self.layout.num_blocks)
        logger.info("DeepCache: interval auto = %d for %s", params.interval, self.layout.describe())
        return params

    # ----------------------------------------------------------------- lifecycle
    def __enter__(self) -> DeepCacheSession:
        if not self.params.enabled:
            return self
        if self._active:
            self._nesting += 1
            return self
        self._attach()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._nesting:
            self._nesting -= 1
            return
        self.close()

    def close(self) -> None:
        """Remove everything now, however often entered; safe to call any number of times."""
        self._nesting = 0
        if self._closed:
            return
        self._detach()
        self._closed = True
        self._planner.clear()
        # a session that never saw a step (Forge begins its hires pass twice) has nothing to say
        if self.params.enabled and self.stats.full_steps + self.stats.cached_steps:
            logger.info("DeepCache: %s", self.stats.summary())

    @contextmanager
    def attached(self) -> Iterator[DeepCacheSession]:
        """Wrap the UNet for the duration of one host call, keeping the session's state (step
        clock, cache, statistics) between calls; the UNet is untouched outside them."""
        if not self.params.enabled or self._active:
            yield self
            return
        self._attach()
        try:
            yield self
        finally:
            self._detach()

    @property
    def active(self) -> bool:
        return self._active

    @property
    def closed(self) -> bool:
        return self._closed

    def _attach(self) -> None:
        if self._closed:
            raise RuntimeError("a DeepCache session cannot be reopened; create a new one")
        if self.unet in _ACTIVE:
            raise SessionConflictError(
                f"DeepCache is already active on this {type(self.unet).__name__}"
            )
        _ACTIVE.add(self.unet)
        self._active = True
        try:
            self._patches.add_handle(
                self.unet.register_forward_pre_hook(self._on_unet_call, with_kwargs=True)
            )
            for site in self._splicer.sites():
                self._patches.wrap_forward(site.module, self._wrapper_factory(site))
        except BaseException:
            self._detach()
            raise

    def _detach(self) -> None:
        if not self._active:
            return
        self._active = False
        try:
            self._patches.remove_all()
        finally:
            self._splicer.reset()
            _ACTIVE.discard(self.unet)

    # ----------------------------------------------------------------- host inputs
    def set_step(self, step: int) -> None:
        """Let a host that counts denoising steps itself supply the index of the next calls.

        Timesteps are then ignored for step detection. Needed where the timestep cannot be read
        (tensors on ``meta``); optional elsewhere.
        """
        self._planner.set_step(step)

    @property
    def cache_nbytes(self) -> int:
        return self._planner.cache.nbytes

    @property
    def cached_tensors(self) -> list[torch.Tensor]:
        return self._planner.cache.tensors()

    # ----------------------------------------------------------------- per UNet call
    def _on_unet_call(
        self, module: torch.nn.Module, args: tuple, kwargs: dict | None = None
    ) -> None:
        # kwargs may be missing: torch calls a with-kwargs hook removed during the current
        # call's hook loop (a pass watcher closing this session) without them
        if self._active:
            self.observe_call(args, kwargs or {})

    def observe_call(self, args: tuple, kwargs: dict) -> None:
        """Take in one UNet call's arguments (the session's pre-hook does this for every call;
        a host that opened the session inside a call hands that call over itself)."""
        self._splicer.reset()
        if self._call is None and args:
            self._call = CallRecord.of(args, kwargs)
        planner = self._planner
        planner.on_call(None if planner.host_counts_steps else read_timestep(args, kwargs))

    # ----------------------------------------------------------------- per site
    def _wrapper_factory(self, site: Any) -> WrapperFactory:
        def make(previous: Forward) -> Forward:
            def deepcache_block(*args: Any, **kwargs: Any) -> Any:
                if not self._active:
                    return previous(*args, **kwargs)
                return self._splicer.run(site, previous, args, kwargs)

            return deepcache_block

        return make

    # ----------------------------------------------------------------- statistics
    def measure_flops(self) -> DeepCacheStats:
        """Fill ``stats.shallow_share`` by counting the UNet's FLOPs on a ``meta`` twin.

        Costs about a second for SD1.5 on a CPU the first time for a UNet and input shape (then
        memoised), so hosts call it when they want the figure, never on the sampling path.
        Returns the stats; ``shallow_share`` stays None if the UNet cannot run on ``meta``.
        """
        if self.layout is not None:
            measure_flops(self.unet, self._call, self.stats)
        return self.stats


def _splicer(layout: Layout | None, depth: int, planner: StepPlanner) -> UNetSplicer | StackSplicer:
    """What carries the planner's verdicts out in the model's modules."""
    if isinstance(layout, StackLayout):
        return StackSplicer(layout, depth, planner)
    return UNetSplicer(layout or UNetLayout("none", 0, ()), depth, planner)
