"""Input as users write it and as it breaks, in the real hosts (issue 23).

* The one-object form without its list, ``"args": {"enabled": true, "interval": 3}``: every host
  indexes ``args`` by position, so the API guard hands it to the host as ``[{...}]``; the image
  is the list form's bit for bit, and a bad bare object is refused naming the field.
* Bad DeepCache args through img2img with an inpainting mask, and beside the X/Y/Z plot (its
  own DeepCache axes with bad values too): HTTP 422 naming the field, nothing generated.
* A malformed infotext pasted into the page (cut in the middle, unknown words, huge numbers):
  DeepCache's controls get the defaults, the console says so once, and the rest of the paste
  still lands (the paste event is called over gradio's protocol: :mod:`.gradio_page`).
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.e2e.gradio_page import GradioPage, value_of
from tests.e2e.hostctl import HostServer
from tests.e2e.oracles import generation_ran
from tests.e2e.payloads import (
    base_payload,
    deepcache,
    left_half_mask,
    max_abs_diff,
    noise_image,
    png_b64,
)

pytestmark = pytest.mark.e2e

ON3 = {"enabled": True, "interval": 3}


def assert_refused(host: HostServer, route: str, payload: dict[str, Any], field: str) -> None:
    """HTTP 422 naming ``field``, answered at once, and no sampling in the host's log."""
    mark = host.log_mark()
    began = time.monotonic()
    status, body = host.post(f"/sdapi/v1/{route}", payload, timeout=60)
    elapsed = time.monotonic() - began
    time.sleep(0.5)  # a generation that did start would log its progress bar by now
    log = host.log_since(mark)
    assert status == 422, (status, str(body)[:2000], log[-2000:])
    assert isinstance(body, dict) and field in str(body), body
    assert not generation_ran(log), log[-2000:]
    assert elapsed < 5, f"a refused request took {elapsed:.1f} s"


def test_the_bare_object_form_is_served_as_the_one_object_list(host: HostServer) -> None:
    listed = host.txt2img(base_payload(host, alwayson_scripts={"DeepCache": {"args": [ON3]}}))
    bare = host.txt2img(base_payload(host, alwayson_scripts={"DeepCache": {"args": ON3}}))
    assert max_abs_diff(listed.images[0], bare.images[0]) == 0
    assert bare.counts() == (4, 8), bare.infotexts[0]
    assert bare.fields().get("DeepCache") == listed.fields().get("DeepCache")
    bad = {"DeepCache": {"args": {"enabled": True, "depth": 12}}}
    refused = base_payload(host, alwayson_scripts=bad)
    assert_refused(host, "txt2img", refused, "depth")


@pytest.mark.parametrize(
    ("args", "field"),
    [([{"enabled": True, "interval": -1}], "interval"), ({"enabled": True, "end": 2}, "end")],
    ids=["list", "bare-object"],
)
def test_bad_args_with_an_inpainting_mask_are_refused(
    host: HostServer, args: Any, field: str
) -> None:
    payload = base_payload(
        host,
        init_images=[png_b64(noise_image())],
        mask=png_b64(left_half_mask()),
        denoising_strength=0.5,
        inpainting_fill=1,
        alwayson_scripts={"DeepCache": {"args": args}},
    )
    assert_refused(host, "img2img", payload, field)


XYZ_TITLE = "x/y/z plot"


def xyz_request(host: HostServer, label: str, text: str, choices: list[str]) -> dict[str, Any]:
    """txt2img with the X/Y/Z plot over one axis found by its label in the plot's own list
    (a choice axis takes its values from the dropdown, a number axis from the text)."""
    status, info = host.get("/sdapi/v1/script-info")
    assert status == 200, info
    plot = next(
        s for s in info if s["name"] == XYZ_TITLE and not s["is_img2img"] and not s["is_alwayson"]
    )
    labels = plot["args"][0]["choices"]
    # x type, values, dropdown; y and z: nothing; legend, lone images, sub grids, no fixed
    # seeds, vary seeds x/y/z, margin, csv mode
    args = [labels.index(label), text, choices, 0, "", [], 0, "", [], True, True, False]
    args += [False, False, False, False, 0, False]
    return base_payload(
        host, script_name=XYZ_TITLE, script_args=args, alwayson_scripts=deepcache(interval=2)
    )


XYZ_BAD = {
    "depth": ("[DeepCache] Depth", "0, 12", []),
    "start": ("[DeepCache] Start", "0.5, 1.5", []),
    "schedule": ("[DeepCache] Schedule", "", ["uniform", "sometimes"]),
    "enabled": ("[DeepCache] Enabled", "", ["True", "maybe"]),
}


@pytest.mark.parametrize("field", sorted(XYZ_BAD))
def test_bad_values_on_the_xyz_plots_deepcache_axes_are_refused(host: HostServer, field) -> None:
    if host.name == "sdnext":
        pytest.skip("SD.Next's XYZ Grid catches every axis error itself (logged, no image)")
    label, text, choices = XYZ_BAD[field]
    assert_refused(host, "txt2img", xyz_request(host, label, text, choices), field)


def test_bad_deepcache_args_beside_the_xyz_plot_are_refused(host: HostServer) -> None:
    """The plot's own args are fine; DeepCache's args are not: refused before the grid."""
    if host.name == "sdnext":
        payload = base_payload(host, script_name="xyz grid script", script_args=[])
    else:
        payload = xyz_request(host, "[DeepCache] Interval", "2, 3", [])
    payload["alwayson_scripts"] = {"DeepCache": {"args": [{"enabled": True, "depth": 99}]}}
    assert_refused(host, "txt2img", payload, "depth")


# --------------------------------------------------------------------------- paste
# DeepCache's controls in the order the page lists them (README "Use from the API")
CONTROLS = (
    "enabled", "interval", "depth", "start", "end", "schedule", "hires_enabled",
    "hires_interval", "hires_depth", "threshold", "max_cached", "forecast", "min_steps",
)  # fmt: skip
DEFAULTS = [False, 0, 0, 0.0, 1.0, "uniform", True, 2, 0, 0.15, 4, 0.0, 8]
INFOTEXT = "a photo of a cat\nSteps: 17, Sampler: Euler, CFG scale: 7, Seed: 5, Size: 64x64, {}"
GOOD = 'DeepCache: "interval 4, depth 1, start 10%, end 90%, non-uniform, min steps 8"'
MALFORMED = {
    "cut in the middle": 'DeepCache: "interv',
    "unknown words": 'DeepCache: "interval 3, turbo mode, depth 0"',
    "huge numbers": 'DeepCache: "interval 99999999999999999999, depth 1e400"',
}
SAID = "DeepCache: cannot paste"
# Its page has two such events; both answer HTTP 500 ({"error": null}) to a direct gradio call
# (seen); the paste reader itself is tested in tests/hosts/test_paste.py
SDNEXT_PASTE = "SD.Next's paste events answer 500 to a direct gradio call"


class PasteButton:
    """txt2img's paste button: the event reading the prompt box and writing the pasted fields,
    DeepCache's controls among them."""

    def __init__(self, host: HostServer) -> None:
        self.host = host
        self.page = GradioPage(host)
        ours = [self.page.component(self.control_id(name)) for name in CONTROLS]
        prompt = self.page.component("txt2img_prompt")
        steps = self.page.component("txt2img_steps")
        found = self.page.events(
            lambda d: d["inputs"] == [prompt] and ours[0] in d["outputs"] and steps in d["outputs"]
        )
        assert found, "no paste event writes DeepCache's controls"
        self.fn = found[0]
        outputs = self.page.dependencies[self.fn]["outputs"]
        self.slots = [outputs.index(c) for c in ours]
        self.steps_slot = outputs.index(steps)

    def control_id(self, name: str) -> str:
        """A control's elem_id; A1111's and Forge's header-checkbox accordion writes its value
        into the checkbox inside it, ``<accordion id>-checkbox``."""
        elem_id = f"script_txt2img_deepcache_{name}"
        inner = f"{elem_id}-checkbox"
        return inner if inner in self.page.by_elem_id else elem_id

    def paste(self, text: str) -> tuple[list[Any], Any, str]:
        """DeepCache's pasted values, the pasted steps, and the host's log meanwhile."""
        mark = self.host.log_mark()
        out = self.page.call(self.fn, [text])
        time.sleep(0.3)
        values = [value_of(out[i]) for i in self.slots]
        return values, value_of(out[self.steps_slot]), self.host.log_since(mark)


@pytest.mark.host_state(ui=True)
def test_a_malformed_pasted_infotext_pastes_the_defaults_and_says_so_once(
    host: HostServer,
) -> None:
    if host.name == "sdnext":
        pytest.skip(SDNEXT_PASTE)
    button = PasteButton(host)
    values, steps, log = button.paste(INFOTEXT.format(GOOD))
    assert values == [True, 4, 1, 0.1, 0.9, "non-uniform", True, 2, 0, 0.15, 4, 0.0, 8]
    assert steps == 17 and SAID not in log
    for case, written in MALFORMED.items():
        values, steps, log = button.paste(INFOTEXT.format(written))
        assert values == DEFAULTS, case
        assert steps == 17, f"{case}: the rest of the paste was lost"
        said = [line for line in log.splitlines() if SAID in line]
        assert len(said) == 1, (case, said or log[-3000:])
