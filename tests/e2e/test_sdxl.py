"""DeepCache on an SDXL-layout model in each real host.

SDXL's UNet has 3 levels: 9 input and 9 output blocks, not SD 1.x's 12, so ``auto`` runs
interval 2 there and a requested depth beyond 8 is clamped. The SD 1.x tests never reach that
path. Each host loads its own small SDXL model, made at build time with seeded random weights:

* A1111 runs SDXL through Stability's ``sgm`` code (``DiffusionEngine``, two text encoders and a
  size/crop vector): ``tiny-sdxl-random`` from ``tools/hosts/make_sdxl_ckpt.py``, the SDXL base
  config at small widths, loaded from its ``.yaml``;
* Forge detects the model from a single file's weights (``huggingface_guess``) and builds the
  text encoders and VAE from its own SDXL configs: ``sdxl-random-narrow`` from
  ``tools/hosts/make_forge_sdxl.py``, SDXL's blocks at 320 channels on every level;
* SD.Next runs diffusers' ``StableDiffusionXLPipeline`` from a folder: ``Diffusers/tiny-sdxl``
  from ``tools/hosts/make_sdnext_sdxl.py``.

The host is switched with ``/sdapi/v1/options`` for the test (a per-request override reloads the
model twice per request in Forge and SD.Next) and switched back after it.

Oracles: hand-computed step counts for the uniform schedule; the host's own plain image for
"DeepCache changed something" and for "interval 1 is the plain image bit for bit"; the depth-8
image for "depth 11 was clamped to 8"; interval 2's image for "auto ran interval 2"; the
checkpoint file's own sha256 for "the SDXL checkpoint is the one that ran" (A1111, Forge); the
default model's image from before for "switching back restores it".
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.faults import CHECKPOINTS, MODEL_FIELD, select_checkpoint
from tests.e2e.hostctl import HostServer
from tests.e2e.oracles import parse_counts
from tests.e2e.payloads import Result, base_payload, deepcache, max_abs_diff

pytestmark = pytest.mark.e2e

# where each host keeps the SDXL checkpoint file (SD.Next's is a folder: no file hash)
XL_FILES = {
    "a1111": "data/models/Stable-diffusion/tiny-sdxl-random.safetensors",
    "forge": "data/models/Stable-diffusion/sdxl-random-narrow.safetensors",
}
# Input (and output) blocks of an SDXL UNet: the input conv, 2 res blocks on each of 3 levels,
# 2 downsamples between them: 1 + 6 + 2 = 9 (skip branches 0..8).
SDXL_BLOCKS = 9
# Uniform interval 3 over 12 steps: full passes at steps 0, 3, 6, 9, the other 8 cached;
# interval 2: full at 0, 2, ..., 10.
COUNTS_12 = {3: (4, 8), 2: (6, 6), 1: (12, 0)}
TEXT = "interval {}, depth {}, start 0%, end 100%, uniform, min steps 8"


def short_hash(path: Path) -> str:
    """A1111's and Forge's "Model hash": the first 10 hex digits of the file's sha256."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:10]


def generate(host: HostServer, dc: dict[str, Any] | None = None) -> Result:
    """The shared small request on the loaded SDXL model; checks that it ran there."""
    result = host.txt2img(base_payload(host, **({"alwayson_scripts": dc} if dc else {})))
    fields = result.fields()
    assert fields.get("Model") == MODEL_FIELD[host.name][1], result.infotexts[0]
    if host.name in XL_FILES:
        assert fields.get("Model hash") == short_hash(host.target / XL_FILES[host.name])
    assert fields.get("Size") == "64x64", result.infotexts[0]
    assert result.sampler_runs == [12], result.log[-3000:]
    return result


def assert_ran(result: Result, interval: str, depth: int, counts: tuple[int, int]) -> None:
    fields = result.fields()
    assert fields.get("DeepCache") == TEXT.format(interval, depth), result.infotexts[0]
    assert parse_counts(fields["DeepCache steps"]) == counts, result.infotexts[0]


def test_sdxl_layout_caches_runs_auto_as_2_and_clamps_depth(host: HostServer) -> None:
    """Plain and cached SDXL runs, auto = interval 2, interval 1 = plain, depth 11 run as
    depth 8, then back to the SD 1.x default with its image unchanged."""
    default, xl = CHECKPOINTS[host.name]
    sd1_before = host.txt2img(base_payload(host))
    assert sd1_before.fields().get("Model") == MODEL_FIELD[host.name][0]
    select_checkpoint(host, xl)
    try:
        plain = generate(host)
        assert not [key for key in plain.fields() if key.lower().startswith("deepcache")]
        assert plain.images[0].std() > 0, "a flat image: degenerate random weights"

        cached = generate(host, deepcache(interval=3, depth=0))
        assert_ran(cached, "3", 0, COUNTS_12[3])
        assert max_abs_diff(plain.images[0], cached.images[0]) > 0, "DeepCache changed nothing"

        # auto, the default interval, runs SDXL's own: interval 2 (docs/quality.md "Per-model
        # defaults"), interval 2's image bit for bit
        two = generate(host, deepcache(interval=2))
        auto = generate(host, deepcache())
        assert_ran(auto, "2 (auto)", 0, COUNTS_12[2])
        assert max_abs_diff(two.images[0], auto.images[0]) == 0
        assert max_abs_diff(cached.images[0], auto.images[0]) > 0

        # interval 1 refreshes every step: the plain image bit for bit, every step full
        one = generate(host, deepcache(interval=1))
        assert_ran(one, "1", 0, COUNTS_12[1])
        assert max_abs_diff(plain.images[0], one.images[0]) == 0

        # Depth 11 is valid for SD 1.x (12 blocks); on 9 blocks it must run as depth 8, the
        # deepest branch, not fail or index past the UNet. The infotext keeps the request
        # (so that pasting it back asks for the same thing); the console says what ran.
        deepest = generate(host, deepcache(interval=3, depth=11))
        assert_ran(deepest, "3", 11, COUNTS_12[3])
        assert re.search(rf"depth 11 clamped to {SDXL_BLOCKS - 1}\b", deepest.log), deepest.log
        depth8 = generate(host, deepcache(interval=3, depth=SDXL_BLOCKS - 1))
        assert max_abs_diff(deepest.images[0], depth8.images[0]) == 0, "depth 11 is not depth 8"
        assert max_abs_diff(plain.images[0], deepest.images[0]) > 0
        assert max_abs_diff(cached.images[0], deepest.images[0]) > 0
    finally:
        select_checkpoint(host, default)  # later tests get the default model

    sd1_after = host.txt2img(base_payload(host))
    assert sd1_after.fields().get("Model") == MODEL_FIELD[host.name][0]
    assert max_abs_diff(sd1_before.images[0], sd1_after.images[0]) == 0
