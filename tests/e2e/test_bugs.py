"""Bugs the real hosts showed and the stand-ins hid (issue 12, point 5), one test each.

Expected counts are worked out by hand from the host's own behaviour (its source, its progress
bars), written next to each test: never computed with the extension's schedule.
"""

from __future__ import annotations

import pytest

from tests.e2e.gradio_page import GradioPage
from tests.e2e.payloads import base_payload, deepcache, max_abs_diff, noise_image, png_b64

pytestmark = pytest.mark.e2e

STEPS_KEY = "DeepCache steps"


# --------------------------------------------------------------------------- a. NGMS
def a1111_or_forge(host) -> None:
    """NGMS, skip early CFG and the cond/uncond split are A1111's CFG denoiser's, which Forge
    keeps (it drops the uncond rows through cond scale 1); SD.Next has none of them."""
    if host.name == "sdnext":
        pytest.skip("SD.Next has no negative guidance minimum sigma / skip early CFG options")


def test_ngms_alternating_batch_is_really_cached(host):
    """NGMS 100 is above every sigma, so the host drops the uncond rows on every odd step: the
    batch goes 2, 1, 2, 1... Interval 3 over 12 steps: full by schedule at 0, 3, 6, 9; step 1
    has no 1-row feature yet and steps 4, 7, 10 only find a 2-row feature older than the last
    full step: they run whole; 2, 5, 8, 11 reuse their own shape's feature. 8 full / 4 cached,
    and the image differs from the uncached NGMS image (it used to be identical while the
    infotext said 8 cached)."""
    a1111_or_forge(host)
    ngms = base_payload(host, s_min_uncond=100)
    plain = host.txt2img(ngms)
    cached = host.txt2img({**ngms, "alwayson_scripts": deepcache(interval=3)})
    assert float(cached.fields()["NGMS"]) == 100
    assert cached.counts() == (8, 4)
    assert max_abs_diff(plain.images[0], cached.images[0]) > 0


def test_ngms_steps_that_all_missed_are_counted_full(host):
    """Honest counts: at interval 2 under NGMS every step the schedule would cache finds only
    the other shape's feature or an older one, so it runs the whole UNet: the image is the
    plain NGMS image bit for bit, and the infotext says 12 full / 0 cached."""
    a1111_or_forge(host)
    ngms = base_payload(host, s_min_uncond=100)
    plain = host.txt2img(ngms)
    cached = host.txt2img({**ngms, "alwayson_scripts": deepcache(interval=2)})
    assert cached.counts() == (12, 0)
    assert max_abs_diff(plain.images[0], cached.images[0]) == 0


def test_skip_early_cfg_switches_the_batch_once(host):
    """Skip early CFG 0.5: steps with step/12 <= 0.5 (0..6) send the cond rows only, 7..11 both.
    Interval 3: full at 0, 3, 6, 9; step 7 is the first 2-row call and runs whole; 8 reuses
    step 7's feature; 1, 2, 4, 5, 10, 11 reuse theirs: 5 full / 7 cached."""
    a1111_or_forge(host)
    payload = base_payload(host, override_settings={"skip_early_cond": 0.5})
    try:
        plain = host.txt2img(payload)
        cached = host.txt2img({**payload, "alwayson_scripts": deepcache(interval=3)})
    finally:  # A1111 restores no overridden setting that config.json does not hold
        host.post("/sdapi/v1/options", {"skip_early_cond": 0.0})
    assert float(cached.fields()["Skip Early CFG"]) == 0.5
    assert cached.counts() == (5, 7)
    assert max_abs_diff(plain.images[0], cached.images[0]) > 0


def test_long_negative_prompt_splits_cond_and_uncond(host):
    """A negative prompt over 75 tokens with a short prompt: the host sends cond and uncond as
    separate UNet calls; each keeps its own feature, so the counts are the plain schedule's."""
    a1111_or_forge(host)
    negative = ", ".join(f"blurry detail {i}" for i in range(60))
    payload = base_payload(host, negative_prompt=negative)
    plain = host.txt2img(payload)
    cached = host.txt2img({**payload, "alwayson_scripts": deepcache(interval=3)})
    assert cached.counts() == (4, 8)
    assert max_abs_diff(plain.images[0], cached.images[0]) > 0


# --------------------------------------------------------------------------- b. SD.Next KDPM2
@pytest.mark.parametrize("route", ["txt2img", "img2img"])
def test_sdnext_second_order_scheduler_counts_steps(sdnext, route):
    """KDPM2 lists every step twice in scheduler.timesteps (start, interpolated midpoint): 12
    steps are 23 UNet calls. The counts must add up to the 12 steps (SD.Next's img2img at
    denoise 0.5 runs 12 of 25 scheduled steps), 4 full / 8 cached at interval 3 (it said
    15 full / 8 cached, and stopped caching midway)."""
    payload = base_payload(sdnext, sampler_name="KDPM2", steps=12)
    if route == "img2img":
        payload.update(init_images=[png_b64(noise_image())], denoising_strength=0.5)
    plain = sdnext.generate(route, payload)
    cached = sdnext.generate(route, {**payload, "alwayson_scripts": deepcache(interval=3)})
    assert cached.counts() == (4, 8)
    assert max_abs_diff(plain.images[0], cached.images[0]) > 0


@pytest.mark.parametrize("sampler", ["Default", "PNDM"])
def test_sdnext_pndm_counts_its_steps(sdnext, sampler):
    """PNDM evaluates more often than it steps: "Default" (this model's own PNDM, PLMS only)
    evaluates step 1's timestep twice, 13 calls; "PNDM" (with the Runge-Kutta warm-up) 21 calls
    at 15 timesteps. It said 6 full / 6 cached and 6 full / 9 cached for 12 steps at interval 3.
    The counts must add up to the 12 steps; with PLMS, step 1's second call is the first of its
    slot and runs whole, so step 1 counts full: 5 full / 7 cached (worked by hand)."""
    payload = base_payload(sdnext, sampler_name=sampler, steps=12)
    plain = sdnext.txt2img(payload)
    cached = sdnext.txt2img({**payload, "alwayson_scripts": deepcache(interval=3)})
    full, cached_steps = cached.counts()
    assert full + cached_steps == 12, cached.infotexts[0]
    if sampler == "Default":
        assert (full, cached_steps) == (5, 7)
    assert max_abs_diff(plain.images[0], cached.images[0]) > 0


# --------------------------------------------------------------------------- c. DDIM / PLMS img2img
@pytest.mark.parametrize(
    ("sampler", "want"),
    [
        # 5 executed steps (t_enc - 1 with t_enc = 6); end 0.6 allows caching in steps 0..2:
        # step 0 full, 1 and 2 cached, 3 and 4 full (over the 7 steps it planned before, the
        # window ran to step 4: "1 full / 4 cached")
        ("DDIM", (3, 2)),
        # PLMS's first step also evaluates at step 1's timestep: that call opens step 1 and
        # reuses step 0's feature; step 1's own call is then the first in its slot and runs
        # whole, so step 1 counts full: 4 full / 1 cached
        ("PLMS", (4, 1)),
    ],
)
def test_a1111_timesteps_samplers_plan_img2img_over_the_executed_steps(a1111, sampler, want):
    payload = base_payload(
        a1111,
        sampler_name=sampler,
        init_images=[png_b64(noise_image())],
        denoising_strength=0.5,
    )
    cached = a1111.img2img({**payload, "alwayson_scripts": deepcache(interval=5, end=0.6)})
    assert cached.sampler_runs == [5]  # the host's own progress bar: 5 steps
    assert cached.counts() == want
    assert sum(cached.counts()) == 5


@pytest.mark.parametrize(("sampler", "want"), [("DDIM", (7, 2)), ("PLMS", (8, 1))])
def test_a1111_timesteps_samplers_txt2img_counts(a1111, sampler, want):
    """10 txt2img steps: DDIM/PLMS walk range(0, 1000, 100) + 1, ten timesteps, so 9 steps
    run. End 0.44 allows caching in steps 0..3 of 9 (over the 10 planned before: 0..4):
    interval 3 gives full 0 and 3, cached 1 and 2, full 4..8: 7 full / 2 cached (PLMS: step 1
    full too, as above)."""
    payload = base_payload(a1111, sampler_name=sampler, steps=10)
    plain = a1111.txt2img(payload)
    cached = a1111.txt2img({**payload, "alwayson_scripts": deepcache(interval=3, end=0.44)})
    assert cached.sampler_runs == [9]
    assert cached.counts() == want
    assert max_abs_diff(plain.images[0], cached.images[0]) > 0


# --------------------------------------------------------------------------- d. refiner
# Switching by sampling steps at 0.6 of 12, the refiner takes over at step 8 (8/12 >= 0.6 >
# 7/12). Interval 3: full 0, 3, 6, 9; step 8 would reuse step 6's feature, computed with the
# base's weights: it must run whole on the refiner's instead, so 5 full / 7 cached.
REFINER_COUNTS = (5, 7)


def refine(a1111, base: str, refiner: str, restore: bool = True):
    payload = base_payload(
        a1111,
        refiner_checkpoint=refiner,
        refiner_switch_at=0.6,
        override_settings={"sd_model_checkpoint": base, "refiner_switch_by_sample_steps": True},
        override_settings_restore_afterwards=restore,
    )
    try:
        plain = a1111.txt2img(payload)
        cached = a1111.txt2img({**payload, "alwayson_scripts": deepcache(interval=3)})
    finally:  # A1111 restores no overridden setting that config.json does not hold
        a1111.post("/sdapi/v1/options", {"refiner_switch_by_sample_steps": False})
    assert cached.fields().get("Refiner", "").startswith(refiner)
    assert plain.fields().get("Refiner", "").startswith(refiner)
    assert max_abs_diff(plain.images[0], cached.images[0]) > 0
    return cached


def test_a1111_refiner_of_another_config_gets_a_fresh_cache(a1111):
    """tiny-sd15-refiner has a .yaml of its own: A1111 builds a new model object for it."""
    cached = refine(a1111, "tiny-sd15-random", "tiny-sd15-refiner")
    assert "Creating model from config" in cached.log
    assert cached.counts() == REFINER_COUNTS


@pytest.mark.host_state(folder="sd-webui-deepcache-full-size")
def test_a1111_full_size_refiner_of_another_config_gets_a_fresh_cache(a1111):
    """The tiny base hands over to the full-size SD1.5 (v1-inference, another config): a new
    model object mid-sampling. One request only, first in this host run: the host cannot load
    the tiny model again after the full-size one (the A1111 recipe's README)."""
    payload = base_payload(
        a1111,
        refiner_checkpoint="sd15-random-fp16",
        refiner_switch_at=0.6,
        override_settings={"refiner_switch_by_sample_steps": True},
        alwayson_scripts=deepcache(interval=3),
    )
    try:
        cached = a1111.txt2img(payload)
    finally:  # A1111 restores no overridden setting that config.json does not hold
        a1111.post("/sdapi/v1/options", {"refiner_switch_by_sample_steps": False})
    assert cached.fields().get("Refiner", "").startswith("sd15-random-fp16")
    assert "Creating model from config" in cached.log
    assert cached.counts() == REFINER_COUNTS


@pytest.mark.host_state(folder="sd-webui-deepcache-full-size")
def test_a1111_refiner_of_the_same_config_gets_a_fresh_cache(a1111):
    """Two full-size SD1.5 checkpoints with no .yaml share A1111's v1-inference config, so the
    refiner's weights are loaded into the base's model object: the UNet object stays, only the
    checkpoint tells the swap (it said 4 full / 8 cached and fed the refiner the base's feature).
    Its own host state: the host cannot go back from the full-size model to the tiny one, so
    the model stays loaded (no restore) until the next restart."""
    cached = refine(a1111, "sd15-random-fp16", "sd15-refiner-fp16", restore=False)
    assert "Creating model from config" not in cached.log  # weights into the same object
    assert "Loading weights" in cached.log
    assert cached.counts() == REFINER_COUNTS


# --------------------------------------------------------------------------- e. X/Y/Z plot
XYZ_TITLE = "x/y/z plot"


def xyz_request(host, x_label: str, x_values: str) -> dict:
    """A txt2img request running the X/Y/Z plot over one DeepCache axis (the axis is found by
    its label in the plot's own axis list, as the API lists it)."""
    status, info = host.get("/sdapi/v1/script-info")
    assert status == 200, info
    plot = next(
        s for s in info if s["name"] == XYZ_TITLE and not s["is_img2img"] and not s["is_alwayson"]
    )
    labels = plot["args"][0]["choices"]
    assert x_label in labels, f"{x_label} not among the plot's axes: {labels}"
    # x type, x values, x dropdown, y..., z..., legend, lone images, sub grids, no fixed
    # seeds, vary seeds x/y/z, margin, csv mode
    args = [labels.index(x_label), x_values, [], 0, "", [], 0, "", [], True, True, False]
    args += [False, False, False, False, 0, False]
    return base_payload(
        host,
        script_name=XYZ_TITLE,
        script_args=args,
        alwayson_scripts=deepcache(interval=2),
    )


def check_xyz_axes(host) -> None:
    if host.name == "sdnext":
        pytest.skip("SD.Next's XYZ Grid script takes other args; its axes are added the same way")
    result = host.txt2img(xyz_request(host, "[DeepCache] Interval", "0, 2, 3"))
    written = {result.fields(i).get("DeepCache") for i in range(len(result.infotexts))}
    for interval in ("3 (auto)", "2", "3"):  # 0 = auto: the SD 1.x model's own, 3
        assert f"interval {interval}, depth 0, start 0%, end 100%, uniform, min steps 8" in written
    for values, named in (("-1, 3", "interval"), ("2, abc", "abc")):
        mark = host.log_mark()
        request = xyz_request(host, "[DeepCache] Interval", values)
        status, body = host.post("/sdapi/v1/txt2img", request)
        assert status == 422, body
        assert named in str(body).lower(), body
        assert "Traceback" not in host.log_since(mark)


def test_xyz_axes_in_api_only_mode(host):
    """--nowebui never runs on_before_ui; the axes come from on_app_started."""
    check_xyz_axes(host)


@pytest.mark.host_state(ui=True)
def test_xyz_axes_in_ui_mode(host):
    check_xyz_axes(host)


# --------------------------------------------------------------------------- f. title clash
def since_start(host) -> str:
    return host.log_since(host.start_mark)


@pytest.mark.host_state(other_extension=True)
def test_a1111_ours_loading_first_gets_the_args_and_says_so(a1111):
    """Our folder sorts before aria1th's sd-webui-deepcache-standalone: the args are ours."""
    result = a1111.txt2img(base_payload(a1111, alwayson_scripts=deepcache(interval=3)))
    assert result.counts() == (4, 8)
    log = since_start(a1111)
    assert "sd-webui-deepcache-standalone also registers a script titled 'DeepCache'" in log
    assert "args reach sd-webui-deepcache" in log


@pytest.mark.host_state(other_extension=True, folder="zz-sd-webui-deepcache")
def test_a1111_ours_loading_second_is_never_silently_bypassed(a1111):
    """In a folder sorting after aria1th's, the host hands the args to that script (which takes
    none): the image is plain and carries no DeepCache infotext; our guard must not refuse args
    that are not ours; the console says, once, what happens and what to do."""
    plain = a1111.txt2img(base_payload(a1111))
    routed = a1111.txt2img(base_payload(a1111, alwayson_scripts=deepcache(interval=3)))
    assert "DeepCache" not in routed.fields()
    assert max_abs_diff(plain.images[0], routed.images[0]) == 0
    a1111.txt2img(base_payload(a1111, alwayson_scripts=deepcache(interval=0)))  # not a 422
    log = since_start(a1111)
    message = "args go to sd-webui-deepcache-standalone, so the API cannot reach"
    assert log.count(message) == 1
    assert "sorts before 'sd-webui-deepcache-standalone'" in log


def other_script_defaults(host) -> list:
    """The default args of the other script titled DeepCache, as the API lists them."""
    status, info = host.get("/sdapi/v1/script-info")
    assert status == 200, info
    titled = [s for s in info if s["name"].lower() == "deepcache" and not s["is_img2img"]]
    ours = [s for s in titled if any(a.get("label") == "Refresh schedule" for a in s["args"])]
    other = next(s for s in titled if s not in ours)
    return [arg.get("value") for arg in other["args"]]


@pytest.mark.host_state(other_extension=True)
def test_forge_other_extension_loading_first_keeps_its_requests(forge):
    """LoganBooker's sd-deepcache sorts before us: its own positional args must reach it (our
    guard refused them with 422 before) and it must really cache with them: its defaults (mode
    'None') give the plain image, mode 'First' another one with its own infotext; ours writes
    nothing, and the console says, once, that the API cannot reach us."""
    args = other_script_defaults(forge)
    assert len(args) == 13 and args[0] == "None", args
    plain = forge.txt2img(base_payload(forge))
    off = forge.txt2img(base_payload(forge, alwayson_scripts={"DeepCache": {"args": args}}))
    first = ["First", *args[1:]]
    on = forge.txt2img(base_payload(forge, alwayson_scripts={"DeepCache": {"args": first}}))
    assert max_abs_diff(plain.images[0], off.images[0]) == 0
    assert max_abs_diff(plain.images[0], on.images[0]) > 0, "its cache changed nothing"
    assert on.fields().get("deepcache_mode") == "First", on.infotexts[0]
    for result in (off, on):
        assert not [key for key in result.fields() if key.startswith("DeepCache")]
    log = since_start(forge)
    assert log.count("args go to sd-deepcache, so the API cannot reach sd-webui-deepcache") == 1


@pytest.mark.host_state(other_extension=True, folder="a-sd-webui-deepcache")
def test_forge_ours_loading_first_gets_the_args(forge):
    result = forge.txt2img(base_payload(forge, alwayson_scripts=deepcache(interval=3)))
    assert result.counts() == (4, 8)
    assert "args reach a-sd-webui-deepcache, never sd-deepcache" in since_start(forge)


# --------------------------------------------------------------------------- g. SD.Next
def test_sdnext_log_lines_reach_its_console(sdnext):
    mark = sdnext.log_mark()
    sdnext.txt2img(base_payload(sdnext, alwayson_scripts=deepcache(interval=3)))
    assert "DeepCache: 4 full / 8 cached steps" in sdnext.log_since(mark)


def test_each_console_line_shows_once(host):
    """A1111 runs a logging.basicConfig after the extension loads: each line showed twice."""
    mark = host.log_mark()
    host.txt2img(base_payload(host, alwayson_scripts=deepcache(interval=3)))
    assert host.log_since(mark).count("DeepCache: 4 full / 8 cached steps") == 1


@pytest.mark.host_state(ui=True)
def test_sdnext_offers_deepcache_in_its_control_tab(sdnext):
    """The UI's layout tree: one enable checkbox in the Control tab itself, as in txt2img and
    img2img."""
    page = GradioPage(sdnext)
    for tab in ("tab_control", "tab_txt2img", "tab_img2img"):
        labels = [c.get("props", {}).get("label") for c in page.inside(tab)]
        assert labels.count("Enable DeepCache") == 1, (tab, len(labels))


@pytest.mark.host_state(other_extension=True)
def test_a1111_the_other_extension_still_works_beside_ours(a1111):
    """aria1th's extension is driven by a setting, not by API args: with ours installed (and
    off), its requests still cache with it (the image changes) and ours writes nothing."""
    plain = a1111.txt2img(base_payload(a1111))
    try:
        theirs = a1111.txt2img(
            base_payload(a1111, override_settings={"deepcache_enable_pass": "both passes"})
        )
    finally:  # A1111 restores no overridden setting that config.json does not hold
        a1111.post("/sdapi/v1/options", {"deepcache_enable_pass": "disable"})
    assert max_abs_diff(plain.images[0], theirs.images[0]) > 0
    assert not [key for key in theirs.fields() if key.startswith("DeepCache")]
