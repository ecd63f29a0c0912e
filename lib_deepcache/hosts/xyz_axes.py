"""The DeepCache axes of the WebUI's X/Y/Z plot, and their refusal of bad values.

The axes go into the loaded ``xyz_grid`` script module's ``axis_options``. They must be there
before the plot script builds its axis list in its ``ui()``, which runs when the UI is built:
in the UI mode, and in the API-only mode (``--nowebui``) too, where the API builds the UI once at
start-up, before ``on_before_ui`` and ``on_app_started``. So the script adds them at the first UI
component (``on_before_component``, once per load of the script); adding twice changes nothing.

A bad value raised as a plain error from an axis' parse or confirm step reaches an API client
as HTTP 500 with a traceback. Raised as ``fastapi.HTTPException(422)``, the WebUI's own API
error handler answers 422 with the message and no traceback, and the UI shows the message.
"""

from __future__ import annotations

import csv
import inspect
import re
from collections.abc import Callable, Iterable
from typing import Any

from ..engine.params import SCHEDULES, DeepCacheParamError
from .script_args import ScriptArgs

OVERRIDES_ATTR = "deepcache_overrides"  # set per X/Y/Z cell on the copied processing object

# (argument name, value type, choices) per axis
AXES: tuple[tuple[str, type, Callable[[], list[str]] | None], ...] = (
    ("enabled", str, lambda: ["True", "False"]),
    ("interval", int, None),
    ("depth", int, None),
    ("start", float, None),
    ("end", float, None),
    ("schedule", str, lambda: list(SCHEDULES)),
    ("threshold", float, None),
    ("max_cached", int, None),
    ("forecast", float, None),
    ("min_steps", int, None),
)

_NUMBER = r"[+-]?(?:\d+\.?\d*|\.\d+)"
# a number, or the plot's range forms: "1-5", "1-5 (+2)", "1-5 [3]"
_NUMBER_OR_RANGE = re.compile(
    rf"\s*{_NUMBER}\s*(?:-\s*{_NUMBER}\s*(?:\(\s*{_NUMBER}\s*\)|\[\s*\d+\s*\])?\s*)?"
)


def axis_label(name: str) -> str:
    return f"[DeepCache] {name.replace('_', ' ').capitalize()}"


def add_axes_to_plot(scripts_data: Iterable[Any]) -> None:
    """Add the axes to the loaded X/Y/Z plot script, if there is one."""
    module = next(
        (
            d.module
            for d in scripts_data
            if hasattr(d.module, "axis_options") and hasattr(d.module, "AxisOption")
        ),
        None,
    )
    if module is not None:
        add_axes(module)


def add_axes(xyz_module: Any) -> None:
    """Append the axes missing from the plot module."""
    labels = {axis.label for axis in xyz_module.axis_options}
    # SD.Next's AxisOption has no ``prepare`` (its plot parses numbers itself)
    takes_prepare = "prepare" in inspect.signature(xyz_module.AxisOption).parameters
    for name, kind, choices in AXES:
        label = axis_label(name)
        if label in labels:
            continue
        extra = {"prepare": _prepare(label)} if takes_prepare and not choices else {}
        option = xyz_module.AxisOption(
            label, kind, _apply(name), confirm=_confirm(name, label), choices=choices, **extra
        )
        xyz_module.axis_options.append(option)


def refuse(message: str) -> Exception:
    """The error the WebUI turns into a clean HTTP 422 (its API error handler reads the
    status code of a ``fastapi.HTTPException``)."""
    try:
        from fastapi import HTTPException
    except ImportError:  # a host without FastAPI: a plain error still stops the plot
        return ValueError(message)
    return HTTPException(status_code=422, detail=message)


def _apply(name: str) -> Callable[[Any, Any, Any], None]:
    def apply(p: Any, value: Any, values: Any) -> None:
        # A new dict per cell: the grid copies ``p`` shallowly for each cell.
        setattr(p, OVERRIDES_ATTR, {**getattr(p, OVERRIDES_ATTR, {}), name: value})

    return apply


def _prepare(label: str) -> Callable[[str], list[str]]:
    """Split the typed values as the plot does and refuse a non-number before the plot's own
    ``int()``/``float()`` would raise it as a 500."""

    def prepare(text: str) -> list[str]:
        values = [value.strip() for value in next(csv.reader([text or ""]), [])]
        for value in values:
            if value and not _NUMBER_OR_RANGE.fullmatch(value):
                raise refuse(f"{label}: {value!r} is not a number or a range such as 1-5")
        return values

    return prepare


def _confirm(name: str, label: str) -> Callable[[Any, Any], None]:
    def confirm(p: Any, values: Any) -> None:
        for value in values:
            try:
                ScriptArgs.defaults().with_overrides({name: value})
            except DeepCacheParamError as error:
                raise refuse(f"{label}: {error}") from None

    return confirm
