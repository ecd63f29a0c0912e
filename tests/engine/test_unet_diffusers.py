"""The engine on diffusers ``UNet2DConditionModel``s (SD.Next's UNet), against the authors' own
``DeepCacheSDHelper`` (the ``deepcache`` package) step for step.

The helper runs inside a real diffusers scheduler loop on a seeded UNet; so does the engine, in a
separate run from the same noise. Uniform interval N and branch b in the helper are interval N
and depth b here.
"""

from __future__ import annotations

import types

import pytest
import torch
from DeepCache import DeepCacheSDHelper
from diffusers import DDIMScheduler

from lib_deepcache import DeepCacheParams, DeepCacheSession
from lib_deepcache.bench.archs import build_diffusers_unet
from lib_deepcache.bench.harness import diffusers_kwargs

WIDTH = 32
STEPS = 10


@pytest.fixture(scope="module")
def sd15():
    return build_diffusers_unet("sd15", width=WIDTH, seed=3)


@pytest.fixture(scope="module")
def sdxl():
    return build_diffusers_unet("sdxl", width=WIDTH, seed=4)


def conditioning(unet, batch: int, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    text = torch.randn(batch, 7, unet.config.cross_attention_dim, generator=generator)
    return diffusers_kwargs(unet, text)


def denoise(unet, steps=STEPS, size=16, seed=0, cfg=True, extra=None) -> list[torch.Tensor]:
    """A diffusers sampling loop (DDIM, CFG batched as the pipelines do); returns every UNet
    output. ``extra`` adds keyword arguments (ControlNet residuals) to each call."""
    scheduler = DDIMScheduler(num_train_timesteps=1000)
    scheduler.set_timesteps(steps)
    loop = types.SimpleNamespace(unet=unet, scheduler=scheduler)
    denoise.loop = loop
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 4, size, size, generator=generator)
    batch = 2 if cfg else 1
    kwargs = conditioning(unet, batch, seed)
    outputs = []
    with torch.no_grad():
        for t in scheduler.timesteps:
            model_input = torch.cat([x] * batch)
            eps = unet(model_input, t, **kwargs, **(extra or {}), return_dict=False)[0]
            outputs.append(eps)
            if cfg:
                uncond, cond = eps.chunk(2)
                eps = uncond + 5.0 * (cond - uncond)
            x = scheduler.step(eps, t, x).prev_sample
    return outputs


def with_helper(unet, interval: int, branch: int, **kwargs) -> list[torch.Tensor]:
    scheduler = DDIMScheduler(num_train_timesteps=1000)
    scheduler.set_timesteps(kwargs.get("steps", STEPS))
    helper = DeepCacheSDHelper(pipe=types.SimpleNamespace(unet=unet, scheduler=scheduler))
    helper.set_params(cache_interval=interval, cache_branch_id=branch)
    helper.enable()
    try:
        return denoise(unet, **kwargs)
    finally:
        helper.disable()


def with_engine(unet, params: DeepCacheParams, steps=STEPS, **kwargs):
    with DeepCacheSession(unet, params, total_steps=steps) as session:
        outputs = denoise(unet, steps=steps, **kwargs)
    return outputs, session.stats


@pytest.mark.parametrize(
    ("interval", "depth", "full_steps"),
    # 10 steps: interval 2 refreshes at 0, 2, 4, 6, 8; 3 at 0, 3, 6, 9; 5 at 0, 5; 4 at 0, 4, 8
    [(2, 0, 5), (3, 0, 4), (3, 1, 4), (3, 2, 4), (5, 3, 2), (4, 5, 3)],
)
def test_matches_the_authors_helper_step_for_step(sd15, interval, depth, full_steps):
    reference = with_helper(sd15, interval, depth)
    ours, stats = with_engine(sd15, DeepCacheParams(True, interval, depth))
    assert (stats.full_steps, stats.cached_steps) == (full_steps, STEPS - full_steps)
    for step, (a, b) in enumerate(zip(ours, reference, strict=True)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=f"step {step}")


def test_matches_the_helper_with_controlnet_residuals(sd15):
    """diffusers adds ControlNet residuals to every skip and to the middle output: the live skip
    keeps its residual, the skipped levels' residuals land on placeholders and are dropped."""
    generator = torch.Generator().manual_seed(9)
    channels = [32, 32, 32, 32, 64, 64, 64, 128, 128, 128, 128, 128]
    sizes = [16, 16, 16, 8, 8, 8, 4, 4, 4, 2, 2, 2]
    # one residual per skip diffusers keeps: conv_in, then each down block's resnets and
    # downsampler, counted on the UNet itself
    skips = 1 + sum(len(b.resnets) + len(b.downsamplers or []) for b in sd15.down_blocks)
    assert len(channels) == skips
    residuals = {
        "down_block_additional_residuals": tuple(
            torch.randn(2, c, s, s, generator=generator) * 0.1
            for c, s in zip(channels, sizes, strict=True)
        ),
        "mid_block_additional_residual": torch.randn(2, 128, 2, 2, generator=generator) * 0.1,
    }
    reference = with_helper(sd15, 3, 1, extra=residuals)
    ours, _ = with_engine(sd15, DeepCacheParams(True, 3, 1), extra=residuals)
    for a, b in zip(ours, reference, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_freeu_reaches_cached_steps_through_the_stored_feature():
    """diffusers' FreeU (what SD.Next's FreeU option turns on, ``enable_freeu``) scales the first
    two up blocks, which a cached step at depth 0 skips: DeepCache at interval 1 is FreeU alone
    step for step; at interval 3 the outputs are FreeU's on the full steps and those of a run
    whose FreeU is off on every cached step, exactly (FreeU acts there through the stored
    feature only); and FreeU changes DeepCache's outputs."""
    unet = build_diffusers_unet("sd15", width=WIDTH, seed=3)
    freeu = {"s1": 0.9, "s2": 0.2, "b1": 1.5, "b2": 1.6}
    plain = denoise(unet)
    alone, _ = with_engine(unet, DeepCacheParams(True, 3, 0))
    unet.enable_freeu(**freeu)
    with_freeu = denoise(unet)
    every_step, _ = with_engine(unet, DeepCacheParams(True, 1, 0))
    both, stats = with_engine(unet, DeepCacheParams(True, 3, 0))
    full = {0, 3, 6, 9}  # interval 3 over 10 steps (worked by hand)
    assert (stats.full_steps, stats.cached_steps) == (len(full), STEPS - len(full))
    calls = []

    def freeu_on_full_steps_only(module, args):
        if len(calls) in full:
            unet.enable_freeu(**freeu)
        else:
            unet.disable_freeu()
        calls.append(1)

    hook = unet.register_forward_pre_hook(freeu_on_full_steps_only)
    try:
        off_when_cached, _ = with_engine(unet, DeepCacheParams(True, 3, 0))
    finally:
        hook.remove()
        unet.disable_freeu()
    assert not torch.equal(plain[-1], with_freeu[-1]), "FreeU changed nothing"
    for step in range(STEPS):
        assert torch.equal(every_step[step], with_freeu[step]), step
        assert torch.equal(both[step], off_when_cached[step]), step
    assert torch.equal(both[0], with_freeu[0])
    assert not torch.equal(both[-1], alone[-1])


@pytest.mark.parametrize("depth", [0, 2, 4, 8])
def test_sdxl_shape_matches_the_authors_helper(sdxl, depth):
    """Three units per SDXL down block too, so branch = block * 3 + layer still holds."""
    reference = with_helper(sdxl, 3, depth, steps=6)
    ours, stats = with_engine(sdxl, DeepCacheParams(True, 3, depth), steps=6)
    assert (stats.full_steps, stats.cached_steps) == (2, 4)
    for a, b in zip(ours, reference, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("params", "full_steps"),
    [
        # 20%..80% of 12 steps: window 3..9 (2.4 rounds up to 3, 9.6 to 10, exclusive);
        # full outside it (0, 1, 2, 10, 11) and at window offsets 0, 3, 6 (3, 6, 9): 8 full
        (DeepCacheParams(True, 3, 0, start=0.2, end=0.8), 8),
        # as many refreshes as uniform interval 5 over 12 (0, 5, 10): 3 full
        (DeepCacheParams(True, 5, 1, schedule="non-uniform"), 3),
    ],
    ids=["window", "non-uniform"],
)
def test_window_and_non_uniform_schedules_run_the_planned_full_steps(sd15, params, full_steps):
    steps = 12
    calls = []
    handle = sd15.mid_block.resnets[0].register_forward_hook(lambda *a: calls.append(1))
    try:
        _, stats = with_engine(sd15, params, steps=steps, cfg=False)
    finally:
        handle.remove()
    assert stats.full_steps == full_steps == len(calls)
    assert stats.cached_steps == steps - full_steps
