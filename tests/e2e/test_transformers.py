"""DeepCache on transformer models (Flux, SD3, Chroma) in the real SD.Next.

SD.Next runs these as diffusers pipelines whose denoiser is ``sd_model.transformer``; the
models are small seeded ones made at build time (:mod:`tests.e2e.transformers`). One host start
serves every scenario; each loads its family's model through the options API and the module
puts the default model back at the end.

Oracles: the host's own plain image (bit-identity when disabled; "DeepCache changed something"
when enabled), its logged progress bars for the steps each pass executed, hand-computed counts
for the uniform schedule, an explicit request for what ``auto`` and a clamped depth must equal,
and PNG Info for the infotext.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from tests.e2e.hostctl import HostServer
from tests.e2e.oracles import parse_counts
from tests.e2e.payloads import (
    base_payload,
    deepcache,
    deepcache_positional,
    max_abs_diff,
    noise_image,
    png_b64,
)
from tests.e2e.transformers import (
    FAMILIES,
    MAX_DEPTH,
    PIPELINES,
    ModelSwitch,
    hires_pass,
)

pytestmark = pytest.mark.e2e

STEPS = 12
DC_TEXT = "interval 3, depth 0, start 0%, end 100%, uniform, min steps 8"
COUNTS_12 = (4, 8)  # uniform interval 3 over 12 steps: full at 0, 3, 6, 9
# img2img at strength 0.5: SD.Next keeps 12 steps for these models and runs the last 6;
# interval 3 over them: full at 0 and 3
IMG2IMG_STEPS, IMG2IMG_COUNTS, IMG2IMG_HALF_WINDOW_COUNTS = 6, (2, 4), (4, 2)
# hires: 8 steps at strength 0.5 run 4; hires interval 2 (the default): full at 0 and 2
HIRES_STEPS, HIRES_COUNTS = 4, (2, 2)
# levels a batched transformer call may round an image differently from the same seed alone
BATCH_ROUNDING = 8


@pytest.fixture(scope="module")
def _models(sdnext: HostServer) -> Iterator[ModelSwitch]:
    switch = ModelSwitch()
    yield switch
    switch.restore(sdnext)


@pytest.fixture(scope="module", params=FAMILIES)
def _family(request: pytest.FixtureRequest) -> str:
    """Module scope, so that pytest runs every scenario of one family before the next: one
    model load per family."""
    return str(request.param)


@pytest.fixture
def family(sdnext: HostServer, _family: str, _models: ModelSwitch) -> str:
    _models.use(sdnext, _family)
    return _family


def ran_on(result, family: str, pipeline: int = 0) -> None:
    """The infotext names the family's model and pipeline (the model really was switched)."""
    fields = result.fields()
    assert fields.get("Model") == f"tiny-{family}", result.infotexts[0]
    assert fields.get("Pipeline") == PIPELINES[family][pipeline], result.infotexts[0]


def deepcache_keys(result) -> list[str]:
    return [key for key in result.fields() if key.lower().startswith("deepcache")]


# --------------------------------------------------------------------------- on / off
def test_disabled_is_plain_and_enabled_caches_every_executed_step(sdnext, family):
    plain = sdnext.txt2img(base_payload(sdnext))
    off = sdnext.txt2img(base_payload(sdnext, alwayson_scripts=deepcache(enabled=False)))
    on = sdnext.txt2img(base_payload(sdnext, alwayson_scripts=deepcache(interval=3, depth=0)))

    ran_on(plain, family)
    assert max_abs_diff(plain.images[0], off.images[0]) == 0
    assert deepcache_keys(off) == deepcache_keys(plain) == [], off.infotexts[0]
    assert max_abs_diff(plain.images[0], on.images[0]) > 0, "DeepCache changed nothing"
    assert on.fields().get("DeepCache") == DC_TEXT, on.infotexts[0]
    assert on.counts() == COUNTS_12
    # the host's progress bar: 12 steps, whatever the calls per step (Chroma: 2)
    assert on.sampler_runs == plain.sampler_runs == [STEPS], on.log[-2000:]


def test_auto_interval_is_the_familys_and_says_which(sdnext, family):
    """``auto`` runs the family's default: the infotext names it as ``interval N (auto)``, the
    image is interval N's bit for bit and the counts are uniform interval N's."""
    auto = sdnext.txt2img(base_payload(sdnext, alwayson_scripts=deepcache()))
    text = auto.fields().get("DeepCache", "")
    match = re.fullmatch(
        r"interval (\d+) \(auto\), depth 0, start 0%, end 100%, uniform, min steps 8", text
    )
    assert match, auto.infotexts[0]
    interval = int(match[1])
    assert interval >= 2, "auto must cache"
    explicit = sdnext.txt2img(base_payload(sdnext, alwayson_scripts=deepcache(interval=interval)))
    assert max_abs_diff(auto.images[0], explicit.images[0]) == 0
    full = -(-STEPS // interval)
    assert auto.counts() == explicit.counts() == (full, STEPS - full)


def test_depth_changes_the_image_and_is_clamped_to_the_blocks(sdnext, family):
    """The deepest depth keeps blocks live that depth 0 skips (another image); depth 11 on 6
    blocks runs as the deepest depth that still skips a block, says so in the log and keeps the
    request in the infotext."""
    deepest = MAX_DEPTH[family]
    shallow = sdnext.txt2img(base_payload(sdnext, alwayson_scripts=deepcache(interval=3)))
    deep = sdnext.txt2img(
        base_payload(sdnext, alwayson_scripts=deepcache(interval=3, depth=deepest))
    )
    asked = sdnext.txt2img(base_payload(sdnext, alwayson_scripts=deepcache(interval=3, depth=11)))
    assert max_abs_diff(shallow.images[0], deep.images[0]) > 0
    assert max_abs_diff(deep.images[0], asked.images[0]) == 0, "depth 11 is not the deepest"
    assert asked.fields().get("DeepCache") == DC_TEXT.replace("depth 0", "depth 11")
    assert asked.counts() == deep.counts() == COUNTS_12
    assert re.search(rf"depth 11 clamped to {deepest}\b", asked.log), asked.log[-3000:]


def test_forecast_at_depth_0_starts_after_two_full_steps(sdnext, family):
    """forecast 1 at depth 0 (a cached step runs no block): step 1 runs full too and interval 3
    counts on from it, full at 0, 1, 4, 7, 10 of 12 (5 / 7); at depth 1 (blocks live) the
    uniform count stays (4 / 8). The forecast changes the image and is in the infotext."""
    plain = sdnext.txt2img(base_payload(sdnext, alwayson_scripts=deepcache(interval=3)))
    ahead = sdnext.txt2img(base_payload(sdnext, alwayson_scripts=deepcache(interval=3, forecast=1)))
    live = sdnext.txt2img(
        base_payload(sdnext, alwayson_scripts=deepcache(interval=3, depth=1, forecast=1))
    )
    assert ahead.counts() == (5, 7), ahead.infotexts[0]
    assert live.counts() == COUNTS_12, live.infotexts[0]
    with_forecast = DC_TEXT.replace("uniform,", "uniform, forecast 1,")
    assert ahead.fields().get("DeepCache") == with_forecast, ahead.infotexts[0]
    assert max_abs_diff(plain.images[0], ahead.images[0]) > 0


# --------------------------------------------------------------------------- passes
def test_img2img_caches_the_executed_steps(sdnext, family):
    payload = base_payload(sdnext, init_images=[png_b64(noise_image())], denoising_strength=0.5)
    plain = sdnext.img2img(payload)
    on = sdnext.img2img({**payload, "alwayson_scripts": deepcache(interval=3)})

    ran_on(on, family, pipeline=1)
    assert max_abs_diff(plain.images[0], on.images[0]) > 0
    assert on.sampler_runs == plain.sampler_runs == [IMG2IMG_STEPS], on.log[-2000:]
    assert on.counts() == IMG2IMG_COUNTS, on.infotexts[0]
    # the window is a fraction of the executed steps: end 0.5 of 6 lets steps 0-2 cache
    # (0 full, 1 and 2 cached), 3-5 run full: 4 full / 2 cached
    half = sdnext.img2img({**payload, "alwayson_scripts": deepcache(interval=3, end=0.5)})
    assert half.counts() == IMG2IMG_HALF_WINDOW_COUNTS, half.infotexts[0]


def test_hires_pass_is_cached_with_its_own_settings(sdnext, family):
    plain = sdnext.txt2img(base_payload(sdnext, **hires_pass()))
    on = sdnext.txt2img(
        base_payload(sdnext, **hires_pass(), alwayson_scripts=deepcache(interval=3))
    )

    assert on.images[0].shape == plain.images[0].shape == (128, 128, 3)
    assert max_abs_diff(plain.images[0], on.images[0]) > 0
    fields = on.fields()
    assert fields.get("DeepCache") == DC_TEXT, on.infotexts[0]
    assert fields.get("DeepCache hires") == "interval 2, depth 0", on.infotexts[0]
    assert on.counts() == {"first pass": COUNTS_12, "hires": HIRES_COUNTS}, on.infotexts[0]
    assert on.sampler_runs == plain.sampler_runs == [STEPS, HIRES_STEPS], on.log[-3000:]


def test_batch_of_two_caches_each_image_as_its_own(sdnext, family):
    """Each image of a cached batch of two is the cached image of its own seed (1234, 1235)
    alone, to the few levels a batched call rounds differently (up to 3 seen, plain or
    cached), never the other image's: no image reads the other's stored residual."""
    plain = sdnext.txt2img(base_payload(sdnext, batch_size=2))
    on = sdnext.txt2img(base_payload(sdnext, batch_size=2, alwayson_scripts=deepcache(interval=3)))
    alone = [
        sdnext.txt2img(base_payload(sdnext, seed=1234 + i, alwayson_scripts=deepcache(interval=3)))
        for i in range(2)
    ]

    assert len(plain.images) == len(on.images) == 2
    assert on.sampler_runs == plain.sampler_runs == [STEPS], on.log[-2000:]
    for i in range(2):
        assert max_abs_diff(plain.images[i], on.images[i]) > 0, f"image {i}"
        assert on.counts(i) == COUNTS_12, on.infotexts[i]
        assert max_abs_diff(on.images[i], alone[i].images[0]) <= BATCH_ROUNDING, f"image {i}"
    assert max_abs_diff(on.images[0], on.images[1]) > 10 * BATCH_ROUNDING


# --------------------------------------------------------------------------- infotext, API
def test_infotext_round_trips_through_png_info(sdnext, family):
    on = sdnext.txt2img(base_payload(sdnext, alwayson_scripts=deepcache(interval=3)))
    status, body = sdnext.post(
        "/sdapi/v1/png-info", {"image": "data:image/png;base64," + on.images_b64[0]}
    )
    assert status == 200 and isinstance(body, dict), body
    parameters = body.get("parameters") or {}
    assert parameters.get("Model") == f"tiny-{family}", parameters
    assert parameters.get("DeepCache") == DC_TEXT, parameters
    assert parse_counts(str(parameters.get("DeepCache steps"))) == COUNTS_12, parameters


def test_positional_and_dict_args_give_the_same_image(sdnext, family):
    fields = dict(interval=3, depth=1, start=0.0, end=1.0, schedule="non-uniform")
    named = sdnext.txt2img(base_payload(sdnext, alwayson_scripts=deepcache(**fields)))
    short = sdnext.txt2img(
        base_payload(
            sdnext, alwayson_scripts=deepcache_positional([True, 3, 1, 0.0, 1.0, "non-uniform"])
        )
    )
    want = "interval 3, depth 1, start 0%, end 100%, non-uniform, min steps 8"
    assert named.fields().get("DeepCache") == short.fields().get("DeepCache") == want
    assert max_abs_diff(named.images[0], short.images[0]) == 0
    assert named.counts() == short.counts()
    full, cached = named.counts()
    assert (full + cached, cached > 0) == (STEPS, True), named.infotexts[0]


@pytest.mark.parametrize("route", ["txt2img", "img2img"])
def test_bad_args_answer_422_with_a_transformer_loaded(sdnext, family, route):
    payload = base_payload(sdnext, alwayson_scripts=deepcache(depth=12))
    if route == "img2img":
        payload.update(init_images=[png_b64(noise_image())], denoising_strength=0.5)
    status, body = sdnext.post(f"/sdapi/v1/{route}", payload, timeout=60)
    assert status == 422, body
    assert isinstance(body, dict) and body.get("field") == "depth", body
