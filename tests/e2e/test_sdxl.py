"""DeepCache on an SDXL-layout checkpoint in the real AUTOMATIC1111 host.

A1111 runs SDXL through Stability's ``sgm`` code (``DiffusionEngine``, a ``GeneralConditioner``
with two text encoders and a size/crop vector, a UNet of 3 levels: 9 input and 9 output blocks,
not SD 1.x's 12). The SD 1.x tests never reach that path, nor the clamping of a requested depth
to the 9-block UNet. ``tools/hosts/make_sdxl_ckpt.py`` (run by ``tools/hosts/a1111-extras.sh``)
writes ``tiny-sdxl-random``, the SDXL base config at small widths with seeded random weights,
which this real host loads from its ``.yaml`` and runs at 64x64 in seconds.

Oracles: hand-computed step counts for the uniform schedule, the host's own plain image for
"DeepCache changed something", the depth-8 image for "depth 11 was clamped to 8" (the deepest
skip branch of 9 blocks: the two requests must give the same image), the checkpoint file's
own sha256 for "the SDXL checkpoint is the one that ran", and the default model's image from
before for "switching back in the same session restores it".
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.build import HostError
from tests.e2e.hostctl import HostServer
from tests.e2e.oracles import parse_counts
from tests.e2e.payloads import Result, base_payload, deepcache, max_abs_diff

pytestmark = pytest.mark.e2e

XL_NAME = "tiny-sdxl-random"
XL_FILE = f"data/models/Stable-diffusion/{XL_NAME}.safetensors"
# Input (and output) blocks of an SDXL UNet: the input conv, 2 res blocks on each of 3 levels,
# 2 downsamples between them: 1 + 6 + 2 = 9 (skip branches 0..8).
SDXL_BLOCKS = 9
# Uniform interval 3 over 12 steps: full passes at steps 0, 3, 6, 9, the other 8 cached.
COUNTS_12 = (4, 8)


def xl_payload(host: HostServer, **fields: Any) -> dict[str, Any]:
    """The shared small request on the SDXL checkpoint (restored as the option afterwards)."""
    return base_payload(host, override_settings={"sd_model_checkpoint": XL_NAME}, **fields)


def short_hash(path: Path) -> str:
    """A1111's "Model hash": the first 10 hex digits of the file's sha256."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:10]


def assert_ran_on_xl(result: Result, model_hash: str) -> dict[str, str]:
    """The infotext names the SDXL checkpoint; the host logged one 12-step sampling loop."""
    fields = result.fields()
    assert fields.get("Model") == XL_NAME, result.infotexts[0]
    assert fields.get("Model hash") == model_hash, result.infotexts[0]
    assert fields.get("Size") == "64x64", result.infotexts[0]
    assert result.sampler_runs == [12], result.log[-3000:]
    return fields


def test_sdxl_layout_checkpoint_caches_and_clamps_depth(a1111: HostServer) -> None:
    """Plain and cached SDXL runs, depth 11 run as depth 8, then back to the SD 1.x default.

    The switch back runs in the same server session (A1111 swaps the model object when the
    config differs); it was seen to work bit-identically, so the test shares the default host
    state with the others and checks that it leaves the default model as it found it.
    """
    model_hash = short_hash(a1111.target / XL_FILE)
    status, options = a1111.get("/sdapi/v1/options")
    assert status == 200 and isinstance(options, dict), options
    default_checkpoint = options.get("sd_model_checkpoint")
    sd1_before = a1111.txt2img(base_payload(a1111))
    assert sd1_before.fields().get("Model") != XL_NAME
    try:
        plain = a1111.txt2img(xl_payload(a1111))
        assert_ran_on_xl(plain, model_hash)
        assert not [key for key in plain.fields() if key.lower().startswith("deepcache")]
        assert plain.images[0].std() > 0, "a flat image: degenerate random weights"

        cached = a1111.txt2img(xl_payload(a1111, alwayson_scripts=deepcache(interval=3, depth=0)))
        fields = assert_ran_on_xl(cached, model_hash)
        assert fields.get("DeepCache") == (
            "interval 3, depth 0, start 0%, end 100%, uniform, min steps 8"
        )
        assert parse_counts(fields["DeepCache steps"]) == COUNTS_12, cached.infotexts[0]
        assert max_abs_diff(plain.images[0], cached.images[0]) > 0, "DeepCache changed nothing"

        # Depth 11 is valid for SD 1.x (12 blocks); on 9 blocks it must run as depth 8, the
        # deepest branch, not fail or index past the UNet. The infotext keeps the request
        # (so that pasting it back asks for the same thing); the console says what ran.
        deepest = a1111.txt2img(xl_payload(a1111, alwayson_scripts=deepcache(interval=3, depth=11)))
        fields = assert_ran_on_xl(deepest, model_hash)
        assert fields.get("DeepCache") == (
            "interval 3, depth 11, start 0%, end 100%, uniform, min steps 8"
        )
        assert parse_counts(fields["DeepCache steps"]) == COUNTS_12, deepest.infotexts[0]
        assert re.search(rf"depth 11 clamped to {SDXL_BLOCKS - 1}\b", deepest.log), deepest.log
        depth8 = a1111.txt2img(
            xl_payload(a1111, alwayson_scripts=deepcache(interval=3, depth=SDXL_BLOCKS - 1))
        )
        assert_ran_on_xl(depth8, model_hash)
        assert max_abs_diff(deepest.images[0], depth8.images[0]) == 0, "depth 11 is not depth 8"
        assert max_abs_diff(plain.images[0], deepest.images[0]) > 0
        assert max_abs_diff(cached.images[0], deepest.images[0]) > 0

        # auto, the default interval, runs SDXL's own: interval 2 (docs/quality.md "Per-model
        # defaults"): full at 0, 2, ..., 10 of 12, interval 2's image bit for bit
        two = a1111.txt2img(xl_payload(a1111, alwayson_scripts=deepcache(interval=2)))
        auto = a1111.txt2img(xl_payload(a1111, alwayson_scripts=deepcache()))
        fields = assert_ran_on_xl(auto, model_hash)
        assert fields.get("DeepCache") == (
            "interval 2 (auto), depth 0, start 0%, end 100%, uniform, min steps 8"
        )
        assert parse_counts(fields["DeepCache steps"]) == (6, 6), auto.infotexts[0]
        assert max_abs_diff(two.images[0], auto.images[0]) == 0
        assert max_abs_diff(cached.images[0], auto.images[0]) > 0

        # A request without the override loads the default checkpoint again, same weights.
        sd1_after = a1111.txt2img(base_payload(a1111))
        assert sd1_after.fields().get("Model") == sd1_before.fields().get("Model")
        assert max_abs_diff(sd1_before.images[0], sd1_after.images[0]) == 0
    finally:
        # override_settings is restored after each request; should a failure have left the
        # option on the SDXL checkpoint, put it back so that later tests get the default model.
        with contextlib.suppress(HostError):  # a server that died has nothing to restore
            status, options = a1111.get("/sdapi/v1/options")
            current = options.get("sd_model_checkpoint") if isinstance(options, dict) else None
            if default_checkpoint and current != default_checkpoint:
                a1111.post("/sdapi/v1/options", {"sd_model_checkpoint": default_checkpoint})
