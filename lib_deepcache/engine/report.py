"""Reporting: what a session did, in denoising steps and UNet passes, and the UNet FLOPs that saved.

Counts are kept by the planner as the passes run; the FLOP estimate is computed only on request
(:func:`measure_flops`), never on the sampling path, by counting the UNet's units on a ``meta``
twin called like the session's first call.
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass
from typing import Any

import torch

from .flops import BlockFlops, count_unit_flops
from .shapes import CallRecord

logger = logging.getLogger("deepcache")

# Per UNet, per call form: counting costs about a second for SD1.5 on a CPU, so once is enough.
_FLOP_MEMO: weakref.WeakKeyDictionary[torch.nn.Module, dict[Any, BlockFlops]] = (
    weakref.WeakKeyDictionary()
)


@dataclass
class DeepCacheStats:
    """What happened in a session; steps are denoising steps, passes are UNet evaluations.

    A step counts as cached only when every UNet pass of it reused a stored feature: a cache
    miss runs the whole UNet, so its step counts as full.
    """

    depth: int = 0
    interval: int = 0  # the interval the session ran with (``auto`` resolved)
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


def measure_flops(
    unet: torch.nn.Module, call: CallRecord | None, stats: DeepCacheStats
) -> DeepCacheStats:
    """Fill ``stats.shallow_share`` from the UNet's FLOPs for a call of this form and return
    ``stats`` (left as is when there was no call or the UNet cannot run on ``meta``)."""
    if call is None:
        return stats
    counted = _FLOP_MEMO.setdefault(unet, {})
    if call.key not in counted:
        args, kwargs = call.on_meta()
        try:
            counted[call.key] = count_unit_flops(unet, args, kwargs)
        except Exception as error:  # e.g. a host attention kernel with no meta support
            logger.warning("DeepCache: cannot count UNet FLOPs: %s", error)
            return stats
    stats.shallow_share = counted[call.key].shallow_share(stats.depth)
    return stats
