"""What no real host in tests/e2e covers yet, on the Forge and SD.Next stand-ins
(tests/webui_host/modules/forge_standin.py, sdnext_standin.py): Forge's ControlNet/T2I residual
pops beside DeepCache (until the real-host ControlNet scenarios), a torch.compile'd SD.Next UNet,
and a host the extension does not know. Everything else runs in the real hosts (tests/e2e)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest
import torch

HOST = Path(__file__).resolve().parents[1] / "webui_host"
sys.path.insert(0, str(HOST))

from modules import errors, processing, scripts, shared  # noqa: E402
from modules.forge_standin import ForgeModel, ForgeTxt2Img  # noqa: E402
from modules.infotext_utils import parse_generation_parameters  # noqa: E402
from modules.sdnext_standin import DiffusersPipeline, SdnextTxt2Img  # noqa: E402
from webui import boot, defaults, runner  # noqa: E402

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


# ----------------------------------------------------------------------------- Forge
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


def test_sdnext_compiled_unet_is_reported_and_runs_uncached(host, sdnext):
    sdnext.unet = torch.compile(sdnext.unet, backend="eager")
    _, _, fields = generate(host, SdnextTxt2Img, ON)
    assert "torch.compile" in fields["DeepCache error"]
    assert "DeepCache steps" not in fields


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
