"""Refuse bad DeepCache API arguments with HTTP 422 before a generation starts.

The WebUI runs every script hook inside a try/except that only logs, and answers the client
200 whatever happened, so raising in a hook would silently give an uncached image. Validating
the request body first, in a small ASGI middleware in front of the txt2img/img2img routes, is
the one place where the client can be told which field is wrong.

The args are only checked when they are this extension's: with another extension's script
titled "DeepCache" loaded first, the host hands them to that one (``owns_title`` says which),
and refusing them would break that extension's valid requests.

Users first write the one-object form without its list, ``"args": {"enabled": true}``. Every
host indexes ``args`` by position (a bare object answers 500: ``KeyError: 0``), so the guard
rewrites such a request's DeepCache ``args`` to ``[{...}]``, the one-object form every host hands
to the script unchanged: the body is parsed and written again with the standard ``json``
module, which reads every other value back as the host's own parser does.

Some routes take ``alwayson_scripts`` and drop them (SD.Next's ``/sdapi/v1/control``): no
script runs there, so a request asking for DeepCache would silently get none. The guard lets
such a request through and tells a :class:`ScriptlessRoute` while it runs, which says so.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Protocol

from ..engine.params import DeepCacheParamError
from .script_args import ScriptArgs

GUARDED_PATHS = ("/sdapi/v1/txt2img", "/sdapi/v1/img2img")
# routes whose host drops alwayson_scripts (SD.Next's control API)
SCRIPTLESS_PATHS = ("/sdapi/v1/control",)
SCRIPT_TITLE = "deepcache"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class ScriptlessRoute(Protocol):
    """Told while a request that asks for DeepCache runs on a route that runs no scripts."""

    def begin(self) -> None: ...

    def end(self) -> None: ...


def _load(body: bytes) -> Any:
    """The parsed body; None for one that is not JSON."""
    try:
        return json.loads(body or b"{}")
    except ValueError:
        return None


def _entries_of(payload: Any) -> list[Any]:
    """The ``alwayson_scripts`` entries titled DeepCache (any case); none for a payload that is
    not a JSON object."""
    scripts = payload.get("alwayson_scripts") if isinstance(payload, dict) else None
    if not isinstance(scripts, dict):
        return []
    return [entry for title, entry in scripts.items() if str(title).lower() == SCRIPT_TITLE]


def _deepcache_entries(body: bytes) -> list[Any]:
    return _entries_of(_load(body))


def _args_of(entry: Any) -> Any:
    """An entry's ``args``, a bare object read as the one-object list form."""
    args = entry.get("args", []) if isinstance(entry, dict) else entry
    return [args] if isinstance(args, dict) else args


def with_listed_args(body: bytes) -> bytes | None:
    """The body with each bare-object DeepCache ``args`` written as ``[{...}]``; None when no
    entry has one (the body then goes to the host untouched, byte for byte)."""
    payload = _load(body)
    entries = [entry for entry in _entries_of(payload) if isinstance(entry, dict)]
    bare = [entry for entry in entries if isinstance(entry.get("args"), dict)]
    if not bare:
        return None
    for entry in bare:
        entry["args"] = [entry["args"]]
    return json.dumps(payload).encode()


def asks_for_deepcache(body: bytes) -> bool:
    """Whether the request asks for DeepCache: enabled args, or args too broken to tell."""
    for entry in _deepcache_entries(body):
        try:
            if ScriptArgs.from_args(_args_of(entry)).enabled:
                return True
        except DeepCacheParamError:
            return True
    return False


def check_request(body: bytes) -> DeepCacheParamError | None:
    """The error the request's DeepCache arguments would raise, if any.

    Bodies that are not JSON objects, or that do not mention DeepCache, are left to the host.
    """
    for entry in _deepcache_entries(body):
        if not isinstance(entry, dict):
            return DeepCacheParamError(
                "alwayson_scripts.DeepCache", entry, 'an object {"args": [...]}'
            )
        try:
            ScriptArgs.from_args(_args_of(entry))
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

    def __init__(
        self,
        app: ASGIApp,
        owns_title: Callable[[], bool] = lambda: True,
        scriptless: ScriptlessRoute | None = None,
    ) -> None:
        self.app = app
        self.owns_title = owns_title
        self.scriptless = scriptless

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path")
        posted = scope.get("type") == "http" and scope.get("method") == "POST"
        scriptless = self.scriptless is not None and path in SCRIPTLESS_PATHS
        if not (posted and (path in GUARDED_PATHS or scriptless) and self.owns_title()):
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

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        if scriptless:
            await self._run_scriptless(asks_for_deepcache(body), scope, replay, send)
            return
        listed = with_listed_args(body)
        if listed is not None:
            scope, replay = _with_body(scope, listed, receive)
            body = listed
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
        await self.app(scope, replay, send)

    async def _run_scriptless(self, asks: bool, scope: Scope, receive: Receive, send: Send) -> None:
        if not asks or self.scriptless is None:
            await self.app(scope, receive, send)
            return
        self.scriptless.begin()
        try:
            await self.app(scope, receive, send)
        finally:
            self.scriptless.end()


def _with_body(scope: Scope, body: bytes, receive: Receive) -> tuple[Scope, Receive]:
    """The request as the route must see it with a rewritten body: one ``http.request``
    message, and a ``content-length`` header that matches it."""
    headers = [(k, v) for k, v in scope.get("headers", []) if k.lower() != b"content-length"]
    headers.append((b"content-length", str(len(body)).encode()))
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replay() -> Message:
        return pending.pop(0) if pending else await receive()

    return {**scope, "headers": headers}, replay


def install(
    app: Any,
    owns_title: Callable[[], bool] = lambda: True,
    scriptless: ScriptlessRoute | None = None,
) -> bool:
    """Put the guard in front of a FastAPI/Starlette app, started or not; False if present.
    ``owns_title``: whether the host routes ``alwayson_scripts.DeepCache`` to this extension;
    ``scriptless``: told about requests for DeepCache on routes that run no scripts."""
    if any(getattr(m, "cls", None) is ApiArgsGuard for m in getattr(app, "user_middleware", [])):
        return False
    started = getattr(app, "middleware_stack", None) is not None
    app.middleware_stack = None
    app.add_middleware(ApiArgsGuard, owns_title=owns_title, scriptless=scriptless)
    if started:
        app.middleware_stack = app.build_middleware_stack()
    return True
