"""Interrupt, Skip and a generation that fails inside the host, with DeepCache on, in the real
hosts (issue 23): the host answers, and afterwards the same request, the plain one and a cached
one give the images of a freshly started host, bit for bit (no patch, no cached feature, no
wrapper left behind).

Oracles: the images and DeepCache infotext of a host restarted for this purpose before any fault
(:func:`fresh_results`); the host's own progress bars for "it stopped early" (the stopped loop's
bar ends before its last step, so the stop cannot have come after the generation); the hosts'
own error for the failing request.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.e2e.faults import (
    LONG_STEPS,
    SHORT_STEPS,
    STOP_AFTER_STEP,
    fresh_results,
    hires,
    in_first_pass,
    in_hires_pass,
    loop_progress,
    requests,
    stop_midway,
)
from tests.e2e.hostctl import HostServer
from tests.e2e.oracles import generation_ran, parameters_line, parse_counts, parse_infotext_line
from tests.e2e.payloads import Result, base_payload, deepcache, max_abs_diff, noise_image, png_b64

pytestmark = pytest.mark.e2e


def dc_fields(result: Result) -> dict[str, str]:
    return {k: v for k, v in result.fields().items() if k.lower().startswith("deepcache")}


def assert_nothing_left(host: HostServer, what: str) -> None:
    """The request that met the fault, the plain one and a cached one, as on a fresh host."""
    fresh = fresh_results(host)
    for name in dict.fromkeys([what, "plain", "cached"]):
        again = host.txt2img(requests(host)[name])
        assert max_abs_diff(again.images[0], fresh[name].images[0]) == 0, name
        assert dc_fields(again) == dc_fields(fresh[name]), (name, again.infotexts[0])


def stopped_counts(body: Any) -> Any:
    """The stopped answer's DeepCache counts, or None where the host wrote none."""
    texts = body.get("info") if isinstance(body, dict) else None
    if not isinstance(texts, str) or "DeepCache steps" not in texts:
        return None
    infotexts = json.loads(texts).get("infotexts") or [""]
    fields = parse_infotext_line(parameters_line(infotexts[0]))
    return parse_counts(fields["DeepCache steps"]) if "DeepCache steps" in fields else None


@pytest.mark.parametrize("stage", ["first pass", "hires"])
@pytest.mark.parametrize("action", ["interrupt", "skip"])
def test_a_stop_midway_leaves_nothing_behind(host: HostServer, action: str, stage: str) -> None:
    """Interrupt or Skip after the second step of the first pass (40 steps) or of the hires
    pass (40 steps after a 12-step first pass): the host answers 200, the stopped loop's bar ends
    early, any counts it wrote are those steps, and then nothing is left behind. The counts may
    hold one step more than the bar: a stop that lands while a step's model call runs lets the
    call finish (DeepCache ran it and counts it) and ends the loop before the bar ticks (seen
    with SD.Next's Skip: 7 steps counted, 6 on the bar)."""
    fresh_results(host)  # before the fault
    name = "long" if stage == "first pass" else "long hires"
    when = in_first_pass if stage == "first pass" else in_hires_pass()
    status, body, log = stop_midway(host, requests(host)[name], action, when)

    assert status == 200, (status, str(body)[:2000], log[-3000:])
    done = loop_progress(log, LONG_STEPS)
    assert STOP_AFTER_STEP <= done < LONG_STEPS, f"{action} did not stop the loop: {log[-3000:]}"
    counts = stopped_counts(body)
    if stage == "hires":
        assert loop_progress(log, SHORT_STEPS) == SHORT_STEPS, log[-3000:]
        if isinstance(counts, dict) and isinstance(counts.get("hires"), tuple):
            assert counts["first pass"] == (4, 8), counts
            assert sum(counts["hires"]) in (done, done + 1), (counts, done)
    elif isinstance(counts, tuple):
        assert sum(counts) in (done, done + 1), (counts, done)
    assert_nothing_left(host, name)


def failing_request(host: HostServer) -> tuple[str, dict[str, Any], int, str]:
    """(route, payload, status, the host's error) of a request that fails inside the host
    mid-run, after DeepCache has cached a pass.

    A1111: CFG scale 1e30 overflows the latents to NaN; both passes run (cached), then the
    host's NaN check raises ``NansException`` (HTTP 500). Forge's NaN check does nothing
    (``devices.test_for_nans`` returns at once), so there its hires pass fails instead: the
    first pass runs cached, then the Real-ESRGAN upscaler downloads its weights, which fails
    offline (``RealESRGAN_x4plus.pth``); Forge logs the error and finishes the hires pass
    (HTTP 200). SD.Next has no NaN check; its img2img at denoising strength 1.5 fails inside
    diffusers' pipeline (``ValueError``), which SD.Next logs and answers 200 with no image.
    """
    on = deepcache(interval=3)
    if host.name == "sdnext":
        init = [png_b64(noise_image())]
        payload = base_payload(host, init_images=init, denoising_strength=1.5, alwayson_scripts=on)
        return "img2img", payload, 200, "The value of strength should in [0.0, 1.0]"
    if host.name == "forge":
        fields = {**hires(host), "hr_upscaler": "R-ESRGAN 4x+"}
        payload = base_payload(host, **fields, alwayson_scripts=on)
        return "txt2img", payload, 200, "RealESRGAN_x4plus"
    payload = base_payload(host, cfg_scale=1e30, **hires(host), alwayson_scripts=on)
    return "txt2img", payload, 500, "NansException"


def test_a_generation_failing_inside_the_host_leaves_nothing_behind(host: HostServer) -> None:
    fresh_results(host)
    route, payload, expect, error = failing_request(host)
    mark = host.log_mark()
    status, body = host.post(f"/sdapi/v1/{route}", payload)
    log = host.log_since(mark)

    assert status == expect, (status, str(body)[:2000])
    assert error in str(body) + log, (str(body)[:2000], log[-3000:])
    if host.name == "sdnext":
        assert not (isinstance(body, dict) and body.get("images")), "it gave an image"
    else:
        assert generation_ran(log), "the host failed before sampling: " + log[-3000:]
    assert_nothing_left(host, "cached")
