"""The generation the WebUI is running, from the script's point of view.

The WebUI runs one generation at a time; the :class:`Controller` holds it: the parsed args on
``p``, the :class:`GenerationRun` of the batch, the host adapter picked for it. The script's
hooks call it one to one; it forwards the pass hooks to the adapter and turns what can go wrong
(an unknown model, a second DeepCache copy, bad args) into one console line and an infotext
entry, never into a failed generation.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ..engine.generation import GenerationRun
from ..engine.layout import UnsupportedUNetError
from ..engine.params import DeepCacheParamError
from ..engine.session import SessionConflictError
from . import webui
from .base import HostAdapter
from .registry import adapter_for
from .script_args import INFOTEXT_HIRES_KEY, INFOTEXT_KEY, INFOTEXT_STEPS_KEY, ScriptArgs
from .xyz_axes import OVERRIDES_ATTR

logger = logging.getLogger("deepcache")

ERROR_KEY = "DeepCache error"

Hook = Callable[[HostAdapter, GenerationRun], None]


class Controller:
    def __init__(self) -> None:
        self.run: GenerationRun | None = None
        self._adapter: HostAdapter | None = None
        self._reported: set[str] = set()  # console messages already printed (each once)

    # ----------------------------------------------------------------- generation
    def process(self, p: Any, args: tuple) -> None:
        """Parse once per generation (and per X/Y/Z cell, which re-runs ``process``)."""
        self.close()  # a generation that died without postprocess must not stay hooked
        # X/Y/Z cells are shallow copies sharing one dict: drop what an earlier cell wrote.
        for key in (INFOTEXT_KEY, INFOTEXT_HIRES_KEY, INFOTEXT_STEPS_KEY, ERROR_KEY):
            p.extra_generation_params.pop(key, None)
        try:
            parsed = ScriptArgs.from_args(args).with_overrides(getattr(p, OVERRIDES_ATTR, {}))
        except DeepCacheParamError as error:
            p.extra_generation_params[ERROR_KEY] = str(error)
            logger.error("%s; this generation runs without DeepCache", error)
            parsed = ScriptArgs.defaults()
        p.deepcache_args = parsed
        p.extra_generation_params.update(parsed.infotext(bool(getattr(p, "enable_hr", False))))
        if parsed.enabled:
            self._unhook_on_close(p)

    def before_batch(self, p: Any) -> None:
        self.close()
        if getattr(p, "deepcache_args", ScriptArgs.defaults()).enabled:
            self.run, self._adapter = GenerationRun(), adapter_for(webui.sd_model())

    def on_batch(self, p: Any) -> None:
        self._forward(p, lambda adapter, run: adapter.on_batch(run, p))

    def on_sampling(self, p: Any) -> None:
        self._forward(p, lambda adapter, run: adapter.on_sampling(run, p))

    def on_hires(self, p: Any) -> None:
        self._forward(p, lambda adapter, run: adapter.on_hires(run, p))

    def after_batch(self, p: Any) -> None:
        """The counts, and the intervals an ``auto`` setting ran at, into the infotext."""
        run = self.close()
        if run is not None and run.passes:
            p.extra_generation_params[INFOTEXT_STEPS_KEY] = run.counts_infotext()
            args = getattr(p, "deepcache_args", ScriptArgs.defaults())
            hires_fix = bool(getattr(p, "enable_hr", False))
            p.extra_generation_params.update(args.infotext(hires_fix, run.ran_intervals()))

    def follow_model(self) -> None:
        """Before every CFG denoiser call: let the adapter move the hooks to a swapped model."""
        run, adapter = self.run, self._adapter
        if run is not None and adapter is not None and run.session is not None:
            adapter.follow_model(run)

    def close(self) -> GenerationRun | None:
        """Remove every hook of the running generation; returns it (None when idle)."""
        run, self.run = self.run, None
        adapter, self._adapter = self._adapter, None
        if adapter is not None:
            adapter.close()
        if run is not None:
            run.close()
        return run

    # ----------------------------------------------------------------- reporting
    def say_once(self, message: str) -> None:
        """A console warning printed once per WebUI session."""
        if message not in self._reported:
            self._reported.add(message)
            logger.warning(message)

    def _forward(self, p: Any, hook: Hook) -> None:
        run, adapter = self.run, self._adapter
        if run is None or adapter is None:
            return
        try:
            hook(adapter, run)
        except SessionConflictError:
            self.close()
            p.extra_generation_params[ERROR_KEY] = "another DeepCache copy is already active"
            logger.warning(
                "DeepCache: another copy of the extension hooks this UNet; this one stays off"
            )
        except UnsupportedUNetError as error:
            self.close()
            message = f"unsupported model ({error})"
            p.extra_generation_params[ERROR_KEY] = message
            self.say_once(f"DeepCache: {message}; generating without DeepCache")

    def _unhook_on_close(self, p: Any) -> None:
        """The WebUI closes ``p`` in a ``finally`` even when sampling raised (out of memory, say),
        while ``postprocess`` only runs on success: unhook there too."""
        host_close = getattr(p, "close", None)
        if host_close is None:
            return

        def close() -> None:
            self.close()
            host_close()

        p.close = close
