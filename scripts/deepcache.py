"""DeepCache for AUTOMATIC1111, Forge and SD.Next: the WebUI's script, and nothing else.

The accordion, its infotext fields and the X/Y/Z axes are declared here; every generation hook
is one call into :class:`Controller` (``lib_deepcache.hosts``), which hands the pass hooks to
the adapter of the host the model belongs to (A1111, Forge, SD.Next, or a clear "unsupported").
The WebUI puts this extension's folder on ``sys.path`` while it imports this file, so
``lib_deepcache`` is imported at the top.
"""

from __future__ import annotations

import logging
from typing import Any

from modules import script_callbacks, scripts

from lib_deepcache.hosts import api_guard, registry, title_clash, ui, webui, xyz_axes
from lib_deepcache.hosts.controller import ERROR_KEY, Controller
from lib_deepcache.hosts.script_args import INFOTEXT_HIRES_KEY, INFOTEXT_KEY

logger = logging.getLogger("deepcache")

TITLE = "DeepCache"

# The WebUI runs one generation at a time; this is it.
controller = Controller()
_xyz_axes_added = False  # per load of this script: a UI reload loads a fresh X/Y/Z plot too


class DeepCacheScript(scripts.Script):
    def title(self) -> str:
        return TITLE

    def show(self, is_img2img: bool) -> Any:
        return scripts.AlwaysVisible

    def ui(self, is_img2img: bool) -> list[Any]:
        controls = ui.build_controls(self.elem_id, is_img2img)
        self.infotext_fields = ui.paste_fields(controls)
        self.paste_field_names = [INFOTEXT_KEY, INFOTEXT_HIRES_KEY]
        return controls

    def process(self, p: Any, *args: Any) -> None:
        controller.process(p, args)

    def before_process_batch(self, p: Any, *args: Any, **kwargs: Any) -> None:
        controller.before_batch(p)

    def process_batch(self, p: Any, *args: Any, **kwargs: Any) -> None:
        controller.on_batch(p)

    def process_before_every_sampling(self, p: Any, *args: Any, **kwargs: Any) -> None:
        controller.on_sampling(p)

    def before_hr(self, p: Any, *args: Any) -> None:
        controller.on_hires(p)

    def postprocess_batch(self, p: Any, *args: Any, **kwargs: Any) -> None:
        controller.after_batch(p)

    def postprocess(self, p: Any, processed: Any, *args: Any) -> None:
        controller.close()


def _follow_model(params: Any) -> None:
    """Before every CFG denoiser call: the refiner may have swapped the model."""
    controller.follow_model()


def _on_app_started(demo: Any, app: Any) -> None:
    """Scripts are all loaded by now: say once which script titled "DeepCache" (the first
    loaded) receives the API's args, and guard the API only where they are this extension's."""
    owner = title_clash.find_owner(title_clash.scripts_of(webui.scripts_data()), __file__)
    message = owner.console_message(__file__)
    if message is not None:
        controller.say_once(message)
    api_guard.install(app, owns_title=lambda: owner.ours, scriptless=_scriptless)


def _add_xyz_axes(*_: Any, **__: Any) -> None:
    """At the first UI component, before the X/Y/Z plot builds its axis list (see xyz_axes)."""
    global _xyz_axes_added
    if not _xyz_axes_added:
        xyz_axes.add_axes_to_plot(webui.scripts_data())
        _xyz_axes_added = True


registry.prepare_host(TITLE)
_scriptless = registry.scriptless_route(controller.say_once, ERROR_KEY)
script_callbacks.on_cfg_denoiser(_follow_model)
script_callbacks.on_app_started(_on_app_started)
script_callbacks.on_before_component(_add_xyz_axes)
