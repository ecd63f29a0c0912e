"""The protocol every host adapter follows, and the adapter for a model no host here explains.

The script forwards each WebUI hook to the adapter picked for the batch (:mod:`.registry`); the
adapter turns the host's processing object into the engine's :class:`PassPlan` and calls
:class:`GenerationRun`. Adapters hold no caching logic, and raise
:class:`UnsupportedUNetError` or :class:`SessionConflictError` for the controller to report.
"""

from __future__ import annotations

from typing import Any

from ..engine.generation import GenerationRun
from ..engine.layout import UnsupportedUNetError


class HostAdapter:
    """One WebUI's way of running passes. Each hook is a no-op unless the host needs it."""

    def on_batch(self, run: GenerationRun, p: Any) -> None:
        """``process_batch``: the batch's model is loaded, no sampler has run yet."""

    def on_sampling(self, run: GenerationRun, p: Any) -> None:
        """``process_before_every_sampling``: a sampler is about to run a pass."""

    def on_hires(self, run: GenerationRun, p: Any) -> None:
        """``before_hr``: the hires pass is about to sample (WebUIs before 1.10)."""

    def follow_model(self, run: GenerationRun) -> None:
        """Before every CFG denoiser call: the host may have swapped the model (refiner)."""

    def close(self) -> None:
        """The batch is over: remove whatever :meth:`on_batch` installed."""


class Unsupported(HostAdapter):
    """A model of no WebUI this extension knows: generation runs uncached, and says why."""

    def __init__(self, model: Any) -> None:
        self.model_name = type(model).__name__

    def on_batch(self, run: GenerationRun, p: Any) -> None:
        raise UnsupportedUNetError(
            f"{self.model_name} is not a model of AUTOMATIC1111, Forge or SD.Next"
        )
