"""The engine under real k-diffusion sampling loops: step counting, call slots, batch changes,
errors and interrupts."""

from __future__ import annotations

import contextlib
import logging

import pytest
import torch

from lib_deepcache import DeepCacheParams, DeepCacheSession
from lib_deepcache.bench.archs import sdpa_attention
from tests.support import (
    SAMPLERS,
    assert_same_fingerprint,
    block_residuals,
    controlnet_like_forward,
    make_rig,
    record_unet_calls,
    reference_pass,
    unet_fingerprint,
)

STEPS = 9
PARAMS = DeepCacheParams(enabled=True, interval=3, depth=1)
FULL = [0, 3, 6]  # interval 3 over 9 steps, by hand: 3 full / 6 cached


@pytest.fixture(scope="module")
def rig():
    return make_rig("sd15", width=32, seed=11)


@pytest.mark.parametrize(
    ("sampler", "use_grid", "want_full"),
    [
        ("euler", False, FULL),
        ("dpmpp_2m", False, FULL),
        # Heun's correction at sigma_1 joins step 1 as its first call; step 1's own evaluation
        # is then the first pass ever in its slot, finds nothing stored and runs fully
        ("heun", False, [0, 1, 3, 6]),
        ("dpmpp_sde", True, FULL),
        ("dpm_2", True, FULL),
    ],
)
def test_full_steps_match_the_schedule(rig, sampler, use_grid, want_full):
    sigmas = rig.sigmas(STEPS)
    grid = rig.timestep_grid(sigmas) if use_grid else None
    plain, _ = rig.sample(sampler, STEPS, batch=1, sigmas=sigmas)
    with DeepCacheSession(rig.unet, PARAMS, STEPS, timestep_grid=grid) as session:
        cached, _ = rig.sample(sampler, STEPS, batch=1, sigmas=sigmas)
    stats = session.stats
    assert stats.full_steps == len(want_full)
    assert stats.full_steps + stats.cached_steps == STEPS
    assert stats.steps_beyond_total == 0
    assert stats.cached_passes > 0
    assert torch.isfinite(cached).all()
    assert not torch.equal(cached, plain)


@pytest.mark.parametrize(
    ("arch", "width", "sampler", "controlnet"),
    [
        pytest.param("sd15", 32, "dpmpp_2m", False, id="ldm-dpmpp_2m"),
        pytest.param("sd15", 32, "heun", False, id="ldm-heun"),  # two UNet calls a step
        # under a ControlNet-style foreign forward that adds residuals
        pytest.param("sd15", 32, "euler", True, id="ldm-controlnet"),
        pytest.param("sd15", None, "euler", False, id="ldm-sd15-full-size"),  # 320 channels
        pytest.param("sdxl", 32, "euler", False, id="ldm-sdxl"),
        pytest.param("diffusers-sd15", 32, "euler", False, id="diffusers-sd15"),
        pytest.param("diffusers-sdxl", 32, "dpmpp_2m", False, id="diffusers-sdxl"),
    ],
)
def test_interval_one_is_bit_identical_to_the_unhooked_unet(arch, width, sampler, controlnet):
    """Interval 1 refreshes every step: the hooked UNet must give the very same samples, with
    every step counted full and no pass served from the cache."""
    steps = 3 if width is None else 4
    rig = make_rig(arch, width=width, seed=5)
    if controlnet:
        residuals = block_residuals(rig.unet, torch.randn(2, 4, 16, 16), rig.text(2, 0), seed=6)
        rig.unet.forward = controlnet_like_forward(residuals).__get__(rig.unet)
    # the full-size UNet runs its attention through SDPA, as the WebUI does (ldm's einsum is slow)
    with sdpa_attention() if width is None else contextlib.nullcontext():
        plain, _ = rig.sample(sampler, steps, batch=1)
        with DeepCacheSession(
            rig.unet, DeepCacheParams(enabled=True, interval=1), steps
        ) as session:
            hooked, _ = rig.sample(sampler, steps, batch=1)
    assert torch.equal(plain, hooked)
    assert (session.stats.full_steps, session.stats.cached_steps) == (steps, 0)
    assert session.stats.cached_passes == 0


def test_midpoint_sampler_without_grid_warns_and_stays_safe(rig, caplog):
    """Without the grid a DPM++ SDE midpoint looks like a step: the overflow must be reported,
    and the extra steps run fully rather than on a stale feature."""
    with caplog.at_level(logging.WARNING, logger="deepcache"):
        with DeepCacheSession(rig.unet, PARAMS, STEPS) as session:
            rig.sample("dpmpp_sde", STEPS, batch=1)
    assert session.stats.steps_beyond_total > 0
    assert "timestep grid" in caplog.text


def test_second_order_calls_of_one_step_share_the_decision(rig):
    """Heun evaluates twice per step; both land in one step, never advancing the clock twice."""
    with DeepCacheSession(rig.unet, PARAMS, STEPS) as session:
        _, guide = rig.sample("heun", STEPS, batch=1)
    assert len(guide.sigmas_seen) == 2 * STEPS - 1
    stats = session.stats
    assert stats.full_steps + stats.cached_steps == STEPS
    passes = stats.full_passes + stats.cached_passes + stats.miss_passes
    assert passes == len(guide.sigmas_seen)


def sample_recorded(rig, params, steps, **cfg):
    """Euler sampling in a session, with every UNet call recorded."""
    calls, remove = record_unet_calls(rig.unet)
    try:
        with DeepCacheSession(rig.unet, params, steps) as session:
            out, _ = rig.sample("euler", steps, **cfg)
    finally:
        remove()
    return calls, session, out


def assert_outputs(calls, want) -> None:
    for i, (call, w) in enumerate(zip(calls, want, strict=True)):
        torch.testing.assert_close(call.out, w, rtol=1e-5, atol=1e-5, msg=f"call {i}")


def replay(unet, calls, steps_of_calls, params, full_steps):
    """Reference cache semantics: one feature per (slot within step, batch size). A call runs
    fully on a step in ``full_steps`` (hand-written by each test) or when its slot holds no
    feature of its batch size; otherwise it reuses that feature."""
    outputs, store = [], {}
    previous_step, slot = None, 0
    for call, step in zip(calls, steps_of_calls, strict=True):
        slot = slot + 1 if step == previous_step else 0
        previous_step = step
        key = (slot, call.x.shape[0])
        with torch.no_grad():
            if step in full_steps or key not in store:
                out, store[key] = reference_pass(unet, call.x, call.t, call.context, params.depth)
            else:
                out, _ = reference_pass(
                    unet, call.x, call.t, call.context, params.depth, store[key]
                )
        outputs.append(out)
    return outputs


def test_uncond_never_reads_cond_cache(rig):
    """Split CFG: cond and uncond are separate calls of one step; each reuses its own feature."""
    calls, session, _ = sample_recorded(rig, PARAMS, STEPS, batch=1, split=True)
    assert len(calls) == 2 * STEPS
    steps = [i // 2 for i in range(len(calls))]
    want = replay(rig.unet, calls, steps, PARAMS, FULL)
    assert_outputs(calls, want)
    # The test can tell: the uncond call of a cached step computed with the cond feature differs.
    cond_full, uncond_cached = calls[0], calls[3]
    with torch.no_grad():
        _, cond_feature = reference_pass(
            rig.unet, cond_full.x, cond_full.t, cond_full.context, PARAMS.depth
        )
        mixed, _ = reference_pass(
            rig.unet, uncond_cached.x, uncond_cached.t, uncond_cached.context, 1, cond_feature
        )
    assert (mixed - uncond_cached.out).abs().max() > 1e-3
    assert session.stats.cached_passes == 2 * session.stats.cached_steps


def test_batch_shrink_mid_run_refreshes_instead_of_mixing(rig):
    """The WebUI drops uncond rows below a sigma: the batch halves mid-run. The first call at
    the new shape runs fully; later cached calls use the new shape's own feature."""
    sigmas = rig.sigmas(STEPS)
    threshold = float(sigmas[4]) + 1e-3
    calls, session, out = sample_recorded(
        rig, PARAMS, STEPS, batch=2, sigmas=sigmas, uncond_below=threshold
    )
    assert torch.isfinite(out).all()
    assert [c.x.shape[0] for c in calls] == [4] * 4 + [2] * 5
    assert session.stats.miss_passes == 1  # step 4 would be cached but has no batch-2 feature
    want = replay(rig.unet, calls, list(range(STEPS)), PARAMS, FULL)
    assert_outputs(calls, want)


def test_ngms_alternating_batch_reuses_each_shapes_own_feature(rig):
    """A1111's NGMS drops the uncond rows on every other step (batch 2, 1, 2, 1, ...). With one
    entry per slot every cached step missed; each shape now keeps its own entry. Hand-worked,
    interval 3 over 12 Euler steps (B = one row on odd steps): full by schedule 0, 3, 6, 9;
    step 1 (B) has no B feature yet and step 4/7/10 find only a feature older than the last
    full step, so those run fully; steps 2, 5, 8, 11 reuse a feature of their own shape."""
    steps, params = 12, DeepCacheParams(enabled=True, interval=3, depth=1)
    calls, session, _ = sample_recorded(rig, params, steps, batch=1, uncond_every_other=True)
    assert [c.x.shape[0] for c in calls] == [2, 1] * 6
    assert (session.stats.full_steps, session.stats.cached_steps) == (8, 4)
    assert session.stats.cached_passes == 4
    full = [0, 1, 3, 4, 6, 7, 9, 10]
    want = replay(rig.unet, calls, list(range(steps)), params, full)
    assert_outputs(calls, want)


def test_steps_whose_every_pass_missed_count_as_full_and_change_nothing(rig):
    """Honest counts: at interval 2 under NGMS every cached step finds only a feature of the
    other shape or an older one, so it runs the whole UNet: the image is the plain image, bit
    for bit, and the counts say 12 full / 0 cached (they used to say 6 / 6)."""
    steps, params = 12, DeepCacheParams(enabled=True, interval=2, depth=0)
    plain, _ = rig.sample("euler", steps, batch=1, uncond_every_other=True)
    with DeepCacheSession(rig.unet, params, steps) as session:
        cached, _ = rig.sample("euler", steps, batch=1, uncond_every_other=True)
    assert torch.equal(cached, plain)
    assert (session.stats.full_steps, session.stats.cached_steps) == (12, 0)
    assert session.stats.miss_passes == 6


def test_timestep_going_up_starts_a_fresh_cache(rig):
    """A second pass (hires fix, Restart sampler) in one session starts again at a full step."""
    sigmas = rig.sigmas(4)
    calls, remove = record_unet_calls(rig.unet)
    try:
        with DeepCacheSession(rig.unet, DeepCacheParams(enabled=True, interval=2), 4) as session:
            rig.sample("euler", 4, batch=1, sigmas=sigmas)
            rig.sample("euler", 4, batch=1, sigmas=sigmas, seed=1)
    finally:
        remove()
    assert session.stats.restarts == 1
    assert session.stats.full_steps == 4 and session.stats.cached_steps == 4
    restart = calls[4]
    with torch.no_grad():
        full = rig.unet(restart.x, restart.t, context=restart.context)
    assert torch.equal(restart.out, full)


def test_a_restart_clears_every_stored_shape(rig):
    """A feature stored in the pass before a restart is never served after it. Under NGMS
    (batch 2, 1, 2, 1), interval 2 over 4 steps, each pass runs: step 0 full (2 rows); step 1
    (1 row) finds no 1-row feature of this pass and runs whole; step 2 full; step 3 finds only
    step 1's 1-row feature, older than the last full step, and runs whole: 8 full / 0 cached.
    Had the restart kept the first pass's features, the second pass's step 1 would reuse the
    first pass's step-3 feature (stored after that pass's last full step)."""
    params = DeepCacheParams(enabled=True, interval=2, depth=1)
    with DeepCacheSession(rig.unet, params, 4) as session:
        rig.sample("euler", 4, batch=1, uncond_every_other=True)
        rig.sample("euler", 4, batch=1, seed=1, uncond_every_other=True)
    assert session.stats.restarts == 1
    assert (session.stats.full_steps, session.stats.cached_steps) == (8, 0)


def test_calls_past_the_slot_bound_are_never_stored(rig):
    """A host that calls the UNet 40 times in one step: only the first 32 calls (the bound)
    keep a feature, so memory stays bounded; on the next, cached step the first 32 reuse
    theirs and the other 8 find none and run whole."""
    unet, slots = rig.unet, 40
    x, context = torch.randn(1, 4, 8, 8), rig.text(1, 0)
    with DeepCacheSession(unet, DeepCacheParams(enabled=True, interval=2), 2) as session:
        with torch.no_grad():
            for t in (999.0, 500.0):
                for _ in range(slots):
                    unet(x, torch.tensor([t]), context=context)
                if t == 999.0:
                    stored = len(session.cached_tensors)
    assert stored == 32
    assert session.stats.miss_passes == 8
    assert session.stats.cached_passes == 32


def _raise_in_block(unet, after_calls, exc):
    block = unet.output_blocks[len(unet.output_blocks) - 1][0]
    original = block.forward
    count = [0]

    def failing(*args, **kwargs):
        count[0] += 1
        if count[0] > after_calls:
            raise exc
        return original(*args, **kwargs)

    block.forward = failing
    return lambda: block.__dict__.pop("forward")


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()])
def test_unet_is_restored_after_an_error_inside_a_block(rig, exc):
    before = unet_fingerprint(rig.unet)
    plain, _ = rig.sample("euler", 5, batch=1)
    undo = _raise_in_block(rig.unet, after_calls=3, exc=exc)
    try:
        with pytest.raises(type(exc)), DeepCacheSession(rig.unet, PARAMS, 5) as session:
            rig.sample("euler", 5, batch=1)
    finally:
        undo()
    assert not session.active
    assert session.cached_tensors == []
    assert_same_fingerprint(before, unet_fingerprint(rig.unet))
    again, _ = rig.sample("euler", 5, batch=1)
    assert torch.equal(plain, again)


def test_unet_is_restored_after_keyboard_interrupt_from_the_sampler(rig):
    before = unet_fingerprint(rig.unet)
    sigmas = rig.sigmas(STEPS)
    x = torch.randn(1, 4, 16, 16) * sigmas[0]
    from tests.support import CFGDenoiser

    guide = CFGDenoiser(rig.denoiser, rig.text(1, 1), rig.text(1, 2))

    def interrupt(info):
        if info["i"] == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt), DeepCacheSession(rig.unet, PARAMS, STEPS):
        with torch.no_grad():
            SAMPLERS["dpmpp_2m"](guide, x, sigmas, callback=interrupt, disable=True)
    assert_same_fingerprint(before, unet_fingerprint(rig.unet))
