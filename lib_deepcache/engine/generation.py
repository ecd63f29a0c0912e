"""One generation as the WebUI runs it: several sampling passes, each with its own session.

A generation samples a first pass and maybe a hires-fix pass (per batch iteration), and the
refiner may swap the UNet in the middle of a pass. Each pass gets a fresh
:class:`DeepCacheSession` with the pass's own parameters and executed step count; a model swap
closes the old UNet's session and opens one on the new UNet for the rest of the pass. The
host adapter calls :meth:`begin_pass`, :meth:`follow_unet` and :meth:`close`; it holds no
caching logic itself. Hosts that route each UNet call through a wrapper of theirs (Forge's
patcher) take the session unattached and attach it per call (:mod:`.unet_patcher`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .params import DeepCacheParams
from .report import DeepCacheStats
from .session import DeepCacheSession

logger = logging.getLogger("deepcache")


@dataclass(frozen=True)
class PassPlan:
    """What a pass needs: its parameters, its executed step count and timestep grid, and the
    step count the user asked for (``requested_steps``; an img2img pass executes only part of
    it). ``min_steps`` compares the requested count: it tells a few-step model's run from a
    long schedule that img2img's denoising strength cuts short, and the same settings give
    the same decision whatever the strength."""

    name: str
    params: DeepCacheParams
    total_steps: int
    timestep_grid: Sequence[float] | None = None
    requested_steps: int | None = None  # None: the executed count


@dataclass
class PassRecord:
    name: str
    stats: list[DeepCacheStats]
    off: str | None = None  # why the pass ran uncached although DeepCache was on

    @property
    def full_steps(self) -> int:
        return sum(s.full_steps for s in self.stats)

    @property
    def cached_steps(self) -> int:
        return sum(s.cached_steps for s in self.stats)

    @property
    def ran(self) -> bool:
        return self.full_steps + self.cached_steps > 0

    @property
    def intervals(self) -> list[int]:
        """The intervals the pass's sessions ran with (``auto`` resolved per UNet)."""
        return [s.interval for s in self.stats if s.full_steps + s.cached_steps]


class GenerationRun:
    def __init__(self) -> None:
        self._session: DeepCacheSession | None = None
        self._plan: PassPlan | None = None
        self._model_id: object = None
        self.passes: list[PassRecord] = []

    @property
    def session(self) -> DeepCacheSession | None:
        return self._session

    def begin_pass(
        self,
        unet: torch.nn.Module,
        plan: PassPlan,
        attach: bool = True,
        model_id: object = None,
    ) -> DeepCacheSession | None:
        """Close the previous pass's session and, if enabled, open one on ``unet`` for this pass
        (hooked now, or left for the host to attach per call when ``attach`` is False).
        ``model_id`` names the weights the UNet holds (the host's checkpoint), for
        :meth:`follow_unet`.

        A pass begun again before the UNet ran (Forge calls its hook twice before the hires
        pass) replaces its empty record instead of adding a second one.
        """
        self._close_session()
        self._plan, self._model_id = plan, model_id
        if self.passes and self.passes[-1].name == plan.name and not self.passes[-1].ran:
            self.passes.pop()
        if not plan.params.enabled:
            return None
        requested = plan.requested_steps or plan.total_steps
        if requested < plan.params.min_steps:
            reason = f"{requested} steps < {plan.params.min_steps}"
            logger.info("DeepCache: %s off (%s)", plan.name, reason)
            self.passes.append(PassRecord(plan.name, [], off=reason))
            return None
        self.passes.append(PassRecord(plan.name, []))
        return self._open(unet, plan, attach)

    def follow_unet(self, unet: torch.nn.Module, model_id: object = None) -> None:
        """The host's model changed mid-pass (refiner): start a fresh session on the new model
        for the rest of the pass. A change is a new UNet object or, since a host may load the
        refiner's weights into the same object (A1111 does when the configs match), a new
        ``model_id``: the features cached from the old weights must not feed the new ones. A
        session the host attaches per call (not active between calls) is not ours to move."""
        session, plan = self._session, self._plan
        if session is None or plan is None or not session.active:
            return
        if session.unet is unet and model_id == self._model_id:
            return
        self._model_id = model_id
        logger.info("DeepCache: the model changed mid-pass; a fresh cache for the new weights")
        self._close_session()
        self._open(unet, plan, attach=True)

    def close(self) -> None:
        """Remove every hook; safe to call any number of times, also after errors."""
        self._close_session()
        self._plan = None

    def counts_infotext(self) -> str:
        """``7 full / 13 cached``; with two passes ``first pass ...; hires ...``; a pass too
        short to cache (``min_steps``) reads ``off (6 steps < 10)``."""
        parts = []
        for record in self.passes:
            if record.off is not None:
                text = f"off ({record.off})"
            else:
                text = f"{record.full_steps} full / {record.cached_steps} cached"
            parts.append(text if len(self.passes) == 1 else f"{record.name} {text}")
        return "; ".join(parts)

    def ran_intervals(self) -> dict[str, list[int]]:
        """Per pass name, the intervals its sessions ran with, for the infotext of ``auto``."""
        intervals: dict[str, list[int]] = {}
        for record in self.passes:
            intervals.setdefault(record.name, []).extend(record.intervals)
        return intervals

    def _open(self, unet: torch.nn.Module, plan: PassPlan, attach: bool) -> DeepCacheSession:
        session = DeepCacheSession(unet, plan.params, plan.total_steps, plan.timestep_grid)
        if attach:
            session.__enter__()
        self._session = session
        return session

    def _close_session(self) -> None:
        session, self._session = self._session, None
        if session is None:
            return
        session.close()
        if self.passes:
            self.passes[-1].stats.append(session.stats)
