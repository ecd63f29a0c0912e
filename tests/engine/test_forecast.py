"""The forecast: a cached step splices the first-order extrapolation of the last two full steps'
deep features instead of the last one held."""

from __future__ import annotations

import pytest
import torch

from lib_deepcache import DeepCacheParams, DeepCacheSession
from lib_deepcache.bench.archs import build_unet, unet_config
from lib_deepcache.bench.fidelity import FixtureSampler, compare
from tests.support import reference_pass

# Interval 2 over 6 calls at these timesteps: full at steps 0, 2, 4; cached at 1, 3, 5.
TIMESTEPS = [999.0, 850.0, 700.0, 450.0, 300.0, 100.0]
FULL = (0, 2, 4)


def _calls(depth: int = 1):
    unet = build_unet("sd15", width=32, seed=3)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 16, 16, generator=g)
    context = torch.randn(2, 77, unet_config("sd15", 32)["context_dim"], generator=g)
    return unet, x, context


@pytest.mark.parametrize("strength", [1.0, 0.5])
def test_cached_calls_splice_the_extrapolated_feature(strength):
    """Oracle: the paper's rule as a plain loop (tests/support.py) fed with the forecast worked
    out here from the features of the two full steps before: F1 + s (F1 - F0) (t - t1)/(t1 - t0).
    Step 1 has a single full step behind it, so it holds F(0) like plain DeepCache."""
    depth = 1
    unet, x, context = _calls(depth)
    params = DeepCacheParams(True, interval=2, depth=depth, forecast=strength)
    with torch.no_grad():
        outputs = []
        with DeepCacheSession(unet, params, len(TIMESTEPS)) as session:
            for t in TIMESTEPS:
                outputs.append(unet(x, torch.full((2,), t), context=context))
        features: dict[int, torch.Tensor] = {}
        for step, t in enumerate(TIMESTEPS):
            tt = torch.full((2,), t)
            if step in FULL:
                want, features[step] = reference_pass(unet, x, tt, context, depth)
            else:
                f1_step = step - 1
                f1 = features[f1_step]
                if f1_step - 2 in features:
                    t1, t0 = TIMESTEPS[f1_step], TIMESTEPS[f1_step - 2]
                    f0 = features[f1_step - 2]
                    f1 = f1 + strength * (f1 - f0) * (t - t1) / (t1 - t0)
                want, _ = reference_pass(unet, x, tt, context, depth, f1)
            torch.testing.assert_close(outputs[step], want, rtol=1e-5, atol=1e-5)
    assert (session.stats.full_steps, session.stats.cached_steps) == (3, 3)


def test_strength_zero_is_plain_deepcache_bit_for_bit():
    unet, x, context = _calls()
    runs = []
    for params in (DeepCacheParams(True, 2, 1), DeepCacheParams(True, 2, 1, forecast=0.0)):
        with torch.no_grad(), DeepCacheSession(unet, params, len(TIMESTEPS)):
            runs.append([unet(x, torch.full((2,), t), context=context) for t in TIMESTEPS])
    assert all(torch.equal(a, b) for a, b in zip(*runs, strict=True))


def test_forecasting_keeps_exactly_one_extra_feature_per_slot():
    """Two slots (cond and uncond sent apart): after three full steps plain DeepCache holds 2
    features, the forecast 4 (each slot's last two), never more."""
    unet, x, context = _calls()
    held = {}
    for forecast in (0.0, 1.0):
        params = DeepCacheParams(True, 2, 1, forecast=forecast)
        with torch.no_grad(), DeepCacheSession(unet, params, len(TIMESTEPS)) as session:
            for t in TIMESTEPS:
                for half in (slice(0, 1), slice(1, 2)):
                    unet(x[half], torch.full((1,), t), context=context[half])
            held[forecast] = (len(session.cached_tensors), session.cache_nbytes)
    one = held[0.0][1] // 2
    assert held == {0.0: (2, 2 * one), 1.0: (4, 4 * one)}


def test_the_forecast_is_closer_to_the_uncached_image_on_the_trained_fixture():
    """Euler, 30 steps, interval 3, 8 seeds on the trained fixture: the forecast's samples are
    closer to the uncached ones than plain DeepCache's (the study in docs/quality.md has the
    full table); step counts, and so FLOPs, are the same."""
    sampler = FixtureSampler()
    seeds = list(range(8))
    reference, _ = sampler.sample(seeds, 30, "euler")
    hold, hold_stats = sampler.sample(seeds, 30, "euler", DeepCacheParams(True, 3, 0))
    ahead, ahead_stats = sampler.sample(seeds, 30, "euler", DeepCacheParams(True, 3, 0, forecast=1))
    assert (ahead_stats.full_steps, ahead_stats.cached_steps) == (10, 20)
    assert (hold_stats.full_steps, hold_stats.cached_steps) == (10, 20)
    assert compare(reference, ahead).psnr > compare(reference, hold).psnr + 3.0
