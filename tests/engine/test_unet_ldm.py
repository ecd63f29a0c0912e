"""The engine on the real ldm UNetModel: exactness against the paper's rule, under the stock
forward and under a ControlNet-style foreign forward, across the SD families."""

from __future__ import annotations

import pytest
import torch

from lib_deepcache import DeepCacheParams, DeepCacheSession
from lib_deepcache.bench.archs import build_unet, sdpa_attention, unet_config
from tests.support import (
    a1111_cat_resize,
    block_residuals,
    controlnet_like_forward,
    reference_pass,
)

TIMESTEPS = [999.0, 937.5, 875.0, 812.5, 750.0, 687.5, 625.0]
# The uniform schedule over these 7 steps, by hand: interval 2 refreshes at 0, 2, 4, 6 (3 cached
# steps), interval 3 at 0, 3, 6 (4 cached steps).
FULL_STEPS = {2: [0, 2, 4, 6], 3: [0, 3, 6]}


def drive(unet, params, x, context, timesteps=TIMESTEPS):
    """Call the hooked UNet once per step with fixed inputs; returns the outputs and session."""
    outputs = []
    batch = x.shape[0]
    with torch.no_grad(), DeepCacheSession(unet, params, total_steps=len(timesteps)) as session:
        for t in timesteps:
            outputs.append(unet(x, torch.full((batch,), t), context=context))
    return outputs, session


def reference(unet, params, x, context, timesteps=TIMESTEPS, residuals=None, full=None):
    """The same sequence computed by the paper's rule, independently of the engine: the steps
    in ``full`` (default: the hand-written uniform ones of ``FULL_STEPS``) run whole and store
    the deep feature, the others reuse it."""
    depth = params.depth
    full = FULL_STEPS[params.interval] if full is None else full
    outputs, feature = [], None
    batch = x.shape[0]
    with torch.no_grad():
        for step, t in enumerate(timesteps):
            tt = torch.full((batch,), t)
            if step in full:
                out, feature = reference_pass(unet, x, tt, context, depth, None, residuals)
            else:
                out, _ = reference_pass(unet, x, tt, context, depth, feature, residuals)
            outputs.append(out)
    return outputs


def inputs(arch, width, batch=2, size=16, seed=0):
    config = unet_config(arch, width)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, config["in_channels"], size, size, generator=g)
    context = torch.randn(batch, 77, config["context_dim"], generator=g)
    return x, context


@pytest.fixture(scope="module")
def sd15():
    return build_unet("sd15", width=32, seed=0)


@pytest.mark.parametrize("depth", [0, 1, 2, 5, 11])
@pytest.mark.parametrize(("interval", "cached_steps"), [(2, 3), (3, 4)])
def test_cached_calls_follow_the_paper_rule(sd15, interval, cached_steps, depth):
    params = DeepCacheParams(enabled=True, interval=interval, depth=depth)
    x, context = inputs("sd15", 32)
    got, session = drive(sd15, params, x, context)
    want = reference(sd15, params, x, context)
    for step, (g, w) in enumerate(zip(got, want, strict=True)):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5, msg=f"step {step}")
    assert session.stats.cached_steps == cached_steps


def test_cached_call_really_uses_the_cache(sd15):
    params = DeepCacheParams(enabled=True, interval=3, depth=0)
    x, context = inputs("sd15", 32)
    got, _ = drive(sd15, params, x, context)
    with torch.no_grad():
        plain = [sd15(x, torch.full((2,), t), context=context) for t in TIMESTEPS]
    for step, (g, p) in enumerate(zip(got, plain, strict=True)):
        if step in (0, 3, 6):  # interval 3 over 7 steps
            assert torch.equal(g, p)
        else:
            assert (g - p).abs().max() > 1e-3, f"cached step {step} equals a full call"


def test_foreign_forward_with_residuals_matches_the_rule(sd15):
    """ControlNet replaces forward on the instance and adds residuals: skipped levels' residuals
    are dropped on cached steps, live ones applied."""
    params = DeepCacheParams(enabled=True, interval=3, depth=1)
    x, context = inputs("sd15", 32)
    residuals = block_residuals(sd15, x, context, seed=5)
    sd15.forward = controlnet_like_forward(residuals).__get__(sd15)
    try:
        got, session = drive(sd15, params, x, context)
    finally:
        del sd15.forward
    want = reference(sd15, params, x, context, residuals=residuals)
    for step, (g, w) in enumerate(zip(got, want, strict=True)):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5, msg=f"step {step}")
    assert session.stats.cached_passes == 4  # steps 1, 2, 4, 5 of interval 3 over 7
    no_residual = reference(sd15, params, x, context)
    assert (got[1] - no_residual[1]).abs().max() > 1e-3, "live-level residuals were not applied"


@pytest.mark.parametrize(
    ("arch", "batch", "depth"),
    [
        ("sd21", 2, 2),  # v-prediction family: linear attention projections, 64-ch heads
        ("sd15-inpaint", 2, 2),  # 9 input channels
        ("sdxl", 2, 2),  # 9 input / 9 output blocks
        ("sdxl", 2, 8),  # its deepest branch
        ("sd15", 1, 2),
        ("sd15", 8, 2),  # batch 4 with CFG
    ],
)
def test_families_and_batches_follow_the_rule(arch, batch, depth):
    unet = build_unet(arch, width=32, seed=1)
    params = DeepCacheParams(enabled=True, interval=3, depth=depth)
    x, context = inputs(arch, 32, batch=batch)
    got, session = drive(unet, params, x, context)
    want = reference(unet, params, x, context)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
    assert session.stats.cached_passes == 4  # steps 1, 2, 4, 5 of interval 3 over 7


def test_latent_not_a_multiple_of_eight_with_webui_cat():
    unet = build_unet("sd15", width=32, seed=2)
    params = DeepCacheParams(enabled=True, interval=2, depth=3)
    x, context = inputs("sd15", 32, size=13)
    with a1111_cat_resize():
        got, session = drive(unet, params, x, context)
        want = reference(unet, params, x, context)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
    assert got[0].shape[-2:] == (13, 13)
    assert session.stats.cached_passes == 3  # steps 1, 3, 5 of interval 2 over 7


def test_real_sd15_config_cached_calls_follow_the_rule():
    """The full 320-channel SD1.5 UNet (random weights) at a small latent."""
    unet = build_unet("sd15", seed=4)
    x, context = inputs("sd15", None, batch=2, size=16)
    timesteps = TIMESTEPS[:3]
    params = DeepCacheParams(enabled=True, interval=3, depth=0)
    with sdpa_attention():
        with torch.no_grad():
            plain = [unet(x, torch.full((2,), t), context=context) for t in timesteps]
        got, session = drive(unet, params, x, context, timesteps)
        want = reference(unet, params, x, context, timesteps, full=[0])
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4)
    assert session.stats.cached_passes == 2  # interval 3 over 3 steps: only step 0 is full
    assert torch.equal(got[0], plain[0])
    assert (got[1] - plain[1]).abs().max() > 1e-3
