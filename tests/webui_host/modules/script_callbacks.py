"""Callback registry: extensions register at import; the host fires them, logging failures."""

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from modules import errors

callback_map: dict[str, list[Any]] = defaultdict(list)


@dataclass
class CFGDenoiserParams:
    x: Any
    image_cond: Any
    sigma: Any
    sampling_step: int
    total_sampling_steps: int
    text_cond: Any
    text_uncond: Any
    denoiser: Any = None


def _fire(name: str, *args: Any) -> None:
    for callback in list(callback_map[name]):
        try:
            callback(*args)
        except Exception:
            errors.report(f"Error executing callback {name} for {callback}", exc_info=True)


def on_app_started(callback):
    callback_map["app_started"].append(callback)


def on_cfg_denoiser(callback):
    callback_map["cfg_denoiser"].append(callback)


def on_before_component(callback):
    callback_map["before_component"].append(callback)


def app_started_callback(demo, app):
    _fire("app_started", demo, app)


def cfg_denoiser_callback(params):
    _fire("cfg_denoiser", params)


def before_component_callback(component, **kwargs):
    for callback in list(callback_map["before_component"]):
        try:
            callback(component, **kwargs)
        except Exception:
            errors.report(f"Error in callback before_component: {callback}", exc_info=True)


def remove_callbacks_for_function(function):
    for callbacks in callback_map.values():
        callbacks[:] = [c for c in callbacks if c != function]


def clear():
    callback_map.clear()
