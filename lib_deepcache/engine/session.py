"""The session: the one owner of every patch DeepCache applies to a UNet.

``with DeepCacheSession(unet, params, total_steps):`` wraps the UNet's blocks and layers (the
sites of its :class:`UNetLayout`) and registers a pre-hook on the UNet itself; leaving the block
(normally, by exception or by ``KeyboardInterrupt``) removes them all and frees the cache.
Hosts that hand over each UNet call (Forge's model-function wrapper) use :meth:`attached`
instead: the wrappers are in place only during the call, the session's state lives on. Nothing
replaces the UNet's own ``forward``, so a foreign forward (ControlNet's) keeps running, and so do
its residual pops: skipped blocks return correctly shaped zeros.

Per UNet call the pre-hook hands the timestep to the :class:`StepPlanner`, which decides what each
pass through the blocks does (:mod:`.planner`); the wrappers here carry it out: skip the deep
units, splice the stored feature into the boundary unit, store a full pass's feature. What
happened is reported by :mod:`.report`.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from .layout import Role, Site, UNetLayout
from .params import AUTO_INTERVAL, DeepCacheParams, effective_depth
from .patches import Forward, PatchSet, WrapperFactory
from .planner import Mode, PassState, StepPlanner
from .report import DeepCacheStats, measure_flops
from .shapes import CallRecord, OutputShapes, first_tensor, read_timestep, replace_first_tensor
from .unets import layout_of

logger = logging.getLogger("deepcache")

# UNets with a session open; a second session on the same UNet would double-wrap its blocks.
_ACTIVE: weakref.WeakSet[torch.nn.Module] = weakref.WeakSet()


class SessionConflictError(RuntimeError):
    """A second DeepCache session was opened on a UNet that already has one."""


class DeepCacheSession:
    """Applies DeepCache to ``unet`` for one sampling pass of ``total_steps`` executed steps.

    ``timestep_grid``: the timesteps at which the sampler's steps start, when the host knows
    them; with it, midpoint evaluations of DPM2/DPM++ SDE-type samplers stay in their step.
    A disabled ``params`` installs nothing at all. ``params.interval`` ``auto`` becomes the
    UNet's own default here, where its layout is known; :attr:`params` holds the number.
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
        self.layout = layout_of(unet) if params.enabled else None
        if self.layout and params.interval == AUTO_INTERVAL:
            params = params.resolved(self.layout.num_blocks)
            logger.info(
                "DeepCache: interval auto = %d for a UNet with %d skip connections",
                params.interval,
                self.layout.num_blocks,
            )
        self.params = params
        self.depth = effective_depth(params.depth, self.layout.num_blocks) if self.layout else 0
        if self.layout and self.depth != params.depth:
            logger.info(
                "DeepCache: depth %d clamped to %d for a UNet with %d skip connections",
                params.depth,
                self.depth,
                self.layout.num_blocks,
            )
        self.stats = DeepCacheStats(depth=self.depth, interval=params.interval)
        self._layout = self.layout or UNetLayout("none", 0, ())
        self._planner = StepPlanner(params, total_steps, timestep_grid, self.stats)
        self._patches = PatchSet()
        self._active = False
        self._nesting = 0
        self._closed = False
        self._pass: PassState | None = None
        self._call: CallRecord | None = None

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
            for site in self._layout.sites:
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
            self._pass = None
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
        self._pass = None
        if self._call is None and args:
            self._call = CallRecord.of(args, kwargs)
        planner = self._planner
        planner.on_call(None if planner.host_counts_steps else read_timestep(args, kwargs))

    # ----------------------------------------------------------------- per site
    def _wrapper_factory(self, site: Site) -> WrapperFactory:
        def make(previous: Forward) -> Forward:
            def deepcache_block(*args: Any, **kwargs: Any) -> Any:
                if not self._active:
                    return previous(*args, **kwargs)
                return self._run_site(site, previous, args, kwargs)

            return deepcache_block

        return make

    def _run_site(self, site: Site, previous: Forward, args: tuple, kwargs: dict) -> Any:
        if site.head and site.role is Role.INPUT and site.first == 0 and not site.group:
            self._pass = self._planner.begin_pass(first_tensor(args, kwargs))
        p = self._pass
        if p is None or p.mode is Mode.PASS_THROUGH:
            return previous(*args, **kwargs)

        layout, depth = self._layout, self.depth
        skipped = layout.site_skipped(site, depth)
        if p.mode is Mode.UNDECIDED and skipped:
            raise RuntimeError("DeepCache: a deep block ran before the adaptive decision")
        if p.mode is Mode.CACHED and skipped:
            shapes = p.entry.skipped_shapes.get(site.name)
            # a site the full pass never reached runs: its output only feeds skipped sites
            return previous(*args, **kwargs) if shapes is None else shapes.zeros()
        if site.group:
            out = previous(*args, **kwargs)
            if skipped and p.store and p.mode is Mode.FULL:
                p.skipped_shapes[site.name] = OutputShapes.of(out)
            return out

        if site.head and site.role is Role.OUTPUT and site.first == layout.boundary(depth):
            if p.mode is Mode.CACHED:
                joined = self._splice(p, first_tensor(args, kwargs))
                args, kwargs = replace_first_tensor(args, kwargs, joined)
            elif p.store:
                self._store(p, first_tensor(args, kwargs))

        out = previous(*args, **kwargs)
        if site.tail and site.role is Role.INPUT and site.first == depth:
            self._planner.on_skip(p, first_tensor((out,), {}))
        elif skipped and p.store and p.mode is Mode.FULL:
            p.skipped_shapes[site.name] = OutputShapes.of(out)
        if site.tail and site.role is Role.OUTPUT and site.first == layout.num_blocks - 1:
            self._pass = None
        return out

    def _splice(self, p: PassState, z: torch.Tensor) -> torch.Tensor:
        """Replace the deep half of the boundary block's input with the stored feature."""
        feature = self._planner.feature(p)
        skip = z[:, z.shape[1] - p.skip_channels :]
        if feature.shape[0] != skip.shape[0] or feature.shape[2:] != skip.shape[2:]:
            raise RuntimeError(
                f"DeepCache: cached feature {tuple(feature.shape)} does not fit skip"
                f" {tuple(skip.shape)}; another extension changed the UNet's shapes mid-pass"
            )
        return torch.cat([feature, skip], dim=1)

    def _store(self, p: PassState, z: torch.Tensor) -> None:
        self._planner.store(p, z[:, : z.shape[1] - p.skip_channels].detach().clone())

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
