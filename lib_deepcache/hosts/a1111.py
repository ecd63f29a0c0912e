"""AUTOMATIC1111: the ldm/sgm ``UNetModel`` at ``sd_model.model.diffusion_model``, hooked per pass.

1.10+ calls ``process_before_every_sampling`` before every sampler call (first pass, hires pass,
img2img); 1.6-1.9 have only ``process_batch`` and ``before_hr``. The refiner swaps
``shared.sd_model`` in the middle of a pass, seen from the CFG denoiser callback.
"""

from __future__ import annotations

from typing import Any

from ..engine.generation import GenerationRun
from ..engine.layout import UnsupportedUNetError
from . import webui
from .base import HostAdapter
from .passes import ldm_pass_plan


class A1111(HostAdapter):
    def on_batch(self, run: GenerationRun, p: Any) -> None:
        if not webui.has_per_pass_hook():
            self._begin_pass(run, p)

    def on_sampling(self, run: GenerationRun, p: Any) -> None:
        self._begin_pass(run, p)

    def on_hires(self, run: GenerationRun, p: Any) -> None:
        if not webui.has_per_pass_hook():
            self._begin_pass(run, p)

    def follow_model(self, run: GenerationRun) -> None:
        run.follow_unet(current_unet(), checkpoint_id())

    def _begin_pass(self, run: GenerationRun, p: Any) -> None:
        run.begin_pass(current_unet(), ldm_pass_plan(p, p.deepcache_args), model_id=checkpoint_id())


def current_unet() -> Any:
    """The UNet of the model sampling right now (the refiner replaces ``shared.sd_model``)."""
    model = webui.sd_model()
    try:
        return model.model.diffusion_model
    except AttributeError:
        raise UnsupportedUNetError(f"{type(model).__name__} has no model.diffusion_model") from None


def checkpoint_id() -> str | None:
    """The checkpoint the model holds now: A1111 loads a refiner of the base's config into the
    same model object, so only this tells the refiner's weights from the base's."""
    info = getattr(webui.sd_model(), "sd_checkpoint_info", None)
    return getattr(info, "filename", None)
