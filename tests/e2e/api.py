"""A host's JSON API as the tests use it: requests with the standard library, and generations
checked against the status they expect, with the host's log of the request kept beside."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

from .build import HostError
from .oracles import generation_ran
from .payloads import Result, with_host_quirks

RATE_LIMIT_RETRIES = 60
LATE_LOG_HOSTS = ("sdnext",)
QUIET_S = 0.5
QUIET_MAX_S = 5.0
RATE_LIMIT_WAIT_S = 2.0


class HostApi:
    """HTTP for :class:`HostServer`, which supplies the name, the address and the log."""

    name: str

    @property
    def url(self) -> str:
        raise NotImplementedError

    def log_mark(self) -> int:
        raise NotImplementedError

    def log_since(self, mark: int) -> str:
        raise NotImplementedError

    def log_tail(self, chars: int = 6000) -> str:
        raise NotImplementedError

    def request(
        self, method: str, path: str, payload: Any = None, timeout: float = 600
    ) -> tuple[int, Any]:
        """JSON in, (status, JSON or text) out; HTTP errors are answers, not exceptions.

        SD.Next limits its API per route and minute (txt2img: 60 a minute, HTTP 429 beyond);
        the small test models go faster than that, so a refused request waits and is sent
        again, as a patient client would."""
        for _ in range(RATE_LIMIT_RETRIES):
            status, body = self._request_once(method, path, payload, timeout)
            if status != 429:
                break
            time.sleep(RATE_LIMIT_WAIT_S)
        return status, body

    def _request_once(
        self, method: str, path: str, payload: Any, timeout: float
    ) -> tuple[int, Any]:
        data = None if payload is None else json.dumps(payload).encode()
        req = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json"} if data is not None else {},
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as error:
            status, raw = error.code, error.read()
        except (urllib.error.URLError, OSError) as error:
            raise HostError(
                f"{self.name}: {method} {path} got no answer ({error}); log tail:\n"
                + self.log_tail()
            ) from None
        text = raw.decode(errors="replace")
        try:
            return status, json.loads(text)
        except ValueError:
            return status, text

    def post(self, path: str, payload: Any, timeout: float = 600) -> tuple[int, Any]:
        return self.request("POST", path, payload, timeout)

    def get(self, path: str, timeout: float = 60) -> tuple[int, Any]:
        return self.request("GET", path, None, timeout)

    def generate(self, route: str, payload: dict[str, Any], expect: int = 200) -> Result:
        """POST a generation and check the status; a failure shows the body and the log."""
        mark = self.log_mark()
        status, body = self.post(f"/sdapi/v1/{route}", with_host_quirks(self, payload))
        log = self.log_since(mark)
        for _ in range(20):  # the last progress line may reach the log just after the answer
            if status != 200 or generation_ran(log):
                break
            time.sleep(0.1)
            log = self.log_since(mark)
        if self.name in LATE_LOG_HOSTS:
            self._await_quiet_log()
            log = self.log_since(mark)
        if status != expect:
            shown = json.dumps(body)[:3000] if not isinstance(body, str) else body[:3000]
            raise AssertionError(
                f"{self.name} {route}: HTTP {status}, expected {expect}\nbody: {shown}\n"
                f"log since the request:\n{log[-6000:]}"
            )
        return Result.from_response(status, body, log)

    def _await_quiet_log(self) -> None:
        """Until the log has not grown for QUIET_S (at most QUIET_MAX_S): SD.Next's console
        output (its progress display, its log lines) can reach the log after the answer;
        unwaited, a request's bars and DeepCache line landed in the next request's log slice
        (seen in CI: [12, 12] for one 12-step generation)."""
        deadline = time.monotonic() + QUIET_MAX_S
        size = self.log_mark()
        while time.monotonic() < deadline:
            time.sleep(QUIET_S)
            grown = self.log_mark()
            if grown == size:
                return
            size = grown

    def txt2img(self, payload: dict[str, Any], expect: int = 200) -> Result:
        return self.generate("txt2img", payload, expect)

    def img2img(self, payload: dict[str, Any], expect: int = 200) -> Result:
        return self.generate("img2img", payload, expect)

    def sampler_names(self) -> list[str]:
        status, body = self.get("/sdapi/v1/samplers")
        if status != 200 or not isinstance(body, list):
            raise HostError(f"{self.name}: /sdapi/v1/samplers answered {status}: {body!r:.500}")
        return [str(item.get("name")) for item in body if isinstance(item, dict)]
