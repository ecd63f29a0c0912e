"""Fixtures for the end-to-end tests: one real host server at a time, in the state a test asks.

The machine has two cores, so two WebUIs at once would slow each other down tenfold: a session
keeps at most one server running. Tests are sorted by (host, state) so that each host starts
once per state it is needed in, and the previous host is stopped before the next one starts.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from tests.e2e.build import HostError
from tests.e2e.hostctl import HOST_NAMES, HostServer, HostState
from tests.e2e.skips import pin


def selected_hosts(config: pytest.Config) -> tuple[str, ...]:
    """The hosts named by --host (tests/conftest.py), in a fixed order; all when none named."""
    chosen = config.getoption("--host", default=None) or HOST_NAMES
    return tuple(name for name in HOST_NAMES if name in chosen)


class HostPool:
    """Builds hosts on first use and keeps exactly one of them running."""

    def __init__(self, selected: tuple[str, ...], log_dir: Path) -> None:
        self.selected = selected
        self.log_dir = log_dir
        self.servers: dict[str, HostServer] = {}
        self.current: HostServer | None = None
        # A host that failed to build, or a state that failed to start, fails its later tests
        # at once instead of retrying a multi-minute step for each of them.
        self.failures: dict[tuple[str, HostState | None], str] = {}
        self._other_at_start: dict[str, bool] = {}
        self._controlnet_at_start: dict[str, bool] = {}

    def server(self, name: str) -> HostServer:
        if name not in self.selected:
            pytest.skip(f"host {name} not selected (--host {' --host '.join(self.selected)})")
        if (name, None) in self.failures:
            pytest.fail(self.failures[(name, None)], pytrace=False)
        if name not in self.servers:
            server = HostServer(name, self.log_dir)
            try:
                server.ensure_built()
            except HostError as error:
                self.failures[(name, None)] = str(error)
                raise
            self._other_at_start[name] = server.other_extension_present()
            self._controlnet_at_start[name] = server.controlnet_present()
            self.servers[name] = server
        return self.servers[name]

    def activate(self, name: str, state: HostState) -> HostServer:
        server = self.server(name)
        if state.other_extension and not server.has_other_extension:
            pytest.skip(f"{name} has no other extension titled DeepCache")
        if server.spec.controlnet is None:  # built in (Forge), or the test skips itself
            state = replace(state, controlnet=False)
        if (name, state) in self.failures:
            pytest.fail(self.failures[(name, state)], pytrace=False)
        if self.current is not None and self.current is not server:
            self.current.stop()
        self.current = server
        try:
            server.ensure(state)
        except HostError as error:
            self.failures[(name, state)] = str(error)
            server.stop()
            raise
        return server

    def stopped(self, name: str) -> HostServer:
        """The host, built and not running, for a test that starts it its own way."""
        server = self.server(name)
        if self.current is not None:
            self.current.stop()
        self.current = None
        return server

    def close(self) -> None:
        """Stop every server we started and put the other extensions back as the build had them."""
        for name, server in self.servers.items():
            server.stop()
            with contextlib.suppress(HostError):
                server.set_other_extension(self._other_at_start.get(name, False))
                server.set_controlnet(self._controlnet_at_start.get(name, False))


def item_host(item: pytest.Item) -> str | None:
    """The host a test runs against: its ``host`` or ``host_name`` parameter or a host fixture
    it uses."""
    callspec = getattr(item, "callspec", None)
    for param in ("host", "host_name"):
        if callspec is not None and param in callspec.params:
            return str(callspec.params[param])
    names = getattr(item, "fixturenames", ())
    return next((name for name in HOST_NAMES if name in names), None)


def drives_its_host(item: pytest.Item) -> bool:
    """A test parametrized by ``host_name`` starts and switches its host itself (through
    ``host_pool``); the harness neither starts it nor puts it in one state."""
    callspec = getattr(item, "callspec", None)
    return callspec is not None and "host_name" in callspec.params


def item_state(item: pytest.Item) -> HostState:
    marker = item.get_closest_marker("host_state")
    return HostState(**marker.kwargs) if marker is not None else HostState()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "host" in metafunc.fixturenames:
        metafunc.parametrize("host", selected_hosts(metafunc.config), indirect=True)
    elif "host_name" in metafunc.fixturenames:
        metafunc.parametrize("host_name", selected_hosts(metafunc.config))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """Skips are pinned (tests/e2e/skips.py): one that is not expected fails its test."""
    outcome = yield
    pin(item, outcome.get_result())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Group end-to-end tests by host, then by host state, so that restarts are few."""
    order = {name: i for i, name in enumerate(HOST_NAMES)}
    e2e = [(i, item) for i, item in enumerate(items) if item.get_closest_marker("e2e")]
    if not e2e:
        return
    others = [item for item in items if not item.get_closest_marker("e2e")]

    def key(pair: tuple[int, pytest.Item]) -> tuple:
        """A test that drives its host and names a state comes first in that state's group
        (the host arrives in the previous group's state); one that names none runs after every
        state of its host."""
        index, item = pair
        host = item_host(item)
        rank = order.get(host, len(order)) if host else -1
        driven = drives_its_host(item)
        if driven and item.get_closest_marker("host_state") is None:
            return (rank, 1, (), False, index)
        return (rank, 0, item_state(item).sort_key(), not driven, index)

    items[:] = others + [item for _, item in sorted(e2e, key=key)]


@pytest.fixture(scope="session")
def host_pool(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[HostPool]:
    pool = HostPool(selected_hosts(request.config), tmp_path_factory.mktemp("hosts"))
    try:
        yield pool
    finally:
        pool.close()


@pytest.fixture(autouse=True)
def _host_in_state(request: pytest.FixtureRequest, host_pool: HostPool) -> None:
    """Start (or switch to) the test's host in the state its ``host_state`` marker asks for."""
    name = item_host(request.node)
    if name is not None and not drives_its_host(request.node):
        host_pool.activate(name, item_state(request.node))


@pytest.fixture
def host(request: pytest.FixtureRequest, host_pool: HostPool) -> HostServer:
    """Each selected host in turn (parametrized in ``pytest_generate_tests``)."""
    return host_pool.activate(str(request.param), item_state(request.node))


@pytest.fixture(scope="session")
def a1111(host_pool: HostPool) -> HostServer:
    return host_pool.server("a1111")


@pytest.fixture(scope="session")
def forge(host_pool: HostPool) -> HostServer:
    return host_pool.server("forge")


@pytest.fixture(scope="session")
def sdnext(host_pool: HostPool) -> HostServer:
    return host_pool.server("sdnext")
