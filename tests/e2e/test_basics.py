"""Shared end-to-end scenarios, run on each selected real host over its HTTP API.

Oracles: the host's own output (the plain image for bit-identity, its logged progress bars for
the number of steps each pass executed) and hand-computed step counts for the uniform schedule.
Images are 64x64 at 12 steps so that a host answers in about a second.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import pytest

from tests.e2e.hostctl import HostServer, HostState
from tests.e2e.oracles import generation_ran, parse_counts
from tests.e2e.payloads import (
    base_payload,
    deepcache,
    deepcache_positional,
    latent_hires_2x,
    left_half_mask,
    max_abs_diff,
    noise_image,
    png_b64,
)

if TYPE_CHECKING:
    from tests.e2e.conftest import HostPool

pytestmark = pytest.mark.e2e

STEPS = 12
# the default min_steps (8) is written too: paste-back must restore it
DC_TEXT = "interval 3, depth 0, start 0%, end 100%, uniform, min steps 8"
# Uniform interval 3 over 12 steps: full at steps 0, 3, 6, 9.
DC_COUNTS_12 = (4, 8)
# Steps executed by img2img at denoising strength 0.5 with 12 requested steps (Euler):
# A1111/Forge run t_enc + 1 = int(0.5 * 12) + 1 = 7 (sd_samplers_common.setup_img2img_steps);
# SD.Next asks diffusers for 25 steps at strength 0.5, which runs int(25 * 0.5) = 12.
IMG2IMG_STEPS = {"a1111": 7, "forge": 7, "sdnext": 12}
DENOISE = 0.5

# Sampler names per host where they differ (SD.Next's DPM2 is the diffusers KDPM2 scheduler).
SAMPLERS = ("Euler", "DPM++ 2M", "Heun", "DPM++ SDE", "DPM2", "DDIM", "PLMS")
HOST_SAMPLER_NAMES = {"sdnext": {"DPM2": "KDPM2"}}


def deepcache_keys(fields: dict[str, str]) -> list[str]:
    return sorted(key for key in fields if key.lower().startswith("deepcache"))


def img2img_payload(host: HostServer, **overrides: Any) -> dict[str, Any]:
    return base_payload(
        host, init_images=[png_b64(noise_image())], denoising_strength=DENOISE, **overrides
    )


def host_sampler(host: HostServer, sampler: str) -> str:
    """The host's name for a sampler; skip when the host does not offer it."""
    name = HOST_SAMPLER_NAMES.get(host.name, {}).get(sampler, sampler)
    if name not in host.sampler_names():
        pytest.skip(f"{host.name} has no sampler {name!r} (GET /sdapi/v1/samplers)")
    return name


# --------------------------------------------------------------------------- on / off
def test_disabled_is_bit_identical_to_plain_and_enabled_differs(host: HostServer) -> None:
    plain = host.txt2img(base_payload(host))
    off = host.txt2img(base_payload(host, alwayson_scripts=deepcache(enabled=False)))
    on = host.txt2img(base_payload(host, alwayson_scripts=deepcache(interval=3, depth=0)))

    assert max_abs_diff(plain.images[0], off.images[0]) == 0
    assert deepcache_keys(off.fields()) == [], off.infotexts[0]
    assert deepcache_keys(plain.fields()) == [], plain.infotexts[0]

    assert max_abs_diff(plain.images[0], on.images[0]) > 0
    fields = on.fields()
    assert fields.get("DeepCache") == DC_TEXT, on.infotexts[0]
    assert on.counts() == DC_COUNTS_12
    assert on.sampler_runs == plain.sampler_runs == [STEPS], on.log[-2000:]


def test_auto_interval_runs_the_models_own_and_says_which(host: HostServer) -> None:
    """The default interval, auto (also sent as 0): the SD 1.x e2e model runs interval 3, the
    image is interval 3's bit for bit, and the infotext written after the pass says
    ``interval 3 (auto)`` (docs/quality.md "Per-model defaults"; SDXL in test_sdxl.py)."""
    three = host.txt2img(base_payload(host, alwayson_scripts=deepcache(interval=3)))
    for auto in (deepcache(), deepcache(interval=0), deepcache(interval="auto")):
        result = host.txt2img(base_payload(host, alwayson_scripts=auto))
        assert max_abs_diff(three.images[0], result.images[0]) == 0
        want = DC_TEXT.replace("interval 3,", "interval 3 (auto),")
        assert result.fields().get("DeepCache") == want, result.infotexts[0]
        assert result.counts() == DC_COUNTS_12


def test_forecast_changes_only_what_cached_steps_splice(host: HostServer) -> None:
    """Forecast 1: the same steps run full and cached as plain DeepCache (so the same FLOPs),
    the infotext says so, and the image differs, since every cached step after the second
    refresh splices an extrapolated feature; forecast 0 is plain DeepCache bit for bit."""
    held = host.txt2img(base_payload(host, alwayson_scripts=deepcache(interval=3)))
    zero = host.txt2img(base_payload(host, alwayson_scripts=deepcache(interval=3, forecast=0)))
    ahead = host.txt2img(base_payload(host, alwayson_scripts=deepcache(interval=3, forecast=1)))

    assert max_abs_diff(held.images[0], zero.images[0]) == 0
    with_forecast = DC_TEXT.replace("uniform,", "uniform, forecast 1,")
    assert ahead.fields().get("DeepCache") == with_forecast, ahead.infotexts[0]
    assert ahead.counts() == held.counts() == DC_COUNTS_12
    assert ahead.sampler_runs == [STEPS], ahead.log[-2000:]
    assert max_abs_diff(held.images[0], ahead.images[0]) > 0


def test_min_steps_turns_a_shorter_pass_off_and_says_so(host: HostServer) -> None:
    """min_steps 13 on a 12-step request: uncached, the plain image bit for bit, and the
    infotext says why; with hires fix (8 hires steps) and min_steps 9 only the hires pass is off.
    """
    plain = host.txt2img(base_payload(host))
    off = host.txt2img(base_payload(host, alwayson_scripts=deepcache(interval=3, min_steps=13)))
    assert max_abs_diff(plain.images[0], off.images[0]) == 0
    fields = off.fields()
    assert fields.get("DeepCache") == DC_TEXT.replace("min steps 8", "min steps 13")
    assert fields.get("DeepCache steps") == "off (12 steps < 13)", off.infotexts[0]

    hires = host.txt2img(
        base_payload(host, **hires_fix(host), alwayson_scripts=deepcache(interval=3, min_steps=9))
    )
    assert hires.counts() == {"first pass": DC_COUNTS_12, "hires": "off (8 steps < 9)"}
    assert hires.sampler_runs[0] == STEPS and len(hires.sampler_runs) == 2, hires.log[-3000:]


@pytest.mark.host_state(ui=True)
def test_ui_mode_gives_the_same_images_as_api_mode(host_pool: HostPool, host_name: str) -> None:
    """With the full UI built, the host fills the script's arguments from its UI components
    before the API's values; the images must be those of the API-only start. The test makes its
    API-mode image itself, first in the UI group: the host is usually still in the API mode the
    previous group left it in, so this costs no extra start."""
    payload = base_payload(host_name, alwayson_scripts=deepcache(interval=3, depth=0))
    api_mode = host_pool.activate(host_name, HostState()).txt2img(payload)
    host = host_pool.activate(host_name, HostState(ui=True))
    plain = host.txt2img(base_payload(host))
    off = host.txt2img(base_payload(host, alwayson_scripts=deepcache(enabled=False)))
    on = host.txt2img(payload)

    assert max_abs_diff(plain.images[0], off.images[0]) == 0
    assert deepcache_keys(off.fields()) == [], off.infotexts[0]
    assert max_abs_diff(plain.images[0], on.images[0]) > 0
    assert on.fields().get("DeepCache") == DC_TEXT, on.infotexts[0]
    assert on.counts() == DC_COUNTS_12
    assert on.infotexts == api_mode.infotexts
    assert max_abs_diff(api_mode.images[0], on.images[0]) == 0


def test_same_request_twice_is_bit_identical(host: HostServer) -> None:
    """Determinism of the host itself: the premise of every image comparison here."""
    payload = base_payload(host, alwayson_scripts=deepcache(interval=3, depth=0))
    first, second = host.txt2img(payload), host.txt2img(payload)
    assert max_abs_diff(first.images[0], second.images[0]) == 0
    assert first.infotexts == second.infotexts


def test_infotext_round_trips_through_png_info(host: HostServer) -> None:
    """The PNG the API returns carries the DeepCache keys, and PNG Info reads them back."""
    on = host.txt2img(base_payload(host, alwayson_scripts=deepcache(interval=3, depth=0)))
    status, body = host.post(
        "/sdapi/v1/png-info", {"image": "data:image/png;base64," + on.images_b64[0]}
    )
    if status in (404, 405):
        pytest.skip(f"{host.name} has no POST /sdapi/v1/png-info (HTTP {status})")
    assert status == 200, body
    assert isinstance(body, dict), body
    assert "DeepCache: " in str(body.get("info")), body
    parameters = body.get("parameters") or {}
    assert parameters.get("DeepCache") == DC_TEXT, parameters
    assert parse_counts(str(parameters.get("DeepCache steps"))) == DC_COUNTS_12, parameters


# --------------------------------------------------------------------------- samplers
@pytest.mark.parametrize("route", ["txt2img", "img2img"])
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_sampler_is_cached_and_counts_every_executed_step(
    host: HostServer, sampler: str, route: str
) -> None:
    name = host_sampler(host, sampler)
    if route == "txt2img":
        payload = base_payload(host, sampler_name=name)
    else:
        payload = img2img_payload(host, sampler_name=name)
    plain = host.generate(route, payload)
    on = host.generate(route, {**payload, "alwayson_scripts": deepcache(interval=3, depth=0)})

    assert max_abs_diff(plain.images[0], on.images[0]) > 0, f"{name}: DeepCache changed nothing"
    assert on.fields().get("DeepCache") == DC_TEXT, on.infotexts[0]
    full, cached = on.counts()
    assert full > 0 and cached > 0, on.infotexts[0]
    executed = STEPS if route == "txt2img" else IMG2IMG_STEPS[host.name]
    if route == "img2img" and sampler in ("DDIM", "PLMS") and host.name != "sdnext":
        # A1111's DDIM/PLMS walk t_enc timesteps in img2img: t_enc - 1 = 5 steps
        executed = int(DENOISE * STEPS) - 1
    if host.name == "sdnext" and name in ("KDPM2", "Heun"):
        # diffusers' progress bar counts both evaluations of a second-order step
        assert full + cached == executed, on.infotexts[0]
        return
    # The host's own progress bar says how many steps the sampler executed; DeepCache must
    # neither change that number nor miscount it.
    assert on.sampler_runs == plain.sampler_runs, (plain.log[-1500:], on.log[-1500:])
    assert on.sampler_runs == [executed], on.log[-2000:]
    assert full + cached == executed, on.infotexts[0]


# --------------------------------------------------------------------------- img2img family
def test_img2img_half_strength_caches_the_executed_steps(host: HostServer) -> None:
    payload = img2img_payload(host)
    plain = host.img2img(payload)
    on = host.img2img({**payload, "alwayson_scripts": deepcache(interval=3, depth=0)})

    assert max_abs_diff(plain.images[0], on.images[0]) > 0
    executed = IMG2IMG_STEPS[host.name]
    assert on.sampler_runs == plain.sampler_runs == [executed], on.log[-2000:]
    full, cached = on.counts()
    assert full + cached == executed, on.infotexts[0]
    # uniform interval 3 over the executed steps: full at 0, 3, 6, ...
    assert full == -(-executed // 3), on.infotexts[0]


PASTES_ORIGINAL_BACK = {"a1111": True, "forge": True, "sdnext": False}


def test_inpainting_caches_and_keeps_the_unmasked_half(host: HostServer) -> None:
    init = noise_image()
    payload = base_payload(
        host,
        init_images=[png_b64(init)],
        mask=png_b64(left_half_mask()),
        denoising_strength=DENOISE,
        mask_blur=4,
        inpainting_fill=1,  # original
        inpaint_full_res=False,  # whole picture
    )
    plain = host.img2img(payload)
    on = host.img2img({**payload, "alwayson_scripts": deepcache(interval=3, depth=0)})

    assert max_abs_diff(plain.images[0][:, :28], on.images[0][:, :28]) > 0
    assert on.fields().get("DeepCache") == DC_TEXT, on.infotexts[0]
    full, cached = on.counts()
    assert [full + cached] == on.sampler_runs == plain.sampler_runs, on.log[-2000:]
    # Right of the mask and its blur (a Gaussian of radius 4 reaches 12 pixels past the edge at
    # 32: from column 48 on): A1111 and Forge paste the original back (their overlay),
    # with DeepCache as without; SD.Next's diffusers inpainting repaints the whole image (seen:
    # 213 levels off the original there), so it has no unmasked half to keep.
    kept = PASTES_ORIGINAL_BACK[host.name]
    assert (max_abs_diff(plain.images[0][:, 48:], init[:, 48:]) == 0) == kept
    assert (max_abs_diff(on.images[0][:, 48:], init[:, 48:]) == 0) == kept


def hires_fix(host: HostServer) -> dict[str, Any]:
    """Hires fix at 2x with a latent upscaler and 8 hires steps (the default min_steps: fewer
    would run uncached), in the host's terms."""
    hires = {**latent_hires_2x(), "denoising_strength": DENOISE}
    if host.name == "sdnext":
        # SD.Next resizes only with a resize mode set, and names its latent upscalers
        # "Latent Nearest", ... (plain "Latent" falls back to no upscale, 64x64).
        hires.update(hr_resize_mode=1, hr_upscaler="Latent Nearest")
    return hires


def test_hires_fix_counts_both_passes(host: HostServer) -> None:
    hires = hires_fix(host)
    plain = host.txt2img(base_payload(host, **hires))
    on = host.txt2img(base_payload(host, **hires, alwayson_scripts=deepcache(interval=3)))

    assert on.images[0].shape == plain.images[0].shape == (128, 128, 3)
    assert max_abs_diff(plain.images[0], on.images[0]) > 0
    fields = on.fields()
    assert fields.get("DeepCache") == DC_TEXT, on.infotexts[0]
    assert fields.get("DeepCache hires") == "interval 2, depth 0", on.infotexts[0]
    counts = on.counts()
    assert isinstance(counts, dict) and set(counts) == {"first pass", "hires"}, counts
    assert counts["first pass"] == DC_COUNTS_12, counts
    runs = on.sampler_runs
    assert runs == plain.sampler_runs and len(runs) == 2 and runs[0] == STEPS, on.log[-3000:]
    full, cached = counts["hires"]
    assert full + cached == runs[1], (counts, runs)
    assert full == -(-runs[1] // 2), counts  # hires interval 2: full at 0, 2, ...


def test_batch_size_two_caches_both_images(host: HostServer) -> None:
    plain = host.txt2img(base_payload(host, batch_size=2))
    on = host.txt2img(base_payload(host, batch_size=2, alwayson_scripts=deepcache(interval=3)))

    assert len(plain.images) == len(on.images) == 2
    for i in range(2):
        assert max_abs_diff(plain.images[i], on.images[i]) > 0, f"image {i}"
        assert on.counts(i) == DC_COUNTS_12, on.infotexts[i]


def test_n_iter_two_counts_each_iteration(host: HostServer) -> None:
    plain = host.txt2img(base_payload(host, n_iter=2))
    on = host.txt2img(base_payload(host, n_iter=2, alwayson_scripts=deepcache(interval=3)))

    assert len(plain.images) == len(on.images) == 2
    assert on.sampler_runs == plain.sampler_runs == [STEPS, STEPS], on.log[-3000:]
    for i in range(2):
        assert max_abs_diff(plain.images[i], on.images[i]) > 0, f"image {i}"
        assert on.counts(i) == DC_COUNTS_12, on.infotexts[i]


# --------------------------------------------------------------------------- API args
def test_positional_and_dict_args_give_the_same_image(host: HostServer) -> None:
    named = host.txt2img(
        base_payload(
            host,
            alwayson_scripts=deepcache(
                interval=3, depth=1, start=0.0, end=1.0, schedule="non-uniform"
            ),
        )
    )
    short = host.txt2img(
        base_payload(
            host, alwayson_scripts=deepcache_positional([True, 3, 1, 0.0, 1.0, "non-uniform"])
        )
    )
    full = host.txt2img(
        base_payload(
            host,
            alwayson_scripts=deepcache_positional(
                [True, 3, 1, 0.0, 1.0, "non-uniform", True, 2, 0, 0.15, 4, 0.0, 8]
            ),
        )
    )
    want = "interval 3, depth 1, start 0%, end 100%, non-uniform, min steps 8"
    for result in (named, short, full):
        assert result.fields().get("DeepCache") == want, result.infotexts[0]
    assert max_abs_diff(named.images[0], short.images[0]) == 0
    assert max_abs_diff(named.images[0], full.images[0]) == 0
    assert named.counts() == short.counts() == full.counts()


BAD_ARGS = {
    "interval-negative": ([{"enabled": True, "interval": -1}], "interval"),
    "interval-unknown-word": ([{"enabled": True, "interval": "fast"}], "interval"),
    "depth-not-a-number": ([{"enabled": True, "depth": "x"}], "depth"),
    "depth-too-deep": ([{"enabled": True, "depth": 12}], "depth"),
    "unknown-schedule": ([{"enabled": True, "schedule": "sometimes"}], "schedule"),
    "unknown-key": ([{"enabled": True, "intervall": 3}], "intervall"),
    # thirteen controls (min steps last); a fourteenth value is refused as a whole
    "too-many-positional": (
        [True, 3, 0, 0.0, 1.0, "uniform", True, 2, 0, 0.15, 4, 0.0, 8, 9],
        "args",
    ),
    "positional-bad-end": ([True, 3, 0, 0.0, 1.5], "end"),
}


@pytest.mark.parametrize("route", ["txt2img", "img2img"])
@pytest.mark.parametrize("case", sorted(BAD_ARGS))
def test_bad_args_answer_422_naming_the_field_and_run_nothing(
    host: HostServer, case: str, route: str
) -> None:
    args, field = BAD_ARGS[case]
    payload = base_payload(host, alwayson_scripts={"DeepCache": {"args": args}})
    if route == "img2img":
        payload["init_images"] = [png_b64(noise_image())]
        payload["denoising_strength"] = DENOISE
    mark = host.log_mark()
    began = time.monotonic()
    status, body = host.post(f"/sdapi/v1/{route}", payload, timeout=60)
    elapsed = time.monotonic() - began
    time.sleep(0.5)  # a generation that did start would log its progress bar by now
    log = host.log_since(mark)

    assert status == 422, (status, body, log[-2000:])
    assert isinstance(body, dict), body
    assert body.get("error") == "DeepCacheParamError", body
    assert body.get("field") == field, body
    assert field in str(body.get("detail")), body
    assert not generation_ran(log), log[-2000:]
    assert elapsed < 5, f"a refused request took {elapsed:.1f} s"


def test_log_oracle_sees_a_generation(host: HostServer) -> None:
    """The check "nothing ran" above is only meaningful if a run does show in the log."""
    result = host.txt2img(base_payload(host))
    assert generation_ran(result.log), result.log[-2000:]
    assert result.sampler_runs == [STEPS], result.log[-2000:]
