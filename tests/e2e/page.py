"""A real host's page in headless Chromium, as a user works it: tabs and buttons found by their
text, boxes by their label, the DeepCache accordion by its ``elem_id``. Screenshots go to
artifacts/ (kept by CI)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
# gradio 3 (A1111, SD.Next) puts the app in a shadow root; gradio 4 (Forge) does not
APP = "(document.querySelector('gradio-app')?.shadowRoot || document)"
PAGE_TIMEOUT_S = 300
GENERATE_TIMEOUT_S = 300


def screenshot(driver: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def wait_for(driver: Any, script: str, timeout: float, what: str, shot: str = "ui-timeout") -> Any:
    """Poll a JavaScript expression in the page until it is truthy; its value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = driver.execute_script(f"return ({script});")
        if value:
            return value
        time.sleep(0.5)
    screenshot(driver, shot)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def patient(driver: Any) -> Any:
    """Wait as long for a page as for the host: SD.Next's page, on two busy cores, took over
    two minutes to load (the driver's own timeouts are 120 s and 30 s)."""
    driver.command_executor.client_config.timeout = PAGE_TIMEOUT_S + 60
    driver.set_page_load_timeout(PAGE_TIMEOUT_S)
    driver.set_script_timeout(PAGE_TIMEOUT_S)
    return driver


def open_page(driver: Any, url: str) -> None:
    """Load the host's page and wait for its txt2img tab."""
    driver.get(url)
    wait_for(driver, f"{APP}.querySelector('#txt2img_generate')", PAGE_TIMEOUT_S, "the page")


def leave_page(driver: Any) -> None:
    """A blank page: nothing polls the host while it restarts (A1111 dies when a request
    reaches its --ui app before the API is set up)."""
    driver.get("about:blank")


def click_button(driver: Any, text: str, scope: str = "") -> None:
    """Click the visible button whose text is ``text`` (inside the ``scope`` selector)."""
    found = driver.execute_script(
        f"""const b = [...{APP}.querySelectorAll(arguments[1] + ' button')]
            .find(b => b.innerText.trim() === arguments[0] && b.offsetParent !== null);
        if (b) b.click();
        return !!b;""",
        text,
        scope,
    )
    if not found:
        screenshot(driver, "ui-no-button")
        raise AssertionError(f"no visible button {text!r} in {scope or 'the page'}")


def fill_box(driver: Any, label: str, value: str, scope: str = "") -> None:
    """Type into the text box whose label shows ``label``, as a user's typing does."""
    box = (
        f"[...{APP}.querySelectorAll(arguments[2] + ' label')]"
        ".find(l => l.innerText.includes(arguments[0]))?.querySelector('textarea, input')"
    )
    found = driver.execute_script(
        f"""const t = {box};
        if (!t) return false;
        t.value = arguments[1];
        t.dispatchEvent(new Event('input', {{bubbles: true}}));
        return true;""",
        label,
        value,
        scope,
    )
    if not found:
        screenshot(driver, "ui-no-box")
        raise AssertionError(f"no text box labelled {label!r} in {scope or 'the page'}")


def set_number(driver: Any, elem_id: str, value: int) -> None:
    """Type into a gradio number box the way a user does (the slider follows)."""
    driver.execute_script(
        f"""const box = {APP}.querySelector('#{elem_id} input[type=number]');
        box.value = arguments[0];
        box.dispatchEvent(new Event('input', {{bubbles: true}}));
        box.dispatchEvent(new Event('change', {{bubbles: true}}));""",
        value,
    )


def accordions_shown(driver: Any, host_name: str) -> None:
    """The DeepCache accordion on txt2img and img2img (SD.Next: its fallback accordion)."""
    for tab in ("txt2img", "img2img"):
        elem_id = f"script_{tab}_deepcache_" + ("accordion" if host_name == "sdnext" else "enabled")
        wait_for(
            driver,
            f"{APP}.querySelector('#{elem_id}')",
            30,
            f"the DeepCache accordion on {tab}",
            f"ui-{host_name}-no-accordion",
        )


def tick_deepcache(driver: Any, host_name: str) -> None:
    """Enable DeepCache on txt2img: A1111's page script puts a checkbox into the accordion's
    header (a click ticks it without opening); SD.Next's accordion holds a visible checkbox."""
    if host_name == "sdnext":
        header = f"{APP}.querySelector('#script_txt2img_deepcache_accordion .label-wrap')"
        driver.execute_script(f"{header}.click();")
        box = f"{APP}.querySelector('#script_txt2img_deepcache_enabled input')"
        wait_for(driver, f"{box}?.offsetParent !== null", 30, "the Enable DeepCache checkbox")
        driver.execute_script(f"{box}.click();")
        assert driver.execute_script(f"return {box}.checked;")
        return
    box = f"{APP}.querySelector('#script_txt2img_deepcache_enabled-visible-checkbox')"
    wait_for(driver, box, PAGE_TIMEOUT_S, "the accordion's header checkbox", f"ui-{host_name}")
    driver.execute_script(f"{box}.click();")
    assert driver.execute_script(f"return {box}.checked;")
    hidden = f"{APP}.querySelector('#script_txt2img_deepcache_enabled-checkbox input')"
    assert driver.execute_script(f"return {hidden}.checked;")
    label = f"{APP}.querySelector('#script_txt2img_deepcache_enabled .label-wrap')"
    driver.execute_script(f"{label}.click();")  # open it to show the controls
    wait_for(
        driver,
        f"{APP}.querySelector('#script_txt2img_deepcache_interval')?.offsetParent !== null",
        30,
        "the opened accordion's controls",
        f"ui-{host_name}",
    )


def generate_small(driver: Any) -> str:
    """Generate a 64x64, 12-step txt2img from the page; the infotext the page shows."""
    set_number(driver, "txt2img_width", 64)
    set_number(driver, "txt2img_height", 64)
    set_number(driver, "txt2img_steps", 12)
    prompt = f"{APP}.querySelector('#txt2img_prompt textarea')"
    driver.execute_script(
        f"const t = {prompt}; t.value = 'a photo of a cat';"
        " t.dispatchEvent(new Event('input', {bubbles: true}));"
    )
    driver.execute_script(f"{APP}.querySelector('#txt2img_generate').click();")
    info = f"[...{APP}.querySelectorAll('#html_info_txt2img')].map(e => e.innerText).join(' ')"
    return wait_for(
        driver,
        f"{info}.includes('DeepCache steps') && {info}",
        GENERATE_TIMEOUT_S,
        "an infotext with DeepCache steps",
    )
