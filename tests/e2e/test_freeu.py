"""Forge's built-in FreeU beside DeepCache in the real host (issue #15).

Forge's FreeU is an output-block patch on the UNet patcher: in every output block whose input
has 4x or 2x the base channels it scales the backbone feature and filters the skip. Those are
the deep blocks a cached step skips (depth 0: a cached step runs input block 0 and output block
11, at the base width), so FreeU reaches a cached step through the feature stored at the last
full step, which FreeU shaped. The e2e checkpoint keeps 320 channels at every level, where FreeU
does nothing; these tests load the full-width SD1.5 checkpoint that tools/hosts/forge-extras.sh
makes (2 GiB), at 128 px (64 px gives flat black images on it, with or without DeepCache).

Oracles: the host's own images (FreeU off vs on; DeepCache at interval 1 must give FreeU's image
bit for bit), hand-computed step counts, the host's log per request, and Forge's own FreeU
step window, which tells where FreeU acts: inside a window that holds only cached steps FreeU
has no block to act on, so DeepCache's image comes out bit for bit (without DeepCache the same
window changes the image).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.checks import assert_clean_log, record_distances
from tests.e2e.hostctl import HostServer
from tests.e2e.payloads import base_payload, deepcache, max_abs_diff

pytestmark = pytest.mark.e2e

FULL_WIDTH = "sd15-random-full"
FREEU_TITLE = "FreeU Integrated (SD 1.x, SD 2.x, SDXL)"
# enabled, b1, b2, s1, s2 (Forge's "SD 1.5" preset), start, end (fractions of the steps)
FREEU_SD15 = [True, 1.5, 1.6, 0.9, 0.2]
SIZE = 128
DC_COUNTS_12 = (4, 8)  # interval 3 over 12 steps: full at 0, 3, 6, 9
# Forge's FreeU acts where sampling_step / 11 lies in [start, end]; its CFG callback reads the
# host's step counter, which lags one step (step k reads k - 1, step 0 reads 0). 4/11 is the
# only value in this window: step 5 with the lag, step 4 without it, cached either way.
CACHED_ONLY_WINDOW = (0.35, 0.38)


@pytest.fixture
def full_width(forge: HostServer) -> Iterator[HostServer]:
    """Forge, put back on its default checkpoint after the test's requests on the full-width
    one (function scope: the harness starts the host per test, after wider fixtures)."""
    status, options = forge.get("/sdapi/v1/options")
    assert status == 200 and isinstance(options, dict), options
    default = options["sd_model_checkpoint"]
    try:
        yield forge
    finally:
        forge.post("/sdapi/v1/options", {"sd_model_checkpoint": default})


def request(
    host: HostServer,
    freeu: tuple[float, float] | None,
    dc: dict[str, Any] | None,
) -> dict[str, Any]:
    """128 px on the full-width checkpoint, FreeU over the step window ``freeu`` (None: off)."""
    scripts: dict[str, Any] = {}
    if freeu is not None:
        scripts[FREEU_TITLE] = {"args": [*FREEU_SD15, *freeu]}
    if dc is not None:
        scripts.update(deepcache(**dc))
    return base_payload(
        host,
        width=SIZE,
        height=SIZE,
        override_settings={"sd_model_checkpoint": FULL_WIDTH},
        override_settings_restore_afterwards=False,
        alwayson_scripts=scripts,
    )


def test_freeu_stacks_with_deepcache(full_width: HostServer, record_property) -> None:
    """FreeU changes the image; with DeepCache the counts are DeepCache's, the image is not
    DeepCache's alone, and at interval 1 it is FreeU's bit for bit."""
    host = full_width
    plain = host.txt2img(request(host, None, None))
    assert plain.fields().get("Model") == FULL_WIDTH, plain.infotexts[0]
    assert plain.images[0].std() > 0, "a flat image on the full-width checkpoint"
    freeu = host.txt2img(request(host, (0.0, 1.0), None))
    alone = host.txt2img(request(host, None, {"interval": 3}))
    both = host.txt2img(request(host, (0.0, 1.0), {"interval": 3}))
    every_step = host.txt2img(request(host, (0.0, 1.0), {"interval": 1}))
    assert max_abs_diff(plain.images[0], freeu.images[0]) > 0, "FreeU changed nothing"
    assert "freeu_b1" in both.fields(), both.infotexts[0]
    assert alone.counts() == both.counts() == DC_COUNTS_12, both.infotexts[0]
    assert both.images[0].std() > 0
    assert max_abs_diff(both.images[0], alone.images[0]) > 0
    assert every_step.counts() == (12, 0)
    assert max_abs_diff(every_step.images[0], freeu.images[0]) == 0
    record_distances(
        record_property,
        both.images[0],
        uncached_freeu=freeu.images[0],
        deepcache_alone=alone.images[0],
    )
    for result in (freeu, both, every_step):
        assert_clean_log(result)


def test_freeu_acts_through_the_full_steps_only(full_width: HostServer) -> None:
    """FreeU limited to one cached step: uncached it changes the image, with DeepCache there is
    no deep block for it to act on and DeepCache's image comes out bit for bit (placeholders of
    skipped blocks that FreeU still sees leave no trace)."""
    host = full_width
    plain = host.txt2img(request(host, None, None))
    windowed = host.txt2img(request(host, CACHED_ONLY_WINDOW, None))
    assert max_abs_diff(plain.images[0], windowed.images[0]) > 0, "the window holds no step"
    alone = host.txt2img(request(host, None, {"interval": 3}))
    both = host.txt2img(request(host, CACHED_ONLY_WINDOW, {"interval": 3}))
    assert both.counts() == DC_COUNTS_12, both.infotexts[0]
    assert max_abs_diff(both.images[0], alone.images[0]) == 0
    assert_clean_log(both)
