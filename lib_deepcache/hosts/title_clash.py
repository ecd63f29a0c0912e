"""Two scripts titled "DeepCache": which one the API's ``alwayson_scripts`` reaches.

The WebUIs (A1111, Forge) look ``alwayson_scripts`` titles up case-insensitively and hand the
args to the FIRST script with that title in load order; extensions load in the alphabetical
order of their folder names. Other extensions are titled "DeepCache" too (aria1th's
sd-webui-deepcache-standalone, LoganBooker's sd-deepcache). When one of them loads first, the
args are theirs: this extension must not validate them as its own (it would refuse their
valid requests) and must say, once, that the API cannot reach it under that title.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

TITLE = "deepcache"


@dataclass(frozen=True)
class TitleOwner:
    """Who receives ``alwayson_scripts.DeepCache``, and who else carries the title."""

    ours: bool
    owner_path: str | None
    others: tuple[str, ...]

    def console_message(self, our_path: str) -> str | None:
        """The one console line for a clash (None when this extension is alone)."""
        if not self.others:
            return None
        our_folder = extension_folder(our_path)
        if self.ours:
            names = ", ".join(extension_folder(path) for path in self.others)
            return (
                f"DeepCache: {names} also registers a script titled 'DeepCache' and loads after"
                f" {our_folder}: API requests' alwayson_scripts 'DeepCache' args reach"
                f" {our_folder}, never {names}."
            )
        owner = extension_folder(self.owner_path or "")
        return (
            f"DeepCache: {owner} also registers a script titled 'DeepCache' and loads before"
            f" {our_folder}: API requests' alwayson_scripts 'DeepCache' args go to {owner}, so"
            f" the API cannot reach {our_folder} (the UI can). To drive {our_folder} from the"
            f" API, disable {owner}, or install {our_folder} in a folder whose name sorts before"
            f" '{owner}'."
        )


def title_of(script_class: type) -> str | None:
    """A script class's title without running its ``__init__`` (titles are constants)."""
    try:
        return str(script_class.title(object.__new__(script_class)))
    except Exception:
        return None


def find_owner(scripts_in_load_order: Iterable[tuple[type, str]], our_path: str) -> TitleOwner:
    """``scripts_in_load_order``: (script class, file path) as the host loaded them."""
    ours = os.path.realpath(our_path)
    titled = [
        os.path.realpath(path)
        for script_class, path in scripts_in_load_order
        if (title_of(script_class) or "").lower() == TITLE
    ]
    if not titled:
        return TitleOwner(ours=True, owner_path=None, others=())
    others = tuple(path for path in titled if path != ours)
    return TitleOwner(ours=titled[0] == ours, owner_path=titled[0], others=others)


def extension_folder(path: str) -> str:
    """The extension's folder name of a script file (``.../extensions/NAME/scripts/x.py``)."""
    parts = os.path.normpath(path).split(os.sep)
    if "scripts" in parts:
        index = len(parts) - 1 - parts[::-1].index("scripts")
        if index > 0:
            return parts[index - 1]
    return os.path.basename(path)


def scripts_of(scripts_data: Iterable[Any]) -> list[tuple[type, str]]:
    """(class, path) pairs of the host's loaded script records (``ScriptClassData``)."""
    return [(data.script_class, data.path) for data in scripts_data]
