"""The one-object form as users first write it, ``"args": {...}`` without its list.

Every host indexes ``args`` by position (A1111, Forge and SD.Next answer 500 to a bare object:
``KeyError: 0``), so the API guard hands the host ``[{...}]`` instead, the form each host passes
to the script unchanged. The guard is driven as the ASGI server drives it; the app behind it
records the headers and the body it read. Expected bodies are written out by hand.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from lib_deepcache.hosts import api_guard


def drive(
    payload: Any, owns_title: bool = True, path: str = "/sdapi/v1/txt2img", raw: bytes = b""
) -> tuple[bytes | None, dict[bytes, bytes], list[int], bytes]:
    """POST through the guard in two chunks; returns the body the app read (None: the app never
    ran), the headers it saw, the statuses sent, and the response body."""
    body = raw or json.dumps(payload).encode()
    chunks = [body[: len(body) // 2], body[len(body) // 2 :]]
    seen: dict[str, Any] = {}
    statuses: list[int] = []
    answer = bytearray()

    async def app(scope, receive, send):
        seen["headers"] = dict(scope["headers"])
        read = bytearray()
        while True:
            message = await receive()
            read.extend(message.get("body", b""))
            if not message.get("more_body"):
                break
        seen["body"] = bytes(read)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def receive():
        chunk = chunks.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

    async def send(message):
        if message["type"] == "http.response.start":
            statuses.append(message["status"])
        else:
            answer.extend(message.get("body", b""))

    guard = api_guard.ApiArgsGuard(app, owns_title=lambda: owns_title)
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    scope = {"type": "http", "method": "POST", "path": path, "headers": headers}
    asyncio.run(guard(scope, receive, send))
    return seen.get("body"), seen.get("headers", {}), statuses, bytes(answer)


def test_a_bare_object_reaches_the_host_as_the_one_object_list():
    sent = {
        "prompt": "a cat",
        "steps": 12,
        "cfg_scale": 7.5,
        "alwayson_scripts": {
            "DeepCache": {"args": {"enabled": True, "interval": 3}},
            "Other": {"args": {"kept": "as is"}},
        },
    }
    body, headers, statuses, _ = drive(sent)
    assert statuses == [200]
    assert body is not None
    assert json.loads(body) == {
        "prompt": "a cat",
        "steps": 12,
        "cfg_scale": 7.5,
        "alwayson_scripts": {
            "DeepCache": {"args": [{"enabled": True, "interval": 3}]},
            "Other": {"args": {"kept": "as is"}},  # another script's args are not ours
        },
    }
    assert headers[b"content-length"] == str(len(body)).encode()


def test_any_case_of_the_title_and_img2img_are_served_too():
    sent = {"alwayson_scripts": {"deepCACHE": {"args": {"enabled": True}}}}
    body, _, statuses, _ = drive(sent, path="/sdapi/v1/img2img")
    assert statuses == [200]
    assert json.loads(body) == {"alwayson_scripts": {"deepCACHE": {"args": [{"enabled": True}]}}}


def test_a_bad_bare_object_is_refused_naming_the_field_and_the_host_never_runs():
    body, _, statuses, answer = drive({"alwayson_scripts": {"DeepCache": {"args": {"depth": 12}}}})
    assert body is None and statuses == [422]
    refused = json.loads(answer)
    assert refused["field"] == "depth" and refused["error"] == "DeepCacheParamError"
    assert refused["allowed"] == "an integer from 0 to 11"


def test_the_list_forms_and_other_bodies_pass_byte_for_byte():
    for raw in (
        b'{"alwayson_scripts": {"DeepCache": {"args": [{"enabled": true}]}},  "steps":  12}',
        b'{"alwayson_scripts": {"DeepCache": {"args": [true, 3]}}}',
        b'{"prompt": "no DeepCache", "alwayson_scripts": {"x": {"args": {"a": 1}}}}',
        b"not json at all",
    ):
        body, headers, statuses, _ = drive(None, raw=raw)
        assert (body, statuses) == (raw, [200])
        assert headers[b"content-length"] == str(len(raw)).encode()


def test_args_of_another_extension_titled_deepcache_are_never_rewritten():
    """With another "DeepCache" script loaded first the host hands it the args: its own form."""
    raw = b'{"alwayson_scripts": {"DeepCache": {"args": {"its": "own"}}}}'
    body, _, statuses, _ = drive(None, owns_title=False, raw=raw)
    assert (body, statuses) == (raw, [200])


def test_a_bare_object_asks_for_deepcache_on_the_scriptless_route():
    off = b'{"alwayson_scripts": {"DeepCache": {"args": {}}}}'
    assert api_guard.asks_for_deepcache(off) is False
    on = b'{"alwayson_scripts": {"DeepCache": {"args": {"enabled": true}}}}'
    assert api_guard.asks_for_deepcache(on) is True


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(max_size=8), json_values), st.dictionaries(st.text(), json_values))
def test_the_rewrite_changes_nothing_but_the_args_list(others, args):
    """Whatever else the body holds, the host parses the same values, and args is ``[args]``."""
    sent = {**others, "alwayson_scripts": {"DeepCache": {"args": args}}}
    listed = api_guard.with_listed_args(json.dumps(sent).encode())
    assert listed is not None
    assert json.loads(listed) == {**others, "alwayson_scripts": {"DeepCache": {"args": [args]}}}
