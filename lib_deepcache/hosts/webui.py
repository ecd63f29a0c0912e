"""The few WebUI modules the adapters use, behind typed functions.

The WebUI's ``modules`` package exists only inside a running WebUI (AUTOMATIC1111, Forge and
SD.Next all name it so), so it is imported when a function here is called, never when an
adapter is imported: the adapters stay importable, and testable, without a WebUI.
"""

from __future__ import annotations

import importlib.util
from typing import Any


def sd_model() -> Any:
    """The model sampling now (A1111's refiner replaces it mid-pass)."""
    from modules import shared

    return shared.sd_model


def host_log() -> Any:
    """SD.Next's own logger (``shared.log``); None on hosts without one."""
    from modules import shared

    return getattr(shared, "log", None)


def has_per_pass_hook() -> bool:
    """A1111 >= 1.10 and Forge call ``process_before_every_sampling`` before every sampler call
    (first pass, hires pass, img2img); older WebUIs have only ``process_batch``/``before_hr``."""
    from modules import scripts

    return "process_before_every_sampling" in vars(scripts.Script)


def setup_img2img_steps(p: Any, steps: int | None) -> tuple[int, int]:
    """The host's own ``(steps, t_enc)`` for an img2img-like pass (denoising strength)."""
    from modules import sd_samplers_common

    return sd_samplers_common.setup_img2img_steps(p, steps)


def scripts_data() -> list[Any]:
    """Every loaded script of the WebUI, in load order."""
    from modules import scripts

    return list(scripts.scripts_data)


def is_sdnext() -> bool:
    """SD.Next has a diffusers processing module that AUTOMATIC1111 and Forge do not."""
    try:
        return importlib.util.find_spec("modules.processing_diffusers") is not None
    except (ImportError, ValueError):
        return False
