"""The AUTOMATIC1111 extension on a faithful stand-in of the WebUI (tests/webui_host)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

HOST = Path(__file__).resolve().parent / "webui_host"
sys.path.insert(0, str(HOST))

from modules import errors, processing, scripts, shared  # noqa: E402
from modules.infotext_utils import parse_generation_parameters, paste  # noqa: E402
from modules.sd_models_standin import LatentDiffusion  # noqa: E402
from webui import boot, defaults, init_script_args, runner  # noqa: E402

from tests.support import assert_same_fingerprint, unet_fingerprint  # noqa: E402

ON = [True, 3, 0, 0.0, 1.0, "uniform", True, 2, 1]


@pytest.fixture(scope="module")
def host():
    xyz = boot()
    shared.sd_model = LatentDiffusion("sd15", width=32, seed=0, name="base")
    base = shared.sd_model
    yield {"xyz": xyz, "txt2img": runner(False), "img2img": runner(True), "base": base}
    shared.sd_model = None


@pytest.fixture(autouse=True)
def clean_state(host):
    shared.sd_model = host["base"]
    shared.opts = shared.default_options()
    scripts.PER_PASS_HOOK = True
    errors.reported.clear()
    yield
    assert errors.reported == [], errors.reported


def script_args(r, values):
    args = defaults(r)
    script = r.alwayson_scripts[0]
    args[script.args_from : script.args_from + len(values)] = values
    return tuple(args)


def txt2img(host, values=None, **kwargs):
    r = host["txt2img"]
    p = processing.Txt2Img(**{"steps": 9, **kwargs})
    p.scripts = r
    p.script_args = script_args(r, values or [])
    return p, processing.process_images(p)


def img2img(host, values=None, **kwargs):
    r = host["img2img"]
    p = processing.Img2Img(**{"steps": 20, "init_images": ["image"], **kwargs})
    p.scripts = r
    p.script_args = script_args(r, values or [])
    return p, processing.process_images(p)


def info(processed):
    return parse_generation_parameters(processed.infotexts[0])


def test_the_script_is_always_visible_with_elem_ids(host):
    script = host["txt2img"].alwayson_scripts[0]
    assert script.title() == "DeepCache"
    assert script.args_to - script.args_from == 11
    controls = host["txt2img"].inputs[script.args_from : script.args_to]
    ids = [c.elem_id for c in controls]
    assert ids[0] == "script_txt2img_deepcache_enabled-checkbox"  # InputAccordion's own id
    assert ids[1:] == [
        f"script_txt2img_deepcache_{name}"
        for name in (
            "interval",
            "depth",
            "start",
            "end",
            "schedule",
            "hires_enabled",
            "hires_interval",
            "hires_depth",
            "threshold",
            "max_cached",
        )
    ]
    assert script.paste_field_names == ["DeepCache", "DeepCache hires"]


def test_txt2img_caches_and_writes_infotext(host):
    before = unet_fingerprint(host["base"].model.diffusion_model)
    _, plain = txt2img(host)
    _p, cached = txt2img(host, ON)
    fields = info(cached)
    assert fields["DeepCache"] == "interval 3, depth 0, start 0%, end 100%, uniform"
    assert fields["DeepCache steps"] == "3 full / 6 cached"
    assert "DeepCache hires" not in fields
    assert not torch.equal(plain.samples[0], cached.samples[0])
    assert "DeepCache" not in info(plain)
    assert_same_fingerprint(before, unet_fingerprint(host["base"].model.diffusion_model))


def test_disabled_changes_nothing_and_is_bit_identical(host):
    unet = host["base"].model.diffusion_model
    before = unet_fingerprint(unet)
    seen = []
    handle = unet.register_forward_pre_hook(lambda m, a: seen.append(unet_fingerprint(unet)))
    try:
        _, off = txt2img(host, [False, 3, 0])
    finally:
        handle.remove()
    for during in seen:
        assert during["forwards"] == before["forwards"]
        assert during["hooks"][""] == (before["hooks"][""][0] + 1, before["hooks"][""][1])
    p = processing.Txt2Img(steps=9)
    p.scripts = scripts.ScriptRunner()  # the WebUI without this extension
    bare = processing.process_images(p)
    assert torch.equal(off.samples[0], bare.samples[0])
    assert "DeepCache" not in processing.create_infotext(p)


def test_hires_pass_has_its_own_params_and_fresh_cache(host):
    _p, processed = txt2img(host, ON, enable_hr=True, hr_second_pass_steps=4)
    fields = info(processed)
    assert fields["DeepCache hires"] == "interval 2, depth 1"
    assert fields["DeepCache steps"] == "first pass 3 full / 6 cached; hires 2 full / 2 cached"


def test_hires_pass_can_be_left_uncached(host):
    values = [*ON[:6], False]
    _, processed = txt2img(host, values, enable_hr=True, hr_second_pass_steps=4)
    fields = info(processed)
    assert fields["DeepCache hires"] == "off"
    assert fields["DeepCache steps"] == "3 full / 6 cached"


def test_img2img_window_counts_executed_steps(host):
    """Denoising 0.5 of 20 steps executes 11; the 20-80 % window applies to those 11."""
    values = [True, 3, 0, 0.2, 0.8, "uniform"]
    _, processed = img2img(host, values, denoising_strength=0.5)
    # executed 11 steps, window [3, 9): steps 3 and 6 refresh inside it, 5 steps outside
    assert info(processed)["DeepCache steps"] == "7 full / 4 cached"


def test_inpainting_model(host):
    inpaint = LatentDiffusion("sd15-inpaint", width=32, seed=3, name="inpaint")
    shared.sd_model = inpaint
    before = unet_fingerprint(inpaint.model.diffusion_model)
    _, processed = img2img(host, ON, denoising_strength=0.75, image_mask="mask")
    assert info(processed)["DeepCache steps"] == "6 full / 10 cached"
    assert torch.isfinite(processed.samples[0]).all()
    assert_same_fingerprint(before, unet_fingerprint(inpaint.model.diffusion_model))


def test_refiner_switch_hooks_the_new_unet_and_restores_both(host):
    refiner = LatentDiffusion("sd15", width=32, seed=9, name="refiner")
    base_unet, refiner_unet = host["base"].model.diffusion_model, refiner.model.diffusion_model
    before = (unet_fingerprint(base_unet), unet_fingerprint(refiner_unet))
    unet_calls, deep_calls = [], []
    hooks = [
        refiner_unet.register_forward_pre_hook(lambda *a: unet_calls.append(1)),
        refiner_unet.middle_block[0].register_forward_pre_hook(lambda *a: deep_calls.append(1)),
    ]
    try:
        _, processed = txt2img(host, ON, steps=10, refiner_model=refiner, refiner_switch_at=0.6)
    finally:
        for h in hooks:
            h.remove()
    fields = info(processed)
    assert fields["Refiner"] == "refiner"
    full, cached = (int(s.split()[0]) for s in fields["DeepCache steps"].split(" / "))
    assert full + cached == 10
    assert unet_calls and len(deep_calls) < len(unet_calls), "the refiner's UNet was not cached"
    assert_same_fingerprint(before[0], unet_fingerprint(base_unet))
    assert_same_fingerprint(before[1], unet_fingerprint(refiner_unet))


def test_webui_before_1_10_hooks_through_process_batch_and_before_hr(host, monkeypatch):
    monkeypatch.delattr(scripts.Script, "process_before_every_sampling")
    scripts.PER_PASS_HOOK = False
    _, processed = txt2img(host, ON, enable_hr=True, hr_second_pass_steps=4)
    assert (
        info(processed)["DeepCache steps"]
        == "first pass 3 full / 6 cached; hires 2 full / 2 cached"
    )


@pytest.mark.parametrize(
    ("sampler", "txt2img_counts", "img2img_counts"),
    [
        ("DPM++ SDE", "3 full / 6 cached", "4 full / 7 cached"),
        ("DPM2", "3 full / 6 cached", "4 full / 7 cached"),
        # Heun's correction call opens step 1, whose own call is the first in its slot: it
        # finds no feature and runs fully, and is counted full
        ("Heun", "4 full / 5 cached", "5 full / 6 cached"),
    ],
)
def test_second_order_samplers_count_steps_not_calls(
    host, sampler, txt2img_counts, img2img_counts, caplog
):
    """The adapter hands the sampler's timestep grid to the engine, so midpoint evaluations
    stay in their step, in txt2img and in img2img's partial schedule."""
    _, processed = txt2img(host, ON, sampler_name=sampler)
    assert info(processed)["DeepCache steps"] == txt2img_counts
    _, processed = img2img(host, ON, sampler_name=sampler, denoising_strength=0.5)
    assert info(processed)["DeepCache steps"] == img2img_counts
    assert "timestep grid" not in caplog.text


def test_batch_count_gives_each_iteration_fresh_sessions(host):
    _, processed = txt2img(host, ON, n_iter=2)
    for text in processed.infotexts:
        assert parse_generation_parameters(text)["DeepCache steps"] == "3 full / 6 cached"


def test_infotext_round_trip_restores_every_control(host):
    values = [True, 4, 2, 0.1, 0.9, "adaptive", True, 3, 1, 0.25, 5]
    _, processed = txt2img(host, values, enable_hr=True, hr_second_pass_steps=3)
    script = host["txt2img"].alwayson_scripts[0]
    pasted = paste(script.infotext_fields, info(processed))
    assert [pasted[c] for c, _ in script.infotext_fields] == values


def test_pasting_an_image_made_without_deepcache_turns_it_off(host):
    _, processed = txt2img(host)
    script = host["txt2img"].alwayson_scripts[0]
    pasted = paste(script.infotext_fields, info(processed))
    assert pasted[script.infotext_fields[0][0]] is False


def test_bad_ui_args_are_reported_in_infotext_not_silently_dropped(host, caplog):
    _, processed = txt2img(host, [True, 3, 99])
    fields = info(processed)
    assert "depth=99" in fields["DeepCache error"]
    assert "DeepCache steps" not in fields
    assert "depth=99" in caplog.text


def test_xyz_axes_sweep_cells_without_touching_settings(host):
    xyz = host["xyz"]
    labels = [o.label for o in xyz.axis_options]
    for name in (
        "Enabled",
        "Interval",
        "Depth",
        "Start",
        "End",
        "Schedule",
        "Threshold",
        "Max cached",
    ):
        assert f"[DeepCache] {name}" in labels
    options_before = dict(vars(shared.opts))
    p = processing.Txt2Img(steps=9)
    p.scripts = host["txt2img"]
    p.script_args = script_args(host["txt2img"], ON)
    results = xyz.run_axis(p, "[DeepCache] Interval", "2, 4")
    counts = [info(r)["DeepCache steps"] for r in results]
    assert counts == ["5 full / 4 cached", "3 full / 6 cached"]
    assert [info(r)["DeepCache"].split(",")[0] for r in results] == ["interval 2", "interval 4"]
    assert dict(vars(shared.opts)) == options_before
    assert not hasattr(p, "deepcache_overrides")
    enabled = xyz.run_axis(p, "[DeepCache] Enabled", "False, True")
    assert "DeepCache" not in info(enabled[0]) and "DeepCache" in info(enabled[1])


def test_a_generation_that_crashed_does_not_leave_the_unet_hooked(host):
    unet = host["base"].model.diffusion_model
    before = unet_fingerprint(unet)
    p = processing.Txt2Img(steps=9)
    p.scripts = host["txt2img"]
    p.script_args = script_args(host["txt2img"], ON)

    def boom(*args, **kwargs):
        raise RuntimeError("out of memory")

    p.sample = boom
    with pytest.raises(RuntimeError):
        processing.process_images(p)
    txt2img(host, ON)  # the next generation cleans up first
    assert_same_fingerprint(before, unet_fingerprint(unet))


def test_an_error_mid_sampling_unhooks_when_the_host_closes_p(host):
    """The WebUI runs ``with closing(p): process_images(p)``; close() must unhook at once."""
    from contextlib import closing

    unet = host["base"].model.diffusion_model
    before = unet_fingerprint(unet)
    p = processing.Txt2Img(steps=9)
    p.scripts = host["txt2img"]
    p.script_args = script_args(host["txt2img"], ON)
    hooked_during_sampling = []

    def sample_then_fail(conditioning, unconditional_conditioning):
        processing.Txt2Img.sample(p, conditioning, unconditional_conditioning)
        hooked_during_sampling.append(unet_fingerprint(unet)["forwards"] != before["forwards"])
        raise RuntimeError("CUDA out of memory")

    p.sample = sample_then_fail
    with pytest.raises(RuntimeError), closing(p):
        processing.process_images(p)
    assert hooked_during_sampling == [True]
    assert_same_fingerprint(before, unet_fingerprint(unet))


# ----------------------------------------------------------------------------- API
@pytest.fixture
def api(host):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient
    from modules import api as api_module
    from modules import script_callbacks

    app = api_module.create_api(
        FastAPI(), {"txt2img": host["txt2img"], "img2img": host["img2img"]}, init_script_args
    )
    client = TestClient(app)
    assert client.post("/sdapi/v1/txt2img", json={"steps": 2}).status_code == 200
    script_callbacks.app_started_callback(None, app)  # after start-up, as the WebUI does
    api_module.generations.clear()
    return client, api_module.generations


def test_api_positional_args(api):
    client, _generations = api
    response = client.post(
        "/sdapi/v1/txt2img",
        json={"steps": 9, "alwayson_scripts": {"DeepCache": {"args": [True, 3, 1]}}},
    )
    assert response.status_code == 200, response.text
    fields = parse_generation_parameters(response.json()["info"])
    assert fields["DeepCache"] == "interval 3, depth 1, start 0%, end 100%, uniform"
    assert fields["DeepCache steps"] == "3 full / 6 cached"


def test_api_named_args_in_one_object(api):
    client, _ = api
    args = {
        "enabled": True,
        "interval": 4,
        "depth": 2,
        "schedule": "non-uniform",
        "hires": {"enabled": False},
    }
    response = client.post(
        "/sdapi/v1/img2img",
        json={
            "steps": 10,
            "denoising_strength": 0.5,
            "alwayson_scripts": {"deepcache": {"args": [args]}},
        },
    )
    assert response.status_code == 200, response.text
    fields = parse_generation_parameters(response.json()["info"])
    assert fields["DeepCache"] == "interval 4, depth 2, start 0%, end 100%, non-uniform"
    assert fields["DeepCache steps"] == "2 full / 4 cached"


@pytest.mark.parametrize(
    ("args", "field"),
    [
        ([True, 0], "interval"),
        ([True, 3, 12], "depth"),
        ([True, 3, 0, 0.9, 0.1], "start"),
        ([True, 3, 0, 0, 1, "cosine"], "schedule"),
        ([True, 3, 0, 0, 1, "uniform", True, 2, 1, 0.2, 4, "extra"], "args"),
        ([True, 3, 0, 0, 1, "adaptive", True, 2, 1, -0.5], "threshold"),
        ([{"enabled": True, "intervall": 3}], "intervall"),
        ([{"enabled": True, "hires": {"depth": -1}}], "hires_depth"),
        ([None], "enabled"),
        ("yes", "args"),
    ],
)
def test_api_bad_args_get_422_naming_the_field_and_nothing_runs(api, args, field):
    client, generations = api
    response = client.post(
        "/sdapi/v1/txt2img", json={"steps": 4, "alwayson_scripts": {"DeepCache": {"args": args}}}
    )
    assert response.status_code == 422
    body = response.json()
    assert body["field"] == field
    assert field in body["detail"]
    assert generations == []


def test_api_requests_without_deepcache_pass_untouched(api):
    client, generations = api
    assert client.post("/sdapi/v1/txt2img", json={"steps": 2}).status_code == 200
    assert client.post("/sdapi/v1/txt2img", content=b"not json").status_code == 422
    assert len(generations) == 1


def test_api_guard_installs_once():
    from fastapi import FastAPI

    from lib_deepcache import api_guard

    app = FastAPI()
    assert api_guard.install(app) is True
    assert api_guard.install(app) is False
