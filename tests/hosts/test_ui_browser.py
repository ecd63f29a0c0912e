"""The accordion in a real browser: gradio 3.41.2 (the WebUI's pin) served on 127.0.0.1 and
driven by headless Chromium. Saves a screenshot to artifacts/ui-deepcache.png."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest

from tests.browser import CHROMEDRIVER, CHROMIUM, start_chromium

HOST = Path(__file__).resolve().parents[1] / "webui_host"
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "artifacts"
LABELS = [
    "Enable DeepCache",
    "Cache interval (0 = auto)",
    "Cache depth",
    "Cache start",
    "Cache end",
    "Refresh schedule",
    "Cache the hires fix pass",
    "Hires cache interval (0 = auto)",
    "Hires cache depth",
]

pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER) and not os.environ.get("CI"),
    reason="Debian chromium + chromium-driver not installed (tools/setup.sh installs them)",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def page(monkeypatch_module):
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    import gradio as gr

    sys.path.insert(0, str(HOST))
    from webui import boot

    # The WebUI before 1.7 has no InputAccordion: the enable box is a visible checkbox.
    monkeypatch_module.setitem(sys.modules, "modules.ui_components", None)
    boot()
    from modules import scripts

    script = scripts.scripts_data[-1].script_class()
    script.is_img2img = False
    with gr.Blocks(analytics_enabled=False) as demo:
        script.ui(False)
    port = free_port()
    demo.queue().launch(
        server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True
    )
    yield f"http://127.0.0.1:{port}/"
    demo.close()


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


@pytest.fixture(scope="module")
def browser():
    driver = start_chromium("1200,1400")
    yield driver
    driver.quit()


def page_errors(driver) -> list[dict]:
    """Severe console entries, except gradio's fonts and scripts from CDNs (no network here)."""
    offline = ("fonts.googleapis.com", "cdnjs.cloudflare.com", "ERR_NAME_NOT_RESOLVED")
    return [
        entry
        for entry in driver.get_log("browser")
        if entry["level"] == "SEVERE" and not any(o in entry["message"] for o in offline)
    ]


def visible_text(driver) -> str:
    return driver.execute_script(
        "return document.querySelector('gradio-app').innerText || document.body.innerText"
    )


def test_hover_hints_cover_every_label(page, browser):
    browser.get(page)
    script = (ROOT / "javascript" / "deepcache_hints.js").read_text()
    hints = browser.execute_script("var titles = {};\n" + script + "\nreturn titles;")
    for label in ["DeepCache", *LABELS]:
        assert hints.get(label), label
