"""HyperTile beside DeepCache in the real AUTOMATIC1111 and SD.Next (issue #15).

A1111 1.10's built-in HyperTile extension tiles the first self-attention of chosen transformer
blocks: at depth 0 those of input blocks 1-2 and output blocks 9-11, which a cached step at
depth 0 still runs (output block 11). It patches those attention layers once, by instance
``forward``, and leaves them patched; DeepCache wraps whole blocks per pass, so both stack.

Its settings exist only when the UI is built (they register in ``on_ui_settings``): the host
runs with ``--ui`` here. The tiling needs enough latent: the tile is at least 128 px (16
latent pixels), split from the image side's divisors, so 256 px with a 128 px tile gives 2x2
tiles at depth 0, and 64-128 px gives one tile (no change at all). Swap size 1 leaves one
choice per layer, so the tiling is the same whatever number of calls DeepCache skips (with the
default 3 a random pick per call would make cached and uncached runs tile differently).

SD.Next has its own HyperTile (settings ``hypertile_unet_*``): a context around each generation
that wraps every self-attention layer of the diffusers UNet and unwraps it afterwards. Its tiles
follow its tile-size settings down to 8 px of latent, so 64 px with 16 px tiles gives 4x4 tiles
of the full-resolution attention.

Oracles: the host's own images (HyperTile off vs on; DeepCache at interval 1 must give
HyperTile's image bit for bit), hand-computed step counts and the host's log per request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from tests.e2e.checks import assert_clean_log, record_distances
from tests.e2e.hostctl import HostServer
from tests.e2e.payloads import base_payload, deepcache, latent_hires_2x, max_abs_diff

pytestmark = [pytest.mark.e2e, pytest.mark.host_state(ui=True)]

DC_COUNTS_12 = (4, 8)  # interval 3 over 12 steps: full at 0, 3, 6, 9


@dataclass(frozen=True)
class HyperTileSetup:
    """A host's HyperTile settings (for ``override_settings``), an image size at which they
    tile, and the infotext key the host writes for it (None: it writes none)."""

    settings: dict[str, Any]
    size: int
    infotext_key: str | None = None


A1111 = HyperTileSetup(
    {
        "hypertile_enable_unet": True,
        "hypertile_max_depth_unet": 3,
        "hypertile_max_tile_unet": 128,
        "hypertile_swap_size_unet": 1,
        "hypertile_enable_vae": False,
    },
    256,
)
SDNEXT = HyperTileSetup(
    {
        "hypertile_unet_enabled": True,
        "hypertile_unet_tile": 16,
        "hypertile_unet_min_tile": 16,
        "hypertile_unet_swap_size": 1,
        "hypertile_unet_depth": 0,
    },
    64,
    "Hypertile UNet",
)


def request(
    host: HostServer,
    setup: HyperTileSetup,
    hypertile: bool,
    dc: dict[str, Any] | None,
    **extra: Any,
) -> dict[str, Any]:
    payload: dict[str, Any] = {"width": setup.size, "height": setup.size, **extra}
    if hypertile:
        payload["override_settings"] = dict(setup.settings)
    if dc is not None:
        payload["alwayson_scripts"] = deepcache(**dc)
    return base_payload(host, **payload)


def check_stacks(host: HostServer, setup: HyperTileSetup, record_property: Any) -> None:
    """HyperTile changes the image at this size; with DeepCache the counts are DeepCache's and
    the image is neither DeepCache's alone nor HyperTile's alone; DeepCache at interval 1 gives
    HyperTile's image bit for bit."""
    plain = host.txt2img(request(host, setup, False, None))
    tiled = host.txt2img(request(host, setup, True, None))
    alone = host.txt2img(request(host, setup, False, {"interval": 3}))
    both = host.txt2img(request(host, setup, True, {"interval": 3}))
    every_step = host.txt2img(request(host, setup, True, {"interval": 1}))
    assert max_abs_diff(plain.images[0], tiled.images[0]) > 0, "HyperTile changed nothing"
    if setup.infotext_key is not None:
        assert setup.infotext_key in both.fields(), both.infotexts[0]
    assert alone.counts() == both.counts() == DC_COUNTS_12, both.infotexts[0]
    assert both.sampler_runs == [12], both.log[-2000:]
    assert max_abs_diff(both.images[0], alone.images[0]) > 0
    assert max_abs_diff(both.images[0], tiled.images[0]) > 0
    assert every_step.counts() == (12, 0)
    assert max_abs_diff(every_step.images[0], tiled.images[0]) == 0
    record_distances(
        record_property,
        both.images[0],
        uncached_hypertile=tiled.images[0],
        deepcache_alone=alone.images[0],
    )
    for result in (tiled, both, every_step):
        assert_clean_log(result)


def test_hypertile_stacks_with_deepcache(a1111: HostServer, record_property) -> None:
    check_stacks(a1111, A1111, record_property)


def test_sdnext_hypertile_stacks_with_deepcache(sdnext: HostServer, record_property) -> None:
    """SD.Next's HyperTile at 64 px with 16 px tiles (4x4 tiles of the full-resolution
    attention)."""
    check_stacks(sdnext, SDNEXT, record_property)


def test_hypertile_in_the_hires_pass_with_deepcache(a1111: HostServer) -> None:
    """128 px first pass (one tile: HyperTile idle), 2x hires to 256 px (2x2 tiles): both passes
    cached and counted against the host's progress bars; HyperTile changes only the hires pass,
    so with DeepCache the image differs from DeepCache alone."""
    hires = {**latent_hires_2x(), "width": A1111.size // 2, "height": A1111.size // 2}
    alone = a1111.txt2img(request(a1111, A1111, False, {"interval": 3}, **hires))
    both = a1111.txt2img(request(a1111, A1111, True, {"interval": 3}, **hires))
    assert both.images[0].shape == (A1111.size, A1111.size, 3)
    runs = both.sampler_runs
    assert runs == [12, 8], both.log[-3000:]
    # hires interval 2 over 8 steps: full at 0, 2, 4, 6
    want = {"first pass": DC_COUNTS_12, "hires": (4, 4)}
    assert both.counts() == alone.counts() == want, both.infotexts[0]
    assert max_abs_diff(both.images[0], alone.images[0]) > 0
    assert_clean_log(both)
