"""DeepCache on an SD3.5-layout checkpoint in the real Forge: its loader, its SD3 engine (CLIP-L,
CLIP-G, the zero T5 tokens, the MMDiT ``MMDiTX`` in a ``KModel``), its samplers and its API.

``tools/hosts/make_forge_sd3.py`` (run by ``tools/hosts/forge-extras.sh``) writes
``sd35-random-small``: Forge's detection reads an MMDiT's depth from its embedder width, so this
one has 5 joint blocks of width 320 (full-size CLIP-L/G and VAE, which Forge builds from its own
configs). The requests name it with ``override_settings`` and keep it loaded for the module
(``override_settings_restore_afterwards`` false: Forge would reload the 1.8 GB file for each
request otherwise); the default checkpoint is selected again afterwards.

SD3 runs with the "Simple" schedule: Forge's automatic one for Euler on SD3 (the uniform
``ForgeScheduleLinker.get_sigmas``) ends on two zero sigmas, and the last Euler step divides by
zero, a black image with or without DeepCache.

Oracles: the plain image (bit-identity), Forge's own progress bars (steps executed), the uniform
schedule counted by hand, the depth-2 image for "depth 11 ran as 2" (5 blocks: depth 2 keeps
two at each end and is the deepest that still skips one), the image from the dict args for the
positional ones.
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.hostctl import HostServer
from tests.e2e.oracles import generation_ran, parse_counts
from tests.e2e.payloads import (
    deepcache,
    deepcache_positional,
    max_abs_diff,
    noise_image,
    png_b64,
    with_host_quirks,
)

pytestmark = pytest.mark.e2e

SD3 = "sd35-random-small"
STEPS = 10
DC_TEXT = "interval 3, depth 0, start 0%, end 100%, uniform, min steps 8"
COUNTS = (4, 6)  # uniform interval 3 over 10 steps: full at 0, 3, 6, 9
# img2img at denoising strength 0.5: Forge executes int(0.5 * 10) + 1 = 6 steps; full at 0, 3
IMG2IMG_STEPS, IMG2IMG_COUNTS = 6, (2, 4)


def sd3_payload(host: HostServer, **fields: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "prompt": "a lighthouse at dusk",
        "negative_prompt": "blurry",
        "seed": 1234,
        "steps": STEPS,
        "width": 64,
        "height": 64,
        "cfg_scale": 5,
        "sampler_name": "Euler",
        "scheduler": "Simple",
        "override_settings": {"sd_model_checkpoint": SD3},
        "override_settings_restore_afterwards": False,
    }
    payload.update(fields)
    return with_host_quirks(host, payload)


def deepcache_keys(fields: dict[str, str]) -> list[str]:
    return sorted(key for key in fields if key.lower().startswith("deepcache"))


@pytest.fixture(scope="module", autouse=True)
def _default_checkpoint_afterwards(forge: HostServer) -> Iterator[None]:
    """Select the build's default checkpoint again once this module is done."""
    yield
    if not forge.running():
        return
    config = json.loads((forge.target / "run" / "config.e2e-pristine.json").read_text())
    forge.post("/sdapi/v1/options", {"sd_model_checkpoint": config["sd_model_checkpoint"]})


def png_b64_of(result: Any) -> str:
    return "data:image/png;base64," + result.images_b64[0]


@functools.cache
def model_hash(path: Path) -> str:
    """Forge's "Model hash": the first 10 hex digits of the file's sha256."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:10]


def ran_on_sd3(host: HostServer, result: Any, runs: list[int]) -> dict[str, str]:
    """The checkpoint that ran is this file, with the expected sampling loops, not flat."""
    fields = result.fields()
    assert fields.get("Model") == SD3, result.infotexts[0]
    checkpoint = host.target / "data/models/Stable-diffusion" / f"{SD3}.safetensors"
    assert fields.get("Model hash") == model_hash(checkpoint), result.infotexts[0]
    assert result.sampler_runs == runs, result.log[-3000:]
    assert result.images[0].std() > 0, "a flat image"
    return fields


def test_sd3_off_is_plain_and_on_caches_by_the_progress_bar(forge: HostServer) -> None:
    """Plain, off, on (dict args), the same with positional args, PNG Info of the result."""
    plain = forge.txt2img(sd3_payload(forge))
    off = forge.txt2img(sd3_payload(forge, alwayson_scripts=deepcache(enabled=False)))
    on = forge.txt2img(sd3_payload(forge, alwayson_scripts=deepcache(interval=3, depth=0)))
    positional = forge.txt2img(
        sd3_payload(forge, alwayson_scripts=deepcache_positional([True, 3, 0, 0.0, 1.0]))
    )
    assert deepcache_keys(ran_on_sd3(forge, plain, [STEPS])) == []
    assert deepcache_keys(ran_on_sd3(forge, off, [STEPS])) == []
    assert max_abs_diff(plain.images[0], off.images[0]) == 0

    fields = ran_on_sd3(forge, on, [STEPS])
    assert fields.get("DeepCache") == DC_TEXT, on.infotexts[0]
    assert on.counts() == COUNTS
    assert sum(on.counts()) == on.sampler_runs[0]
    assert max_abs_diff(plain.images[0], on.images[0]) > 0, "DeepCache changed nothing"
    assert ran_on_sd3(forge, positional, [STEPS]).get("DeepCache") == DC_TEXT
    assert max_abs_diff(on.images[0], positional.images[0]) == 0

    status, body = forge.post("/sdapi/v1/png-info", {"image": png_b64_of(on)})
    assert status == 200, body
    parameters = body.get("parameters") or {}
    assert parameters.get("DeepCache") == DC_TEXT, parameters
    assert parse_counts(str(parameters.get("DeepCache steps"))) == COUNTS, parameters


def test_sd3_depth_is_clamped_to_its_blocks_and_auto_says_its_interval(forge: HostServer) -> None:
    """Depth 11 on 5 joint blocks runs as depth 2; ``auto`` runs an interval it names, and the
    counts are that interval's uniform schedule."""
    two = forge.txt2img(sd3_payload(forge, alwayson_scripts=deepcache(interval=3, depth=2)))
    eleven = forge.txt2img(sd3_payload(forge, alwayson_scripts=deepcache(interval=3, depth=11)))
    assert ran_on_sd3(forge, eleven, [STEPS]).get("DeepCache") == DC_TEXT.replace(
        "depth 0", "depth 11"
    )
    assert max_abs_diff(two.images[0], eleven.images[0]) == 0, "depth 11 is not depth 2"
    assert two.counts() == eleven.counts() == COUNTS

    auto = forge.txt2img(sd3_payload(forge, alwayson_scripts=deepcache()))
    text = ran_on_sd3(forge, auto, [STEPS]).get("DeepCache", "")
    assert text.startswith("interval ") and text.split(",")[0].endswith(" (auto)"), text
    interval = int(text.split()[1])
    assert auto.counts() == (-(-STEPS // interval), STEPS - -(-STEPS // interval)), text


def test_sd3_img2img_caches_the_executed_steps(forge: HostServer) -> None:
    init = {"init_images": [png_b64(noise_image())], "denoising_strength": 0.5}
    plain = forge.img2img(sd3_payload(forge, **init))
    on = forge.img2img(sd3_payload(forge, **init, alwayson_scripts=deepcache(interval=3)))
    ran_on_sd3(forge, plain, [IMG2IMG_STEPS])
    assert ran_on_sd3(forge, on, [IMG2IMG_STEPS]).get("DeepCache") == DC_TEXT
    assert on.counts() == IMG2IMG_COUNTS
    assert max_abs_diff(plain.images[0], on.images[0]) > 0


def test_sd3_hires_pass_and_batch_of_two(forge: HostServer) -> None:
    """Hires fix 2x (latent, 8 steps at strength 0.5) counts both passes; a batch of two caches
    both images with the same counts."""
    hires = {
        "enable_hr": True, "hr_scale": 2, "hr_upscaler": "Latent", "hr_second_pass_steps": 8,
        "denoising_strength": 0.5,
    }  # fmt: skip
    plain = forge.txt2img(sd3_payload(forge, **hires))
    on = forge.txt2img(sd3_payload(forge, **hires, alwayson_scripts=deepcache(interval=3)))
    hires_steps = plain.sampler_runs[1] if len(plain.sampler_runs) == 2 else None
    assert hires_steps is not None and on.sampler_runs == plain.sampler_runs == [STEPS, hires_steps]
    assert on.images[0].shape == (128, 128, 3)
    assert on.fields().get("DeepCache hires") == "interval 2, depth 0", on.infotexts[0]
    # the hires pass at interval 2 (its default): full at 0, 2, 4, ...
    hires_full = -(-hires_steps // 2)
    assert on.counts() == {"first pass": COUNTS, "hires": (hires_full, hires_steps - hires_full)}
    assert max_abs_diff(plain.images[0], on.images[0]) > 0

    plain = forge.txt2img(sd3_payload(forge, batch_size=2))
    on = forge.txt2img(sd3_payload(forge, batch_size=2, alwayson_scripts=deepcache(interval=3)))
    assert len(on.images) == len(plain.images) == 2 and on.sampler_runs == [STEPS]
    for i in range(2):
        assert max_abs_diff(plain.images[i], on.images[i]) > 0, f"image {i}"
        assert on.counts(i) == COUNTS, on.infotexts[i]


def test_sd3_bad_args_answer_422(forge: HostServer) -> None:
    payload = sd3_payload(forge, alwayson_scripts=deepcache(depth=12))
    mark = forge.log_mark()
    status, body = forge.post("/sdapi/v1/txt2img", payload, timeout=60)
    time.sleep(0.5)  # a generation that did start would log its progress bar by now
    assert status == 422, body
    assert isinstance(body, dict) and body.get("field") == "depth", body
    assert not generation_ran(forge.log_since(mark))
