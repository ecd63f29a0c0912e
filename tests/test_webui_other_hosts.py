"""The same extension on Forge and SD.Next stand-ins (tests/webui_host/modules/forge_standin.py,
sdnext_standin.py) and on a host it does not know."""

from __future__ import annotations

import importlib.machinery
import logging
import sys
import types
from pathlib import Path

import pytest
import torch

HOST = Path(__file__).resolve().parent / "webui_host"
sys.path.insert(0, str(HOST))

from modules import errors, processing, scripts, shared  # noqa: E402
from modules.forge_standin import ForgeModel, ForgeTxt2Img  # noqa: E402
from modules.infotext_utils import parse_generation_parameters  # noqa: E402
from modules.sdnext_standin import DiffusersPipeline, SdnextTxt2Img  # noqa: E402
from webui import boot, defaults, runner  # noqa: E402

from lib_deepcache.unet_patcher import WRAPPER_OPTION, DeepCacheModelWrapper  # noqa: E402
from tests.comfy_support import build_comfy_rig, load_comfy  # noqa: E402

ON = [True, 3, 0, 0.0, 1.0, "uniform", True, 2, 1]


@pytest.fixture(scope="module")
def host():
    boot()
    comfy = load_comfy()
    yield {"txt2img": runner(False), "comfy": comfy, "rig": build_comfy_rig(comfy)}
    shared.sd_model = None


@pytest.fixture(autouse=True)
def clean_state(host):
    shared.opts = shared.default_options()
    errors.reported.clear()
    yield
    scripts.PER_PASS_HOOK = True
    assert errors.reported == [], errors.reported


def generate(host, cls, values=None, **kwargs):
    r = host["txt2img"]
    p = cls(**{"steps": 9, **kwargs})
    p.scripts = r
    args = defaults(r)
    script = r.alwayson_scripts[0]
    values = values or []
    args[script.args_from : script.args_from + len(values)] = values
    p.script_args = tuple(args)
    processed = processing.process_images(p)
    return p, processed, parse_generation_parameters(processed.infotexts[0])


def untouched(module: torch.nn.Module) -> bool:
    return all("forward" not in m.__dict__ for m in module.modules()) and not any(
        m._forward_pre_hooks for m in module.modules()
    )


# ----------------------------------------------------------------------------- Forge
@pytest.fixture
def forge(host):
    shared.sd_model = ForgeModel(host["comfy"], host["rig"])
    return shared.sd_model


def test_forge_txt2img_caches_through_a_patcher_clone(host, forge):
    _, plain, _ = generate(host, ForgeTxt2Img)
    _p, cached, fields = generate(host, ForgeTxt2Img, ON)
    assert fields["DeepCache steps"] == "3 full / 6 cached"
    assert "DeepCache error" not in fields
    assert not torch.equal(plain.samples[0], cached.samples[0])
    used = forge.forge_objects.unet
    assert used is not host["rig"].patcher
    assert isinstance(used.model_options[WRAPPER_OPTION], DeepCacheModelWrapper)
    assert WRAPPER_OPTION not in forge.forge_objects_after_applying_lora.unet.model_options
    assert untouched(host["rig"].model.diffusion_model)


def test_forge_disabled_is_bit_identical_and_leaves_the_patcher_alone(host, forge):
    _, off, _ = generate(host, ForgeTxt2Img, [False, 3, 0])
    assert forge.forge_objects.unet is host["rig"].patcher
    p = ForgeTxt2Img(steps=9)
    p.scripts = scripts.ScriptRunner()
    bare = processing.process_images(p)
    assert torch.equal(off.samples[0], bare.samples[0])


def test_forge_hires_double_hook_call_counts_one_hires_pass(host, forge):
    _, _, fields = generate(host, ForgeTxt2Img, ON, enable_hr=True, hr_second_pass_steps=6)
    # hires steps given: the WebUI runs exactly 6 (setup_img2img_steps); interval 2 -> 3 full
    assert fields["DeepCache steps"] == "first pass 3 full / 6 cached; hires 3 full / 3 cached"
    wrapper = forge.forge_objects.unet.model_options[WRAPPER_OPTION]
    assert not isinstance(wrapper.previous, DeepCacheModelWrapper)


def test_forge_with_controlnet_residuals_warns_nothing(host, caplog):
    shared.sd_model = ForgeModel(host["comfy"], host["rig"], control="controlnet+t2i")
    with caplog.at_level(logging.WARNING):
        _, _, fields = generate(host, ForgeTxt2Img, ON)
    assert fields["DeepCache steps"] == "3 full / 6 cached"
    assert not [r for r in caplog.records if "control" in r.getMessage()]


# ----------------------------------------------------------------------------- SD.Next
@pytest.fixture
def sdnext(host):
    scripts.PER_PASS_HOOK = False  # SD.Next's runner has no process_before_every_sampling
    shared.sd_model = DiffusersPipeline(width=32, seed=0)
    return shared.sd_model


def test_sdnext_txt2img_and_hires_get_a_session_each(host, sdnext):
    _, plain, _ = generate(host, SdnextTxt2Img, enable_hr=True, hr_second_pass_steps=6)
    _, cached, fields = generate(host, SdnextTxt2Img, ON, enable_hr=True, hr_second_pass_steps=6)
    # hires: diffusers img2img runs int(6 * 0.5) = 3 steps; interval 2 -> 2 full / 1 cached
    assert fields["DeepCache steps"] == "first pass 3 full / 6 cached; hires 2 full / 1 cached"
    assert not torch.equal(plain.samples[0], cached.samples[0])
    assert untouched(sdnext.unet)


def test_sdnext_disabled_is_bit_identical(host, sdnext):
    _, off, fields = generate(host, SdnextTxt2Img, [False, 3, 0])
    p = SdnextTxt2Img(steps=9)
    p.scripts = scripts.ScriptRunner()
    bare = processing.process_images(p)
    assert torch.equal(off.samples[0], bare.samples[0])
    assert "DeepCache" not in fields
    assert untouched(sdnext.unet)


def test_sdnext_compiled_unet_is_reported_and_runs_uncached(host, sdnext):
    sdnext.unet = torch.compile(sdnext.unet, backend="eager")
    _, _, fields = generate(host, SdnextTxt2Img, ON)
    assert "torch.compile" in fields["DeepCache error"]
    assert "DeepCache steps" not in fields


def test_sdnext_ui_uses_a_visible_enable_checkbox(monkeypatch):
    """SD.Next's InputAccordion hides its checkbox (no header script), so the fallback is used."""
    marker = types.ModuleType("modules.processing_diffusers")
    marker.__spec__ = importlib.machinery.ModuleSpec("modules.processing_diffusers", None)
    monkeypatch.setitem(sys.modules, "modules.processing_diffusers", marker)
    r = runner(False)
    script = r.alwayson_scripts[0]
    enabled = r.inputs[script.args_from]
    assert enabled.label == "Enable DeepCache" and enabled.visible is not False
    assert enabled.elem_id == "script_txt2img_deepcache_enabled"


# ----------------------------------------------------------------------------- unknown
class UnknownModel:
    """A model object of none of the three hosts (e.g. a future backend)."""

    context_dim = 32


def sample_without_a_unet(p, c, uc):
    p.scripts.process_before_every_sampling(p, x=c, noise=c, c=c, uc=uc)
    return c


def test_unknown_host_says_so_once_in_console_and_in_every_infotext(host, caplog):
    shared.sd_model = UnknownModel()
    p_class = type("Plain", (processing.Txt2Img,), {"sample": sample_without_a_unet})
    with caplog.at_level(logging.WARNING, logger="deepcache"):
        _, _, first = generate(host, p_class, ON)
        _, _, second = generate(host, p_class, ON)
    assert "unsupported model" in first["DeepCache error"]
    assert first["DeepCache error"] == second["DeepCache error"]
    warnings = [r for r in caplog.records if "unsupported model" in r.getMessage()]
    assert len(warnings) == 1
