"""The session: the one owner of every patch DeepCache applies to a UNet.

``with DeepCacheSession(unet, params, total_steps):`` wraps the UNet's blocks and layers (the
sites of its :class:`UNetLayout`) and registers a pre-hook on the UNet itself; leaving the block
(normally, by exception or by ``KeyboardInterrupt``) removes them all and frees the cache.
Hosts that hand over each UNet call (Forge's model-function wrapper) use :meth:`attached`
instead: the wrappers are in place only during the call, the session's state lives on. Nothing
replaces the UNet's own ``forward``, so a foreign forward (ControlNet's) keeps running, and so do
its residual pops: skipped blocks return correctly shaped zeros.

Per UNet call: the pre-hook reads the timestep and asks the :class:`StepClock` which step it is;
the schedule says full or cached for that step. Per pass through the blocks (a pass starts at the
first input unit): the pass takes the next call slot of the step and looks its feature up in
the :class:`FeatureCache`; a miss runs fully and refreshes the slot.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any

import torch

from . import schedule
from .cache import CacheEntry, FeatureCache, key_of
from .clock import StepClock, Tick
from .flops import BlockFlops, count_unit_flops
from .layout import Role, Site, UNetLayout, layout_of
from .params import DeepCacheParams, effective_depth
from .patches import Forward, PatchSet, WrapperFactory
from .shapes import CallRecord, OutputShapes, first_tensor, replace_first_tensor

logger = logging.getLogger("deepcache")

# UNets with a session open; a second session on the same UNet would double-wrap its blocks.
_ACTIVE: weakref.WeakSet[torch.nn.Module] = weakref.WeakSet()
_FLOP_MEMO: weakref.WeakKeyDictionary[torch.nn.Module, dict[Any, BlockFlops]] = (
    weakref.WeakKeyDictionary()
)


class SessionConflictError(RuntimeError):
    """A second DeepCache session was opened on a UNet that already has one."""


class _Mode(Enum):
    FULL = "full"
    CACHED = "cached"
    # adaptive: runs like a cached pass up to the depth-d skip, which decides full or cached
    UNDECIDED = "undecided"
    PASS_THROUGH = "pass-through"


@dataclass
class DeepCacheStats:
    """What happened in a session; steps are denoising steps, passes are UNet evaluations.

    A step counts as cached only when every UNet pass of it reused a stored feature: a cache
    miss runs the whole UNet, so its step counts as full.
    """

    depth: int = 0
    full_steps: int = 0
    cached_steps: int = 0
    full_passes: int = 0
    cached_passes: int = 0
    miss_passes: int = 0
    unannounced_passes: int = 0
    restarts: int = 0
    steps_beyond_total: int = 0
    shallow_share: float | None = None

    @property
    def estimated_flop_saving(self) -> float | None:
        """Fraction of UNet FLOPs saved against running every pass fully."""
        passes = self.full_passes + self.cached_passes + self.miss_passes + self.unannounced_passes
        if self.shallow_share is None or passes == 0:
            return None
        return self.cached_passes * (1.0 - self.shallow_share) / passes

    def summary(self) -> str:
        text = f"{self.full_steps} full / {self.cached_steps} cached steps"
        saving = self.estimated_flop_saving
        if saving is not None:
            text += f", ~{saving:.0%} UNet FLOPs saved"
        return text


@dataclass
class _Pass:
    mode: _Mode
    slot: int
    key: Any = None
    store: bool = False
    entry: CacheEntry | None = None
    skip_channels: int | None = None
    skipped_shapes: dict[str, OutputShapes] = field(default_factory=dict)


class DeepCacheSession:
    """Applies DeepCache to ``unet`` for one sampling pass of ``total_steps`` executed steps.

    ``timestep_grid``: the timesteps at which the sampler's steps start, when the host knows
    them; with it, midpoint evaluations of DPM2/DPM++ SDE-type samplers stay in their step.
    A disabled ``params`` installs nothing at all.
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
        self.params = params
        self.total_steps = total_steps
        self.layout = layout_of(unet) if params.enabled else None
        self.depth = effective_depth(params.depth, self.layout.num_blocks) if self.layout else 0
        if self.layout and self.depth != params.depth:
            logger.info(
                "DeepCache: depth %d clamped to %d for a UNet with %d skip connections",
                params.depth,
                self.depth,
                self.layout.num_blocks,
            )
        self.stats = DeepCacheStats(depth=self.depth)
        self._layout = self.layout or UNetLayout("none", 0, ())
        self._clock = StepClock(timestep_grid)
        self._cache = FeatureCache()
        self._patches = PatchSet()
        self._active = False
        self._nesting = 0
        self._closed = False
        self._host_step: int | None = None
        self._announced = False
        self._step_is_full = True
        self._step_ran_full: bool | None = None  # what the current step's passes really did
        self._step = -1
        self._last_full_step = 0
        self._adaptive = params.schedule == "adaptive"
        self._step_undecided = False
        self._change_sum = 0.0
        self._cached_in_a_row = 0
        self._skip_at_refresh: torch.Tensor | None = None
        self._slot = 0
        self._pass: _Pass | None = None
        self._last_cached = schedule.last_cached_step(params, total_steps)
        self._call: CallRecord | None = None
        self._warned_overflow = False

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
        self._skip_at_refresh = None
        self._cache.clear()
        if self.params.enabled:
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
        self._host_step = int(step)

    @property
    def cache_nbytes(self) -> int:
        return self._cache.nbytes

    @property
    def cached_tensors(self) -> list[torch.Tensor]:
        return self._cache.tensors()

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
        if self._host_step is not None:
            self._on_tick(self._clock.observe_index(self._host_step))
            return
        value = read_timestep(args, kwargs)
        if value is None:
            self._announced = False
            return
        self._on_tick(self._clock.observe(value))

    def _on_tick(self, tick: Tick) -> None:
        self._announced = True
        if tick.restarted:
            self._cache.clear()
            self.stats.restarts += 1
        if not tick.new_step:
            return
        self._step, self._slot = tick.step, 0
        self._step_ran_full = None
        if tick.step >= self.total_steps:
            self.stats.steps_beyond_total += 1
            if not self._warned_overflow:
                self._warned_overflow = True
                logger.warning(
                    "DeepCache: the sampler reached step %d of %d expected; extra steps run fully"
                    " (a sampler with intermediate timesteps needs the timestep grid)",
                    tick.step + 1,
                    self.total_steps,
                )
        self._step_is_full = schedule.is_full_step(self.params, tick.step, self.total_steps)
        self._step_undecided = False
        if self._adaptive and not self._step_is_full:
            if self.params.threshold == 0 or self._cached_in_a_row >= self.params.max_cached:
                self._step_is_full = True
            else:
                self._step_undecided = True
                return
        self._plan_step(full=self._step_is_full)

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

    def _begin_pass(self, h: torch.Tensor) -> _Pass:
        if not self._announced:
            self.stats.unannounced_passes += 1
            return _Pass(_Mode.PASS_THROUGH, slot=-1)
        slot, self._slot = self._slot, self._slot + 1
        key = key_of(h)
        store = self._step < self._last_cached
        entry = None
        if not self._step_is_full:
            entry = self._cache.get(slot, key, stored_since=self._last_full_step)
        if self._step_undecided:
            if entry is not None and self._skip_at_refresh is not None:
                return _Pass(_Mode.UNDECIDED, slot, key, store=store, entry=entry)
            self._step_undecided, self._step_is_full = False, True
            self._plan_step(full=True)
        if self._step_is_full:
            self.stats.full_passes += 1
            self._count_pass(ran_full=True)
            return _Pass(_Mode.FULL, slot, key, store=store)
        if entry is None:
            self.stats.miss_passes += 1
            self._count_pass(ran_full=True)
            return _Pass(_Mode.FULL, slot, key, store=store)
        self.stats.cached_passes += 1
        self._count_pass(ran_full=False)
        return _Pass(_Mode.CACHED, slot, key, store=store, entry=entry)

    def _decide_adaptively(self, p: _Pass, skip: torch.Tensor) -> None:
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
            p.mode, p.entry = _Mode.FULL, None
            self.stats.full_passes += 1
        else:
            p.mode = _Mode.CACHED
            self.stats.cached_passes += 1
        self._count_pass(ran_full=full)

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
            self._pass = self._begin_pass(first_tensor(args, kwargs))
        p = self._pass
        if p is None or p.mode is _Mode.PASS_THROUGH:
            return previous(*args, **kwargs)

        layout, depth = self._layout, self.depth
        skipped = layout.site_skipped(site, depth)
        if p.mode is _Mode.UNDECIDED and skipped:
            raise RuntimeError("DeepCache: a deep block ran before the adaptive decision")
        if p.mode is _Mode.CACHED and skipped:
            shapes = p.entry.skipped_shapes.get(site.name)
            # a site the full pass never reached runs: its output only feeds skipped sites
            return previous(*args, **kwargs) if shapes is None else shapes.zeros()
        if site.group:
            out = previous(*args, **kwargs)
            if skipped and p.store and p.mode is _Mode.FULL:
                p.skipped_shapes[site.name] = OutputShapes.of(out)
            return out

        if site.head and site.role is Role.OUTPUT and site.first == layout.boundary(depth):
            if p.mode is _Mode.CACHED:
                joined = self._splice(p, first_tensor(args, kwargs))
                args, kwargs = replace_first_tensor(args, kwargs, joined)
            elif p.store:
                self._store(p, first_tensor(args, kwargs))

        out = previous(*args, **kwargs)
        if site.tail and site.role is Role.INPUT and site.first == depth:
            skip = first_tensor((out,), {})
            p.skip_channels = skip.shape[1]
            if p.mode is _Mode.UNDECIDED:
                self._decide_adaptively(p, skip)
            if self._adaptive and p.mode is _Mode.FULL and p.slot == 0:
                self._skip_at_refresh = skip.detach().clone()
        elif skipped and p.store and p.mode is _Mode.FULL:
            p.skipped_shapes[site.name] = OutputShapes.of(out)
        if site.tail and site.role is Role.OUTPUT and site.first == layout.num_blocks - 1:
            self._pass = None
        return out

    def _splice(self, p: _Pass, z: torch.Tensor) -> torch.Tensor:
        """Replace the deep half of the boundary block's input with the stored feature."""
        feature = p.entry.feature
        skip = z[:, z.shape[1] - p.skip_channels :]
        if feature.shape[0] != skip.shape[0] or feature.shape[2:] != skip.shape[2:]:
            raise RuntimeError(
                f"DeepCache: cached feature {tuple(feature.shape)} does not fit skip"
                f" {tuple(skip.shape)}; another extension changed the UNet's shapes mid-pass"
            )
        return torch.cat([feature, skip], dim=1)

    def _store(self, p: _Pass, z: torch.Tensor) -> None:
        feature = z[:, : z.shape[1] - p.skip_channels].detach().clone()
        self._cache.put(p.slot, CacheEntry(p.key, feature, self._step, dict(p.skipped_shapes)))

    # ----------------------------------------------------------------- statistics
    def measure_flops(self) -> DeepCacheStats:
        """Fill ``stats.shallow_share`` by counting the UNet's FLOPs on a ``meta`` twin.

        Costs about a second for SD1.5 on a CPU the first time for a UNet and input shape (then
        memoised), so hosts call it when they want the figure, never on the sampling path.
        Returns the stats; ``shallow_share`` stays None if the UNet cannot run on ``meta``.
        """
        if self._call is None or self.layout is None:
            return self.stats
        counted = _FLOP_MEMO.setdefault(self.unet, {})
        if self._call.key not in counted:
            args, kwargs = self._call.on_meta()
            try:
                counted[self._call.key] = count_unit_flops(self.unet, args, kwargs)
            except Exception as error:  # e.g. a host attention kernel with no meta support
                logger.warning("DeepCache: cannot count UNet FLOPs: %s", error)
                return self.stats
        share = counted[self._call.key].shallow_share(self.depth)
        self.stats = replace(self.stats, shallow_share=share)
        return self.stats


def read_timestep(args: tuple, kwargs: dict) -> float | None:
    """The timestep of a UNet call (ldm ``timesteps``, diffusers ``timestep``), if readable."""
    timesteps = args[1] if len(args) > 1 else kwargs.get("timesteps", kwargs.get("timestep"))
    if isinstance(timesteps, (int, float)):
        return float(timesteps)
    if not isinstance(timesteps, torch.Tensor) or timesteps.numel() == 0 or timesteps.is_meta:
        return None
    return float(timesteps.reshape(-1)[0].item())
