"""The DeepCache accordion: its controls, in the order of the API's ``args``, and paste-back.

Built with the host's gradio (3 on A1111 and SD.Next, 4 on Forge): only components and
arguments both versions have.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import gradio as gr

from ..engine.params import MAX_DEPTH, SCHEDULES
from . import webui
from .script_args import ARG_NAMES, ScriptArgs, pasted

logger = logging.getLogger("deepcache")

ElemId = Callable[[str], str]

# The interval sliders' labels name their 0: the WebUI saves each slider's value, minimum and
# maximum under its label (ui-config.json), so under the old labels ("Cache interval", 1-10,
# default 3) an existing install would never show auto.
INTERVAL_LABEL = "Cache interval (0 = auto)"
HIRES_INTERVAL_LABEL = "Hires cache interval (0 = auto)"
# under the interval slider: what auto does (docs/quality.md "Per-model defaults")
AUTO_INFO = "auto: 3 on SD1.x/2.x, 2 on SDXL"


def build_controls(elem_id: ElemId, is_img2img: bool) -> list[Any]:
    """The accordion's controls, one per name of :data:`ARG_NAMES`, in that order."""
    defaults = ScriptArgs.defaults()
    first, hires = defaults.first, defaults.hires

    def slider(
        name: str, label: str, low: float, high: float, step: float, value: float, **extra: Any
    ) -> Any:
        return gr.Slider(
            low, high, value=value, step=step, label=label, elem_id=elem_id(name), **extra
        )

    with _accordion(elem_id) as enabled:
        with gr.Row():
            interval = slider("interval", INTERVAL_LABEL, 0, 10, 1, first.interval, info=AUTO_INFO)
            depth = slider("depth", "Cache depth", 0, MAX_DEPTH, 1, first.depth)
        with gr.Row():
            start = slider("start", "Cache start", 0.0, 1.0, 0.01, first.start)
            end = slider("end", "Cache end", 0.0, 1.0, 0.01, first.end)
        schedule = gr.Radio(
            list(SCHEDULES),
            value=first.schedule,
            label="Refresh schedule",
            elem_id=elem_id("schedule"),
        )
        with gr.Row():
            threshold = slider("threshold", "Adaptive threshold", 0.0, 1.0, 0.01, first.threshold)
            max_cached = slider("max_cached", "Max cached steps", 1, 10, 1, first.max_cached)
        with gr.Row():
            forecast = slider("forecast", "Forecast", 0.0, 1.0, 0.05, first.forecast)
            min_steps = slider("min_steps", "Off below steps", 0, 50, 1, first.min_steps)
        with gr.Group(visible=not is_img2img, elem_id=elem_id("hires_group")):
            hires_enabled = gr.Checkbox(
                value=hires.enabled,
                label="Cache the hires fix pass",
                elem_id=elem_id("hires_enabled"),
            )
            with gr.Row():
                hires_interval = slider(
                    "hires_interval", HIRES_INTERVAL_LABEL, 0, 10, 1, hires.interval
                )
                hires_depth = slider(
                    "hires_depth", "Hires cache depth", 0, MAX_DEPTH, 1, hires.depth
                )
    controls = {
        "enabled": enabled,
        "interval": interval,
        "depth": depth,
        "start": start,
        "end": end,
        "schedule": schedule,
        "hires_enabled": hires_enabled,
        "hires_interval": hires_interval,
        "hires_depth": hires_depth,
        "threshold": threshold,
        "max_cached": max_cached,
        "forecast": forecast,
        "min_steps": min_steps,
    }
    return [controls[name] for name in ARG_NAMES]


def paste_fields(controls: list[Any]) -> list[tuple[Any, Callable[[dict[str, Any]], Any]]]:
    """The script's ``infotext_fields``: each control's value read back from an infotext."""
    pairs = zip(controls, ARG_NAMES, strict=True)
    return [(control, _paste_value(name)) for control, name in pairs]


def _paste_value(name: str) -> Callable[[dict[str, Any]], Any]:
    """Infotext → one control's value; a missing ``DeepCache`` key pastes 'disabled', an
    unreadable one the defaults. The host calls every control's reader once per paste: the
    first control's says why, so the console says it once."""

    def value(fields: dict[str, Any]) -> Any:
        args, problem = pasted(fields)
        if problem is not None and name == ARG_NAMES[0]:
            logger.warning("%s", problem)
        return args.to_dict()[name]

    return value


def _accordion(elem_id: ElemId) -> Any:
    """An accordion with the enable checkbox in its header where the WebUI has one (A1111 and
    Forge >= 1.7). SD.Next keeps an ``InputAccordion`` class for old extensions but marks it
    unused; its checkbox is hidden and waits for A1111's page script to move it into the
    header, so there the plain accordion with a visible checkbox is used."""
    try:
        from modules.ui_components import InputAccordion
    except ImportError:
        return _FallbackAccordion(elem_id)
    if webui.is_sdnext():
        return _FallbackAccordion(elem_id)
    return InputAccordion(False, label="DeepCache", elem_id=elem_id("enabled"))


class _FallbackAccordion:
    """Older WebUIs: a closed accordion whose first control is the enable checkbox."""

    def __init__(self, elem_id: ElemId) -> None:
        self.accordion = gr.Accordion("DeepCache", open=False, elem_id=elem_id("accordion"))
        self.elem_id = elem_id

    def __enter__(self) -> Any:
        self.accordion.__enter__()
        return gr.Checkbox(value=False, label="Enable DeepCache", elem_id=self.elem_id("enabled"))

    def __exit__(self, *exc: Any) -> None:
        self.accordion.__exit__(*exc)
