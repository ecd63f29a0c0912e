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
from torch.utils.flop_counter import FlopCounterMode

from lib_deepcache import DeepCacheParams, DeepCacheSession
from lib_deepcache.bench.archs import build_diffusers_unet
from lib_deepcache.bench.harness import diffusers_kwargs
from lib_deepcache.engine import schedule as schedule_lib
from lib_deepcache.engine.flops import count_unit_flops
from lib_deepcache.engine.unets import layout_of

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


@pytest.mark.parametrize(("interval", "depth"), [(2, 0), (3, 0), (3, 1), (3, 2), (5, 3), (4, 5)])
def test_matches_the_authors_helper_step_for_step(sd15, interval, depth):
    reference = with_helper(sd15, interval, depth)
    ours, stats = with_engine(sd15, DeepCacheParams(True, interval, depth))
    assert stats.cached_steps > 0
    assert stats.full_steps == len(range(0, STEPS, interval))
    for step, (a, b) in enumerate(zip(ours, reference, strict=True)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=f"step {step}")


def test_matches_the_helper_with_controlnet_residuals(sd15):
    """diffusers adds ControlNet residuals to every skip and to the middle output: the live skip
    keeps its residual, the skipped levels' residuals land on placeholders and are dropped."""
    generator = torch.Generator().manual_seed(9)
    layout = layout_of(sd15)
    channels = [32, 32, 32, 32, 64, 64, 64, 128, 128, 128, 128, 128]
    sizes = [16, 16, 16, 8, 8, 8, 4, 4, 4, 2, 2, 2]
    assert len(channels) == layout.num_blocks
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


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_interval_one_is_bit_identical(request, arch):
    unet = request.getfixturevalue(arch)
    plain = denoise(unet, steps=4)
    ours, stats = with_engine(unet, DeepCacheParams(True, 1, 0), steps=4)
    assert stats.full_steps == 4 and stats.cached_steps == 0
    for a, b in zip(ours, plain, strict=True):
        assert torch.equal(a, b)


def test_sdxl_shape_caches_and_clamps_depth(sdxl):
    assert layout_of(sdxl).num_blocks == 9
    session = DeepCacheSession(sdxl, DeepCacheParams(True, 3, 11), total_steps=6)
    assert session.depth == 8


@pytest.mark.parametrize("depth", [0, 2, 4, 8])
def test_sdxl_shape_matches_the_authors_helper(sdxl, depth):
    """Three units per SDXL down block too, so branch = block * 3 + layer still holds."""
    reference = with_helper(sdxl, 3, depth, steps=6)
    ours, stats = with_engine(sdxl, DeepCacheParams(True, 3, depth), steps=6)
    assert (stats.full_steps, stats.cached_steps) == (2, 4)
    for a, b in zip(ours, reference, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "params",
    [
        DeepCacheParams(True, 3, 0, start=0.2, end=0.8),
        DeepCacheParams(True, 5, 1, schedule="non-uniform"),
    ],
    ids=["window", "non-uniform"],
)
def test_window_and_non_uniform_schedules_run_the_planned_full_steps(sd15, params):
    steps = 12
    calls = []
    handle = sd15.mid_block.resnets[0].register_forward_hook(lambda *a: calls.append(1))
    try:
        _, stats = with_engine(sd15, params, steps=steps, cfg=False)
    finally:
        handle.remove()
    planned = schedule_lib.full_steps(params, steps)
    assert stats.full_steps == len(planned) == len(calls)
    assert stats.cached_steps == steps - len(planned)


def test_adaptive_extremes_on_diffusers(sd15):
    plain = denoise(sd15, steps=6)
    never, _ = with_engine(
        sd15, DeepCacheParams(True, 3, 0, schedule="adaptive", threshold=0.0), steps=6
    )
    for a, b in zip(never, plain, strict=True):
        assert torch.equal(a, b)
    capped, stats = with_engine(
        sd15,
        DeepCacheParams(True, 3, 0, schedule="adaptive", threshold=float("inf"), max_cached=2),
        steps=6,
    )
    uniform, _ = with_engine(sd15, DeepCacheParams(True, 3, 0), steps=6)
    assert (stats.full_steps, stats.cached_steps) == (2, 4)
    for a, b in zip(capped, uniform, strict=True):
        assert torch.equal(a, b)


def test_unet_is_restored_after_the_session():
    unet = build_diffusers_unet("sd15", width=WIDTH, seed=5)
    with_engine(unet, DeepCacheParams(True, 3, 0), steps=3)
    assert all("forward" not in m.__dict__ for m in unet.modules())
    assert not any(m._forward_pre_hooks for m in unet.modules())


# ----------------------------------------------------------------------------- FLOPs
def _count(fn) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


@pytest.mark.parametrize(
    ("arch", "size", "expected"),
    [("sd15", 64, [0.0787, 0.224, 0.380]), ("sdxl", 128, [0.0145, 0.0378, 0.0661])],
)
def test_cached_step_costs_the_shallow_share_at_full_size(arch, size, expected):
    """Real-size configs on ``meta``; the SD1.5 and SDXL shares match the ldm measurements."""
    unet = build_diffusers_unet(arch, device="meta")
    x = torch.empty(2, 4, size, size, device="meta")
    t = torch.empty(2, device="meta")
    context = torch.empty(2, 77, unet.config.cross_attention_dim, device="meta")
    kwargs = diffusers_kwargs(unet, context)
    counted = count_unit_flops(unet, (x, t), kwargs)
    shares = [counted.shallow_share(d) for d in range(3)]
    assert shares == pytest.approx(expected, abs=0.003)
    for depth in range(3):
        params = DeepCacheParams(True, 2, depth)
        with torch.no_grad(), DeepCacheSession(unet, params, total_steps=2) as session:
            session.set_step(0)
            full = _count(lambda: unet(x, t, **kwargs))
            session.set_step(1)
            cached = _count(lambda: unet(x, t, **kwargs))
        assert cached / full == pytest.approx(shares[depth], rel=1e-6)
