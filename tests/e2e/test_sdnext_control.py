"""SD.Next's control pipeline with a ControlNet beside DeepCache, in its Control tab (issue #15).

SD.Next runs ControlNet as a diffusers ``StableDiffusionControlNetPipeline`` around the same UNet
object, which receives the ControlNet's residuals as ``down_block_additional_residuals`` and
``mid_block_additional_residual`` on every call. Its ``/sdapi/v1/control`` API drops
``alwayson_scripts``, so no extension script can be asked for there; the Control tab runs ours,
driven here over the tab's gradio events (:mod:`tests.e2e.control_tab`; the host runs with
``--ui``). The ControlNet is random and seeded, made from the e2e model's UNet by
tools/hosts/make_diffusers_controlnet.py at build time.

Oracles: the tab's own images (strength 0 must give DeepCache's image, DeepCache at interval 1
ControlNet's, bit for bit), hand-computed step counts, measured image distances and the host's
log per request.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.checks import assert_clean_log, record_distances
from tests.e2e.control_tab import ControlTab
from tests.e2e.hostctl import HostServer
from tests.e2e.payloads import deepcache, max_abs_diff, read_png, white_square

pytestmark = [pytest.mark.e2e, pytest.mark.host_state(ui=True)]
SDNEXT_DEFAULT_FORMAT = "jpg"  # its modules/ui_definitions.py: samples_format

CONTROLNET = "deepcache-test-cn"
DC_TEXT = "interval 3, depth 0, start 0%, end 100%, uniform, min steps 8"
DC_COUNTS_12 = (4, 8)  # interval 3 over 12 steps: full at 0, 3, 6, 9
# diffusers' ControlNet pipeline applies a unit on step i of 12 when i / 12 >= start and
# (i + 1) / 12 <= end: [0.05, 0.25] holds steps 1 and 2, both cached at interval 3.
CACHED_WINDOW = (0.05, 0.25)


@pytest.fixture
def tab(sdnext: HostServer) -> Iterator[ControlTab]:
    """The Control tab with the control image set, saving lossless PNGs (their ``parameters``
    chunk is the infotext; SD.Next's default JPEG is 10 levels off on average at 64 px)."""
    status, options = sdnext.get("/sdapi/v1/options")
    assert status == 200 and isinstance(options, dict), options
    # a setting the config file does not hold reads as null, and null written back makes every
    # later txt2img answer 500 (KeyError '.None'): put back SD.Next's own default then
    saved = options.get("samples_format") or SDNEXT_DEFAULT_FORMAT
    sdnext.post("/sdapi/v1/options", {"samples_format": "png"})
    try:
        tab = ControlTab(sdnext)
        tab.set_control_image(white_square())
        yield tab
    finally:
        sdnext.post("/sdapi/v1/options", {"samples_format": saved})


def test_control_pipeline_with_deepcache(tab: ControlTab, record_property) -> None:
    """Counts and infotext; the control steers cached steps too: nearer the uncached ControlNet
    image than the DeepCache image without it, and a unit active only on two cached steps changes
    the DeepCache image."""
    tab.set_unit(CONTROLNET)
    control = tab.generate(None)
    both = tab.generate({"enabled": True, "interval": 3})
    tab.set_unit("None")
    alone = tab.generate({"enabled": True, "interval": 3})
    for result in (control, both, alone):
        assert len(result.images) == 1
        assert_clean_log(result)
    fields = both.fields()
    assert fields.get("DeepCache") == DC_TEXT, both.infotexts[0]
    assert both.counts() == alone.counts() == DC_COUNTS_12
    assert CONTROLNET in both.infotexts[0]
    assert both.log.count("DeepCache: 4 full / 8 cached steps") == 1, both.log[-3000:]
    distance = record_distances(
        record_property,
        both.images[0],
        uncached_control=control.images[0],
        deepcache_without_control=alone.images[0],
    )
    assert distance["uncached_control"] < distance["deepcache_without_control"], distance

    tab.set_unit(CONTROLNET, start=CACHED_WINDOW[0], end=CACHED_WINDOW[1])
    windowed = tab.generate({"enabled": True, "interval": 3})
    assert windowed.counts() == DC_COUNTS_12
    assert max_abs_diff(windowed.images[0], alone.images[0]) > 0
    assert_clean_log(windowed)


def test_strength_zero_is_deepcache_alone_and_interval_one_is_control_alone(
    tab: ControlTab,
) -> None:
    tab.set_unit("None")
    alone = tab.generate({"enabled": True, "interval": 3})
    tab.set_unit(CONTROLNET, strength=0.0)
    zero = tab.generate({"enabled": True, "interval": 3})
    assert zero.counts() == DC_COUNTS_12
    assert max_abs_diff(zero.images[0], alone.images[0]) == 0

    tab.set_unit(CONTROLNET)
    control = tab.generate(None)
    every_step = tab.generate({"enabled": True, "interval": 1})
    assert every_step.counts() == (12, 0)
    assert max_abs_diff(every_step.images[0], control.images[0]) == 0
    for result in (zero, every_step):
        assert_clean_log(result)


def test_batch_of_two_with_control(tab: ControlTab) -> None:
    """Both images counted; image 0 within one level of the single image (ControlNet's own batch
    rounding, as on A1111 and Forge). The gallery leads with the grid of the two (128x64)."""
    tab.set_unit(CONTROLNET)
    single = tab.generate({"enabled": True, "interval": 3})
    batch = tab.generate({"enabled": True, "interval": 3}, control_batch_size=2)
    shapes = [image.shape for image in batch.images]
    assert shapes == [(64, 128, 3), (64, 64, 3), (64, 64, 3)], shapes
    for i in (1, 2):
        assert batch.counts(i) == DC_COUNTS_12, batch.infotexts[i]
    assert max_abs_diff(batch.images[1], single.images[0]) <= 1
    assert max_abs_diff(batch.images[1], batch.images[2]) > 0
    assert_clean_log(batch)


def test_refine_pass_with_control(tab: ControlTab) -> None:
    """SD.Next's refine (hires) pass in the control pipeline, 8 steps at strength 0.5 without
    resizing: both passes cached and counted (hires interval 2: full at 0, 2, 4, 6), and the
    control changes the refined DeepCache image."""
    refine = {
        "control_enable_hr": True,
        "control_hr_force": True,
        "control_steps_alt": 8,
        "control_denoising_strength": 0.5,
    }
    tab.set_unit(CONTROLNET)
    both = tab.generate({"enabled": True, "interval": 3}, **refine)
    tab.set_unit("None")
    alone = tab.generate({"enabled": True, "interval": 3}, **refine)
    want = {"first pass": DC_COUNTS_12, "hires": (4, 4)}
    assert both.counts() == alone.counts() == want, both.infotexts[0]
    assert both.sampler_runs == [12, 8], both.log[-3000:]
    assert max_abs_diff(both.images[0], alone.images[0]) > 0
    assert_clean_log(both)


def control_api(sdnext: HostServer, alwayson: dict | None) -> tuple[int, Any]:
    """One POST /sdapi/v1/control without units (SD.Next's size fields for it are
    ``width_before``/``height_before``): the status, and the image and its PNG infotext (or
    the error body)."""
    payload: dict[str, Any] = {
        "prompt": "a photo of a cat",
        "steps": 12,
        "seed": 1234,
        "cfg_scale": 7,
        "width_before": 64,
        "height_before": 64,
        "control": [],
    }
    if alwayson is not None:
        payload["alwayson_scripts"] = alwayson
    status, body = sdnext.post("/sdapi/v1/control", payload)
    if status != 200:
        return status, body
    return status, read_png(base64.b64decode(body["images"][0]))


def test_the_control_api_runs_no_scripts_and_deepcache_says_so(sdnext: HostServer) -> None:
    """SD.Next's control API drops alwayson_scripts: asked for there, DeepCache cannot run, and
    says so once in the console; the answer is the one without DeepCache (its image bit for bit,
    with the reason in the infotext). This build's control API answers every request with HTTP
    500 (``control_run() got an unexpected keyword argument 'xyz'``: its request copy keeps a
    field it means to exclude), and then DeepCache's answer is that same error."""
    plain_status, plain = control_api(sdnext, None)
    mark = sdnext.log_mark()
    asked = [control_api(sdnext, deepcache(interval=3)) for _ in range(2)]
    log = " ".join(sdnext.log_since(mark).split())  # SD.Next's console wraps long lines
    assert log.count("SD.Next's /sdapi/v1/control runs no extension scripts") == 1, log[-3000:]
    for status, answer in asked:
        assert status == plain_status
        if status != 200:
            assert answer == plain
            continue
        (image, info), (plain_image, plain_info) = answer, plain
        assert max_abs_diff(image, plain_image) == 0
        assert "DeepCache error: SD.Next's /sdapi/v1/control runs no extension scripts" in info
        assert "DeepCache" not in plain_info, plain_info
