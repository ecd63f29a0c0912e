"""DeepCache asked for on a route whose host runs no scripts (SD.Next's control API): the
request goes through untouched, and while it runs the notice knows (console once, infotext).

The API guard is driven as the ASGI server drives it: a scope, the body in one or two
``http.request`` messages, and the app behind it recording what it received."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lib_deepcache.hosts import api_guard
from lib_deepcache.hosts.sdnext import CONTROL_API_MESSAGE, ControlApiNotice


class Recorder:
    """A ScriptlessRoute that notes its calls, and what the app saw while it ran."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def begin(self) -> None:
        self.calls.append("begin")

    def end(self) -> None:
        self.calls.append("end")


def drive(path: str, payload: Any, route: Recorder | None) -> tuple[list[str], bytes, list[int]]:
    """POST ``payload`` to ``path`` through the guard; the app answers 200. Returns the calls
    the app saw interleaved with the route's, the body the app read, and the statuses sent."""
    body = json.dumps(payload).encode()
    chunks = [body[: len(body) // 2], body[len(body) // 2 :]]
    events: list[str] = route.calls if route is not None else []
    seen = bytearray()
    statuses: list[int] = []

    async def app(scope, receive, send):
        events.append("app")
        while True:
            message = await receive()
            seen.extend(message.get("body", b""))
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def receive():
        chunk = chunks.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

    async def send(message):
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    guard = api_guard.ApiArgsGuard(app, scriptless=route)
    scope = {"type": "http", "method": "POST", "path": path}
    asyncio.run(guard(scope, receive, send))
    return events, bytes(seen), statuses


def asking(args: Any) -> dict[str, Any]:
    return {"prompt": "x", "alwayson_scripts": {"deepcache": {"args": args}}}


@pytest.mark.parametrize(
    "args",
    [[{"enabled": True}], [True, 3], [{"enabled": True, "interval": -5}]],
    ids=["named", "positional", "bad-args-not-refused-there"],
)
def test_a_control_request_for_deepcache_runs_untouched_inside_the_notice(args):
    route = Recorder()
    payload = asking(args)
    events, seen, statuses = drive("/sdapi/v1/control", payload, route)
    assert events == ["begin", "app", "end"]
    assert json.loads(seen) == payload
    assert statuses == [200]


@pytest.mark.parametrize(
    "payload",
    [asking([{"enabled": False}]), asking([False, 3]), {"prompt": "x"}, {"alwayson_scripts": 3}],
)
def test_a_control_request_without_deepcache_is_not_noticed(payload):
    route = Recorder()
    events, seen, _ = drive("/sdapi/v1/control", payload, route)
    assert events == ["app"]
    assert json.loads(seen) == payload


def test_the_generation_routes_still_refuse_bad_args_and_never_notice():
    route = Recorder()
    events, _, statuses = drive("/sdapi/v1/txt2img", asking([{"interval": -5}]), route)
    assert (events, statuses) == ([], [422])
    events, _, statuses = drive("/sdapi/v1/txt2img", asking([{"enabled": True}]), route)
    assert (events, statuses) == (["app"], [200])


def test_without_a_notice_the_control_route_is_not_intercepted():
    events, seen, statuses = drive("/sdapi/v1/control", asking([True]), None)
    assert (events, statuses) == (["app"], [200])
    assert json.loads(seen) == asking([True])


@settings(max_examples=200, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
        max_leaves=10,
    )
)
def test_asks_for_deepcache_never_crashes_on_any_json(payload):
    for body in (payload, {"alwayson_scripts": {"DeepCache": payload}}):
        assert api_guard.asks_for_deepcache(json.dumps(body).encode()) in (True, False)


class StableDiffusionProcessingControl:
    """Named like SD.Next's control processing class, the one the notice writes into."""

    def __init__(self) -> None:
        self.extra_generation_params: dict[str, str] = {}


class StableDiffusionProcessingTxt2Img(StableDiffusionProcessingControl):
    pass


def test_the_notice_says_it_once_and_writes_the_control_runs_infotext_while_running():
    said: list[str] = []
    notice = ControlApiNotice(said.append, "DeepCache error")
    idle = StableDiffusionProcessingControl()
    notice.before_process(idle)
    assert idle.extra_generation_params == {}
    notice.begin()
    control, txt2img = StableDiffusionProcessingControl(), StableDiffusionProcessingTxt2Img()
    notice.before_process(control)
    notice.before_process(txt2img)
    notice.end()
    after = StableDiffusionProcessingControl()
    notice.before_process(after)
    assert control.extra_generation_params == {"DeepCache error": CONTROL_API_MESSAGE}
    assert txt2img.extra_generation_params == after.extra_generation_params == {}
    assert said == [f"DeepCache: {CONTROL_API_MESSAGE}"]
