"""The adaptive schedule: refresh when the shallow skip feature says the deep one is stale."""

from __future__ import annotations

import pytest
import torch

from lib_deepcache import DeepCacheParams, DeepCacheSession
from tests.support import make_rig

STEPS = 12


@pytest.fixture(scope="module")
def rig():
    return make_rig("sd15", width=32, seed=31)


@pytest.fixture(scope="module")
def diffusers_rig():
    """A diffusers UNet (SD.Next's) sampled the same way."""
    return make_rig("diffusers-sd15", width=32, seed=31)


RIG_OF_ARCH = {"sd15": "rig", "diffusers-sd15": "diffusers_rig"}


def run(rig, params, sampler="euler", **cfg):
    with DeepCacheSession(rig.unet, params, STEPS) as session:
        out, _ = rig.sample(sampler, STEPS, batch=1, **cfg)
    return out, session.stats


def adaptive(threshold, max_cached=4, **kw):
    return DeepCacheParams(
        enabled=True, schedule="adaptive", threshold=threshold, max_cached=max_cached, **kw
    )


@pytest.mark.parametrize("arch", RIG_OF_ARCH)
def test_threshold_zero_refreshes_every_step_and_is_bit_identical(request, arch):
    rig = request.getfixturevalue(RIG_OF_ARCH[arch])
    plain, _ = rig.sample("euler", STEPS, batch=1)
    out, stats = run(rig, adaptive(0.0))
    assert torch.equal(out, plain)
    assert stats.cached_steps == 0 and stats.full_steps == STEPS


@pytest.mark.parametrize(
    ("arch", "k", "counts"),
    [
        # 12 steps at uniform interval k + 1: k=1 full 0, 2, ..., 10; k=2 full 0, 3, 6, 9;
        # k=4 full 0, 5, 10
        ("sd15", 1, (6, 6)),
        ("sd15", 2, (4, 8)),
        ("sd15", 4, (3, 9)),
        ("diffusers-sd15", 2, (4, 8)),
    ],
)
def test_infinite_threshold_with_max_cached_k_is_uniform_interval_k_plus_1(
    request, arch, k, counts
):
    rig = request.getfixturevalue(RIG_OF_ARCH[arch])
    uniform, u_stats = run(rig, DeepCacheParams(enabled=True, interval=k + 1))
    out, a_stats = run(rig, adaptive(float("inf"), max_cached=k))
    assert torch.equal(out, uniform)
    assert (a_stats.full_steps, a_stats.cached_steps) == counts
    assert (u_stats.full_steps, u_stats.cached_steps) == counts


def test_threshold_trades_refreshes_for_speed(rig):
    counts = [run(rig, adaptive(t, max_cached=10))[1].full_steps for t in (0.01, 0.3, 3.0)]
    assert counts[0] >= counts[1] >= counts[2]
    assert counts[0] > counts[2]


def test_window_and_first_step_are_respected(rig):
    _, stats = run(rig, adaptive(float("inf"), max_cached=10, start=0.5))
    # start 50% of 12: steps 0-5 run fully; in the window (6-11) an infinite threshold never
    # refreshes and 6 cached steps stay under max_cached 10: 6 full / 6 cached
    assert (stats.full_steps, stats.cached_steps) == (6, 6)


def test_cond_and_uncond_slots_share_the_steps_decision(rig):
    _, stats = run(rig, adaptive(0.3), split=True)
    assert stats.cached_passes == 2 * stats.cached_steps
    assert stats.full_steps + stats.cached_steps == STEPS


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
