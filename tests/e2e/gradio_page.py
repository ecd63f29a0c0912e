"""A host's page driven over gradio's own HTTP protocol, the way its browser code calls an
event: the event is found in ``GET /config`` by the ``elem_id`` of the components it reads and
writes (never by a position, which changes with every extension installed), then called with
gradio 3's ``POST /run/predict`` (A1111, SD.Next) or gradio 4's queue (Forge: its events accept
no direct POST), ``POST /queue/join`` and the server-sent events of ``GET /queue/data``."""

from __future__ import annotations

import json
import urllib.request
import uuid
from collections.abc import Callable
from typing import Any

from .api import HostApi

Dependency = dict[str, Any]


class GradioPage:
    def __init__(self, host: HostApi) -> None:
        self.host = host
        self.session_hash = uuid.uuid4().hex[:11]
        status, config = host.get("/config", timeout=120)
        assert status == 200 and isinstance(config, dict), f"/config: {status}"
        self.gradio4 = str(config.get("version", "3")).split(".")[0] >= "4"
        self.components = {c["id"]: c for c in config["components"]}
        self.layout: dict[str, Any] = config.get("layout", {})
        self.dependencies: list[Dependency] = config["dependencies"]
        self.by_elem_id: dict[str, list[int]] = {}
        for component in config["components"]:
            elem_id = component.get("props", {}).get("elem_id")
            if elem_id:
                self.by_elem_id.setdefault(elem_id, []).append(component["id"])

    def component(self, elem_id: str) -> int:
        ids = self.by_elem_id.get(elem_id, [])
        assert len(ids) == 1, f"elem_id {elem_id!r}: {len(ids)} components"
        return ids[0]

    def inside(self, elem_id: str) -> list[dict[str, Any]]:
        """The components laid out under the one with ``elem_id`` (a tab, an accordion), from
        the page's layout tree."""
        root = self.component(elem_id)
        found: list[dict[str, Any]] = []

        def walk(node: dict[str, Any], under: bool) -> None:
            under = under or node.get("id") == root
            if under and node.get("id") != root and node.get("id") in self.components:
                found.append(self.components[node["id"]])
            for child in node.get("children", []):
                walk(child, under)

        walk(self.layout, False)
        return found

    def events(self, match: Callable[[Dependency], bool]) -> list[int]:
        """The events (their ``fn_index``) that ``match`` accepts, in the page's order; events
        run by the page's JavaScript alone (no server function) are left out."""
        return [
            i for i, d in enumerate(self.dependencies) if d.get("backend_fn", True) and match(d)
        ]

    def call(self, fn: int, data: list[Any]) -> list[Any]:
        """The event's outputs, in the order of its ``outputs``."""
        if self.gradio4:
            return self._queued(fn, data)
        payload = {"fn_index": fn, "data": data, "session_hash": self.session_hash}
        status, answer = self.host.post("/run/predict", payload)
        assert status == 200 and isinstance(answer, dict) and "data" in answer, (
            f"gradio event {fn}: HTTP {status}: {json.dumps(answer)[:2000]}"
        )
        return answer["data"]

    def _queued(self, fn: int, data: list[Any]) -> list[Any]:
        payload = {"fn_index": fn, "data": data, "session_hash": self.session_hash,
                   "event_data": None, "trigger_id": None}  # fmt: skip
        status, joined = self.host.post("/queue/join", payload)
        assert status == 200 and isinstance(joined, dict), f"queue/join: {status} {joined}"
        url = f"{self.host.url}/queue/data?session_hash={self.session_hash}"
        with urllib.request.urlopen(url, timeout=120) as stream:
            for raw in stream:
                line = raw.decode(errors="replace").strip()
                if not line.startswith("data:"):
                    continue
                message = json.loads(line[5:])
                if message.get("msg") == "process_completed":
                    output = message.get("output") or {}
                    assert message.get("success"), f"gradio event {fn} failed: {output}"
                    return output["data"]
        raise AssertionError(f"gradio event {fn}: the stream ended without a result")


def value_of(output: Any) -> Any:
    """An event's output as the component shows it: gradio wraps some as update dicts."""
    if isinstance(output, dict) and output.get("__type__") == "update":
        return output.get("value")
    return output
