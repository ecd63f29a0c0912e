"""What the real A1111 1.10.1 in tests/e2e cannot show, on a stand-in of the WebUI written from
its source (tests/webui_host): the 1.6-1.9 hook path, paste-back into the controls, a refiner
of another config (a new UNet object), X/Y/Z cells leaving settings untouched, and failures
injected mid-sampling. Every scenario a real host can run lives in tests/e2e."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HOST = Path(__file__).resolve().parents[1] / "webui_host"
sys.path.insert(0, str(HOST))

from modules import errors, processing, scripts, shared  # noqa: E402
from modules.infotext_utils import parse_generation_parameters, paste  # noqa: E402
from modules.sd_models_standin import LatentDiffusion  # noqa: E402
from webui import boot, defaults, runner  # noqa: E402

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


def test_hires_pass_can_be_left_uncached(host):
    values = [*ON[:6], False]
    _, processed = txt2img(host, values, enable_hr=True, hr_second_pass_steps=4)
    fields = info(processed)
    assert fields["DeepCache hires"] == "off"
    assert fields["DeepCache steps"] == "3 full / 6 cached"


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
    no_min_steps = [*ON, 0.15, 4, 0.0, 0]  # the 4-step hires pass cached, not off
    _, processed = txt2img(host, no_min_steps, enable_hr=True, hr_second_pass_steps=4)
    assert (
        info(processed)["DeepCache steps"]
        == "first pass 3 full / 6 cached; hires 2 full / 2 cached"
    )


def test_infotext_round_trip_restores_every_control(host):
    values = [True, 4, 2, 0.1, 0.9, "adaptive", True, 3, 1, 0.25, 5, 0.5, 3]
    _, processed = txt2img(host, values, enable_hr=True, hr_second_pass_steps=3)
    script = host["txt2img"].alwayson_scripts[0]
    pasted = paste(script.infotext_fields, info(processed))
    assert [pasted[c] for c, _ in script.infotext_fields] == values


def test_auto_interval_writes_what_ran_and_pastes_back_auto(host):
    """Interval 0 (auto) on an SDXL model runs interval 2 in both passes; the infotext, written
    after the passes ran, says so, and pasting it back sets the controls to auto again."""
    shared.sd_model = LatentDiffusion("sdxl", width=32, seed=0, name="xl")
    values = [True, 0, 0, 0.0, 1.0, "uniform", True, 0, 0, 0.15, 4, 0.0, 0]
    _, processed = txt2img(host, values, enable_hr=True, hr_second_pass_steps=4)
    fields = info(processed)
    # interval 2: first pass full at 0, 2, 4, 6, 8 of 9; hires at 0, 2 of 4 (worked by hand)
    assert fields["DeepCache"] == "interval 2 (auto), depth 0, start 0%, end 100%, uniform"
    assert fields["DeepCache hires"] == "interval 2 (auto), depth 0"
    assert fields["DeepCache steps"] == "first pass 5 full / 4 cached; hires 2 full / 2 cached"
    script = host["txt2img"].alwayson_scripts[0]
    pasted = paste(script.infotext_fields, fields)
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
        "Forecast",
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
def test_api_guard_installs_once():
    from fastapi import FastAPI

    from lib_deepcache.hosts import api_guard

    app = FastAPI()
    assert api_guard.install(app) is True
    assert api_guard.install(app) is False
