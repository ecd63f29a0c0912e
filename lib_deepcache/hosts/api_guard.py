"""Refuse bad DeepCache API arguments with HTTP 422 before a generation starts.

The WebUI runs every script hook inside a try/except that only logs, and answers the client
200 whatever happened, so raising in a hook would silently give an uncached image. Validating
the request body first, in a small ASGI middleware in front of the txt2img/img2img routes, is
the one place where the client can be told which field is wrong.

The args are only checked when they are this extension's: with another extension's script
titled "DeepCache" loaded first, the host hands them to that one (``owns_title`` says which),
and refusing them would break that extension's valid requests.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from ..engine.params import DeepCacheParamError
from .script_args import ScriptArgs

GUARDED_PATHS = ("/sdapi/v1/txt2img", "/sdapi/v1/img2img")
SCRIPT_TITLE = "deepcache"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def check_request(body: bytes) -> DeepCacheParamError | None:
    """The error the request's DeepCache arguments would raise, if any.

    Bodies that are not JSON objects, or that do not mention DeepCache, are left to the host.
    """
    try:
        payload = json.loads(body or b"{}")
    except ValueError:
        return None
    scripts = payload.get("alwayson_scripts") if isinstance(payload, dict) else None
    if not isinstance(scripts, dict):
        return None
    for title, entry in scripts.items():
        if str(title).lower() != SCRIPT_TITLE:
            continue
        if not isinstance(entry, dict):
            return DeepCacheParamError(
                "alwayson_scripts.DeepCache", entry, 'an object {"args": [...]}'
            )
        args = entry.get("args", [])
        try:
            ScriptArgs.from_args(args)
        except DeepCacheParamError as error:
            return error
    return None


def error_body(error: DeepCacheParamError) -> bytes:
    return json.dumps(
        {
            "error": "DeepCacheParamError",
            "detail": str(error),
            "field": error.field,
            "allowed": error.allowed,
        }
    ).encode()


class ApiArgsGuard:
    """ASGI middleware: 422 for bad DeepCache args on the generation routes, else pass through.

    Pure ASGI (no Starlette request objects) so the consumed body can be replayed unchanged to
    the route, on any Starlette version the WebUI ships.
    """

    def __init__(self, app: ASGIApp, owns_title: Callable[[], bool] = lambda: True) -> None:
        self.app = app
        self.owns_title = owns_title

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        guarded = (
            scope.get("type") == "http"
            and scope.get("method") == "POST"
            and scope.get("path") in GUARDED_PATHS
            and self.owns_title()
        )
        if not guarded:
            await self.app(scope, receive, send)
            return
        messages: list[Message] = []
        body = b""
        while True:
            message = await receive()
            messages.append(message)
            body += message.get("body", b"")
            if message.get("type") != "http.request" or not message.get("more_body"):
                break
        error = check_request(body)
        if error is not None:
            payload = error_body(error)
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
            ]
            await send({"type": "http.response.start", "status": 422, "headers": headers})
            await send({"type": "http.response.body", "body": payload})
            return

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)


def install(app: Any, owns_title: Callable[[], bool] = lambda: True) -> bool:
    """Put the guard in front of a FastAPI/Starlette app, started or not; False if present.
    ``owns_title``: whether the host routes ``alwayson_scripts.DeepCache`` to this extension."""
    if any(getattr(m, "cls", None) is ApiArgsGuard for m in getattr(app, "user_middleware", [])):
        return False
    started = getattr(app, "middleware_stack", None) is not None
    app.middleware_stack = None
    app.add_middleware(ApiArgsGuard, owns_title=owns_title)
    if started:
        app.middleware_stack = app.build_middleware_stack()
    return True
