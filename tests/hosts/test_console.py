"""The extension's log lines reach the host's console exactly once."""

from __future__ import annotations

import io
import logging

import pytest

from lib_deepcache.hosts import console


@pytest.fixture
def clean_loggers():
    """Our logger and the root one with no handlers (pytest adds its own to the root at each
    test phase, so they are cleared in the test body)."""
    ours, root = console.logger, logging.getLogger()
    saved = (ours.handlers[:], ours.level, ours.propagate)
    ours.handlers = []
    yield ours, root
    ours.handlers, ours.level, ours.propagate = saved


def test_a1111_lines_go_to_stdout_once_even_after_a_late_basic_config(clean_loggers, capsys):
    ours, root = clean_loggers
    pytest_handlers, root.handlers = root.handlers[:], []
    try:
        console.route_to_host_console(None)
        console.route_to_host_console(None)  # idempotent
        ours.info("DeepCache: 4 full / 8 cached steps")
        assert capsys.readouterr().out == "DeepCache: 4 full / 8 cached steps\n"
        late = io.StringIO()
        root.addHandler(logging.StreamHandler(late))  # what a later logging.basicConfig does
        ours.info("DeepCache: 3 full / 5 cached steps")
        assert capsys.readouterr().out == ""
        assert late.getvalue() == "DeepCache: 3 full / 5 cached steps\n"
    finally:
        root.handlers = pytest_handlers


def test_sdnext_lines_share_its_loggers_handlers(clean_loggers):
    ours, _ = clean_loggers
    sdnext_log = logging.Logger("sd")
    stream = io.StringIO()
    sdnext_log.handlers.append(logging.StreamHandler(stream))
    console.route_to_host_console(sdnext_log)
    assert ours.handlers is sdnext_log.handlers  # refilled in place by SD.Next: still shared
    ours.info("DeepCache: 4 full / 8 cached steps")
    assert stream.getvalue() == "DeepCache: 4 full / 8 cached steps\n"
