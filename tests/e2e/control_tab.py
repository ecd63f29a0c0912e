"""SD.Next's Control tab driven over its gradio API, the way its page drives it.

SD.Next's ``/sdapi/v1/control`` drops ``alwayson_scripts``, so an extension's script never runs
there; its Control *tab* runs the scripts of the extensions it lists (ours adds itself). The tab
keeps its units and input on the server, so one generation is the page's own sequence of gradio
events, each found in ``GET /config`` by the ``elem_id`` of the component that triggers it
(never by a position, which changes with every extension installed):

1. ``control_update`` click: copies every unit control (model, active, processor, strength,
   start, end) onto the server's units; the page clicks it before every generate.
2. ``controlnet_unit-0-override`` change: the first ControlNet unit's own control image.
3. ``control_generate`` click, the ``controlInputMode`` event: the main input source; "Video"
   with no video clears it (the page's "Image" logs an error in this build: only its Kanvas
   input takes images).
4. ``control_generate`` click, the ``submit_control`` event: the generation, every input at its
   component's default but the ones set by ``elem_id`` (prompt, steps, sampler, seed, CFG,
   size, and DeepCache's ``script_control_deepcache_*`` controls).

The answer's gallery serves the saved image files; with ``samples_format`` png (set by the
caller) they are lossless and carry the infotext in their ``parameters`` chunk.
"""

from __future__ import annotations

import json
import time
import urllib.request
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np

from .api import HostApi
from .gradio_page import Dependency, GradioPage
from .payloads import Result, png_b64, read_png


class ControlTab(GradioPage):
    def __init__(self, host: HostApi) -> None:
        super().__init__(host)  # the page's components and events, read from /config
        generate = self.component("control_generate")
        self.fn_generate = self._event(
            lambda d: d["targets"] == [generate] and d.get("js") == "submit_control"
        )
        self.fn_input_mode = self._event(
            lambda d: d["targets"] == [generate] and d.get("js") == "controlInputMode"
        )
        update = self.component("control_update")
        self.fn_units = self._event(lambda d: d["targets"] == [update] and d["trigger"] == "click")
        override = self.component("controlnet_unit-0-override")
        self.fn_image = self._event(
            lambda d: d["trigger"] == "change" and d["inputs"] == [override]
        )
        self.unit0 = self._first_controlnet_unit()

    # ----------------------------------------------------------------- the page's events
    def set_unit(
        self,
        model: str,
        strength: float = 1.0,
        start: float = 0.0,
        end: float = 1.0,
    ) -> None:
        """The first ControlNet unit: this model (``"None"``: no unit), no preprocessor."""
        inputs = self.dependencies[self.fn_units]["inputs"]
        data = self._defaults(self.fn_units)
        values = {
            "model_name": model,
            "enabled": model != "None",
            "process_name": "None",
            "strength": strength,
            "start": start,
            "end": end,
        }
        for name, value in values.items():
            data[inputs.index(self.unit0[name])] = value
        self._predict(self.fn_units, data)

    def set_control_image(self, image: np.ndarray) -> None:
        self._predict(self.fn_image, ["data:image/png;base64," + png_b64(image)])

    def generate(self, deepcache: dict[str, Any] | None, **fields: Any) -> Result:
        """One 64x64, 12-step Euler generation with DeepCache's Control-tab controls (None: off);
        ``fields`` override other tab inputs by ``elem_id``."""
        inputs = self.dependencies[self.fn_generate]["inputs"]
        data = self._defaults(self.fn_generate)
        data[0:3] = [f"task(deepcache-{uuid.uuid4().hex[:8]})", "", "controlnet"]
        values: dict[str, Any] = {
            "control_prompt": "a photo of a cat",
            "control_steps": 12,
            "control_sampling": "Euler",
            "control_seed": 1234,
            "control_cfg_scale": 7,
            "control_before_resize_width": 64,
            "control_before_resize_height": 64,
            **fields,
        }
        dc = {"enabled": False, **(deepcache or {})}
        values.update({f"script_control_deepcache_{k}": v for k, v in dc.items()})
        for elem_id, value in values.items():
            # one component may feed several inputs (the prompt also goes to a script)
            ids = set(self.by_elem_id.get(elem_id, []))
            slots = [i for i, c in enumerate(inputs) if c in ids]
            if not slots or len({inputs[i] for i in slots}) != 1:
                raise AssertionError(f"{elem_id!r} feeds the generate event at {slots}")
            for i in slots:
                data[i] = value
        self._clear_main_input()
        mark = self.host.log_mark()
        answer = self._predict(self.fn_generate, data)
        time.sleep(0.2)  # the console line after the last step may follow the answer
        gallery = answer[2] or []
        images, infotexts = [], []
        for item in gallery:
            name = item[0] if isinstance(item, (list, tuple)) else item
            name = name["name"] if isinstance(name, dict) else name
            image, infotext = read_png(self._file(str(name)))
            images.append(image)
            infotexts.append(infotext)
        return Result(200, answer, [], images, {"infotexts": infotexts}, self.host.log_since(mark))

    # ----------------------------------------------------------------- plumbing
    def _clear_main_input(self) -> None:
        data = self._defaults(self.fn_input_mode)
        data[0], data[2] = "Video", None
        self._predict(self.fn_input_mode, data)

    def _first_controlnet_unit(self) -> dict[str, int]:
        """Unit 0 of the ControlNet kind among the units event's inputs, which run in groups
        headed by a label component naming the unit kind."""
        unit: dict[str, int] = {}
        kind = None
        for component_id in self.dependencies[self.fn_units]["inputs"]:
            component = self.components[component_id]
            if component["type"] == "label":
                kind = (component["props"].get("value") or {}).get("label")
                continue
            elem_id = component["props"].get("elem_id") or ""
            if kind == "controlnet" and elem_id.startswith("control_unit-0-"):
                unit.setdefault(elem_id.split("-", 2)[2], component_id)
        return unit

    def _event(self, match: Callable[[Dependency], bool]) -> int:
        found = [i for i, d in enumerate(self.dependencies) if match(d)]
        if len(found) != 1:
            raise AssertionError(f"expected one gradio event, found {found}")
        return found[0]

    def _defaults(self, fn: int) -> list[Any]:
        inputs = self.dependencies[fn]["inputs"]
        return [self.components[c].get("props", {}).get("value") for c in inputs]

    def _predict(self, fn: int, data: list[Any]) -> list[Any]:
        payload = {"fn_index": fn, "data": data, "session_hash": self.session_hash}
        status, answer = self.host.post("/run/predict", payload)
        if status != 200 or not isinstance(answer, dict) or "data" not in answer:
            raise AssertionError(
                f"gradio event {fn}: HTTP {status}: {json.dumps(answer)[:2000]}\n"
                + self.host.log_tail(4000)
            )
        return answer["data"]

    def _file(self, name: str) -> bytes:
        with urllib.request.urlopen(f"{self.host.url}/file={name}", timeout=60) as response:
            return response.read()
