"""Options and markers shared by the whole suite (the end-to-end ones live in tests/e2e)."""

from __future__ import annotations

import pytest

E2E_HOSTS = ("a1111", "forge", "sdnext")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--host",
        action="append",
        choices=E2E_HOSTS,
        default=None,
        help="real WebUI host(s) for the e2e tests (repeatable; default: all three)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "e2e: drives a real WebUI host over HTTP (slow; run with -m e2e)"
    )
    config.addinivalue_line(
        "markers",
        "host_state(ui=False, other_extension=False, folder='sd-webui-deepcache'): "
        "the state an e2e test needs its host in (tests are grouped by it)",
    )
