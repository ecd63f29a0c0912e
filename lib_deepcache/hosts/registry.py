"""Which WebUI a model belongs to, told apart by the model object it samples with.

* Forge: ``sd_model.forge_objects`` (its UNet patcher);
* AUTOMATIC1111: an ldm/sgm ``UNetModel`` at ``sd_model.model.diffusion_model``;
* SD.Next: a diffusers pipeline with a ``unet`` or a ``transformer`` module (Flux, SD3,
  Chroma), or any other diffusers pipeline (its adapter then names what it cannot cache);
* anything else: :class:`Unsupported`, which says so once and leaves generation uncached.

A new host is one module with a :class:`HostAdapter` and one line here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import console, webui
from .a1111 import A1111
from .base import HostAdapter, Unsupported
from .forge import Forge
from .sdnext import ControlApiNotice, SdNext, is_diffusers_pipeline, offer_in_control_tab


def adapter_for(model: Any) -> HostAdapter:
    """A fresh adapter for a batch sampled with ``model``."""
    if getattr(model, "forge_objects", None) is not None:
        return Forge()
    if hasattr(getattr(model, "model", None), "diffusion_model"):
        return A1111()
    if is_diffusers_pipeline(model):
        return SdNext()
    return Unsupported(model)


def prepare_host(title: str) -> None:
    """Once, when the script is loaded: log lines to the host's console, and on SD.Next a place
    in the Control tab."""
    console.route_to_host_console(webui.host_log())
    if webui.is_sdnext():
        offer_in_control_tab(title)


def scriptless_route(say_once: Callable[[str], None], error_key: str) -> ControlApiNotice | None:
    """What tells of DeepCache asked for where the host runs no scripts (SD.Next's control
    API), registered with the host's before-process callback; None on the other hosts."""
    if not webui.is_sdnext():
        return None
    from modules import script_callbacks

    notice = ControlApiNotice(say_once, error_key)
    script_callbacks.on_before_process(notice.before_process)
    return notice
