"""The DeepCache accordion in the real hosts' pages (A1111 and Forge with ``--ui``), driven by
headless Chromium: it is on txt2img and img2img, ticking it and generating writes DeepCache into
the infotext the page shows. Screenshots go to artifacts/ (kept by CI)."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import pytest

from tests.browser import CHROMEDRIVER, CHROMIUM, start_chromium
from tests.e2e.page import APP, screenshot, set_number, wait_for
from tests.e2e.payloads import base_payload, deepcache

pytestmark = [pytest.mark.e2e, pytest.mark.host_state(ui=True)]

PAGE_TIMEOUT_S = 180
GENERATE_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.fail("Debian's chromium and chromium-driver are needed (tools/setup.sh)")
    driver = start_chromium()
    yield driver
    driver.quit()


def test_accordion_ticks_and_generates_with_deepcache_in_the_infotext(host, browser):
    if host.name == "sdnext":
        pytest.skip("SD.Next: its UI test is the Control tab check in test_bugs.py")
    browser.get(host.url + "/")
    wait_for(browser, f"{APP}.querySelector('#txt2img_generate')", PAGE_TIMEOUT_S, "the page")
    for tab in ("txt2img", "img2img"):
        wait_for(
            browser,
            f"{APP}.querySelector('#script_{tab}_deepcache_enabled')",
            30,
            f"the DeepCache accordion on {tab}",
        )
    # the header checkbox A1111's page script puts into the accordion's label
    box = f"{APP}.querySelector('#script_txt2img_deepcache_enabled-visible-checkbox')"
    # set up by the page's script once the UI has loaded
    wait_for(browser, box, PAGE_TIMEOUT_S, "the accordion's header checkbox", f"ui-{host.name}")
    browser.execute_script(f"{box}.click();")  # ticks without opening, as a user's click does
    assert browser.execute_script(f"return {box}.checked;")
    hidden = f"{APP}.querySelector('#script_txt2img_deepcache_enabled-checkbox input')"
    assert browser.execute_script(f"return {hidden}.checked;")
    label = f"{APP}.querySelector('#script_txt2img_deepcache_enabled .label-wrap')"
    browser.execute_script(f"{label}.click();")  # open it to show the controls
    wait_for(
        browser,
        f"{APP}.querySelector('#script_txt2img_deepcache_interval')?.offsetParent !== null",
        30,
        "the opened accordion's controls",
        f"ui-{host.name}",
    )
    set_number(browser, "txt2img_width", 64)
    set_number(browser, "txt2img_height", 64)
    set_number(browser, "txt2img_steps", 12)
    prompt = f"{APP}.querySelector('#txt2img_prompt textarea')"
    browser.execute_script(
        f"const t = {prompt}; t.value = 'a photo of a cat';"
        " t.dispatchEvent(new Event('input', {bubbles: true}));"
    )
    browser.execute_script(f"{APP}.querySelector('#txt2img_generate').click();")
    info = wait_for(
        browser,
        f"{APP}.querySelector('#html_info_txt2img')?.innerText.includes('DeepCache steps')"
        f" && {APP}.querySelector('#html_info_txt2img').innerText",
        GENERATE_TIMEOUT_S,
        "an infotext with DeepCache steps",
    )
    screenshot(browser, f"ui-{host.name}-txt2img")
    # the slider's default, 0 = auto, ran as interval 3 on the SD 1.x model
    want = "interval 3 (auto), depth 0, start 0%, end 100%, uniform, min steps 8"
    assert f'DeepCache: "{want}"' in info
    assert "DeepCache steps: 4 full / 8 cached" in info


def test_png_info_send_to_txt2img_restores_the_deepcache_controls(host, browser, tmp_path):
    """PNG Info reads a DeepCache image's infotext; "Send to txt2img" sets every control."""
    if host.name == "sdnext":
        pytest.skip("SD.Next: its UI test is the Control tab check in test_bugs.py")
    made = host.txt2img(
        base_payload(host, alwayson_scripts=deepcache(interval=4, depth=2, end=0.9))
    )
    image = tmp_path / "deepcache.png"
    image.write_bytes(base64.b64decode(made.images_b64[0]))
    browser.get(host.url + "/")
    wait_for(browser, f"{APP}.querySelector('#txt2img_generate')", PAGE_TIMEOUT_S, "the page")
    browser.execute_script(
        f"[...{APP}.querySelectorAll('#tabs button')]"
        ".find(b => b.innerText.trim() === 'PNG Info').click();"
    )
    upload = wait_for(
        browser, f"{APP}.querySelector('#pnginfo_image input[type=file]')", 30, "the upload"
    )
    upload.send_keys(str(image))
    wait_for(
        browser,
        f"{APP}.querySelector('#pnginfo_generation_info textarea')?.value.includes('DeepCache')",
        60,
        "the PNG's infotext",
        f"ui-{host.name}-pnginfo",
    )
    browser.execute_script(f"{APP}.querySelector('#tab_pnginfo #txt2img_tab').click();")
    control = f"{APP}.querySelector('#script_txt2img_deepcache_%s input[type=number]')?.value"
    pasted = (
        f"({control % 'interval'} === '4' && {control % 'depth'} === '2'"
        f" && {control % 'end'} === '0.9'"
        f" && {APP}.querySelector('#script_txt2img_deepcache_enabled-checkbox input').checked)"
    )
    wait_for(browser, pasted, 60, "the pasted DeepCache controls", f"ui-{host.name}-pasted")
    screenshot(browser, f"ui-{host.name}-pasted")
