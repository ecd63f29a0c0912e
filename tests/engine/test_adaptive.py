"""The adaptive schedule: refresh when the shallow skip feature says the deep one is stale."""

from __future__ import annotations

import pytest
import torch

from lib_deepcache import DeepCacheParams, DeepCacheSession
from lib_deepcache.engine.params import DeepCacheParamError
from tests.support import make_rig

STEPS = 12


@pytest.fixture(scope="module")
def rig():
    return make_rig("sd15", width=32, seed=31)


def run(rig, params, sampler="euler", **cfg):
    with DeepCacheSession(rig.unet, params, STEPS) as session:
        out, _ = rig.sample(sampler, STEPS, batch=1, **cfg)
    return out, session.stats


def adaptive(threshold, max_cached=4, **kw):
    return DeepCacheParams(
        enabled=True, schedule="adaptive", threshold=threshold, max_cached=max_cached, **kw
    )


def test_threshold_zero_refreshes_every_step_and_is_bit_identical(rig):
    plain, _ = rig.sample("euler", STEPS, batch=1)
    out, stats = run(rig, adaptive(0.0))
    assert torch.equal(out, plain)
    assert stats.cached_steps == 0 and stats.full_steps == STEPS


@pytest.mark.parametrize("k", [1, 2, 4])
def test_infinite_threshold_with_max_cached_k_is_uniform_interval_k_plus_1(rig, k):
    uniform, u_stats = run(rig, DeepCacheParams(enabled=True, interval=k + 1))
    out, a_stats = run(rig, adaptive(float("inf"), max_cached=k))
    assert torch.equal(out, uniform)
    assert (a_stats.full_steps, a_stats.cached_steps) == (u_stats.full_steps, u_stats.cached_steps)


def test_threshold_trades_refreshes_for_speed(rig):
    counts = [run(rig, adaptive(t, max_cached=10))[1].full_steps for t in (0.01, 0.3, 3.0)]
    assert counts[0] >= counts[1] >= counts[2]
    assert counts[0] > counts[2]


def test_window_and_first_step_are_respected(rig):
    _, stats = run(rig, adaptive(float("inf"), max_cached=10, start=0.5))
    # the first half runs fully; in the window nothing forces a refresh within 10 steps
    assert (stats.full_steps, stats.cached_steps) == (STEPS // 2, STEPS // 2)


def test_cond_and_uncond_slots_share_the_steps_decision(rig):
    _, stats = run(rig, adaptive(0.3), split=True)
    assert stats.cached_passes == 2 * stats.cached_steps
    assert stats.full_steps + stats.cached_steps == STEPS


def test_adaptive_params_validate_and_round_trip():
    params = adaptive(0.25, max_cached=5)
    text = params.to_infotext()
    assert text.endswith("adaptive, threshold 0.25, max cached 5")
    assert DeepCacheParams.from_infotext(text) == params
    with pytest.raises(DeepCacheParamError, match="threshold"):
        adaptive(-1.0)
    with pytest.raises(DeepCacheParamError, match="max_cached"):
        adaptive(0.2, max_cached=0)


def replay_adaptive(skips: list[torch.Tensor], threshold: float, max_cached: int) -> list[int]:
    """The README's rule, re-implemented: the full steps, from each step's first-slot skip."""
    full, reference, change, cached_in_a_row = [], None, 0.0, 0
    for step, skip in enumerate(skips):
        if step > 0 and cached_in_a_row < max_cached:
            change += float((skip - reference).abs().mean() / reference.abs().mean())
            if change < threshold:
                cached_in_a_row += 1
                continue
        full.append(step)
        reference, change, cached_in_a_row = skip, 0.0, 0
    return full


@pytest.mark.parametrize("threshold", [0.2, 0.6, 0.8])
def test_refresh_decisions_follow_the_first_slots_skip(rig, threshold):
    """Split CFG: the step's first call (cond) decides, against the cond skip stored at the last
    refresh, never the uncond one; replayed on the skips the run really produced. Depth 1: its
    skip has seen the text through cross-attention; with a negative text far from the prompt
    (8x another draw) the cond and uncond skips differ enough to change decisions."""
    skips: list[torch.Tensor] = []
    handle = rig.unet.input_blocks[1].register_forward_hook(
        lambda module, args, out: skips.append(out.detach().clone())
    )
    try:
        negative = 8 * rig.text(1, 99)
        _, stats = run(rig, adaptive(threshold, max_cached=4, depth=1), split=True, uncond=negative)
    finally:
        handle.remove()
    assert len(skips) == 2 * STEPS
    want = replay_adaptive(skips[::2], threshold, max_cached=4)
    assert 1 < len(want) < STEPS
    assert (stats.full_steps, stats.cached_steps) == (len(want), STEPS - len(want))
