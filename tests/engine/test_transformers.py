"""DeepCache on diffusion transformers (diffusers Flux, SD3, Chroma: the classes SD.Next runs),
checked call for call against the residual rule re-implemented in tests/dit_support.py."""

from __future__ import annotations

import math

import pytest
import torch

from lib_deepcache import DeepCacheParams, DeepCacheSession
from lib_deepcache.engine.denoisers import layout_of
from lib_deepcache.engine.layout import UnsupportedUNetError
from tests.dit_support import (
    ReferenceRule,
    call,
    euler,
    prompts,
    small_chroma,
    small_flux,
    small_sd3,
)

BUILDERS = {"flux": small_flux, "sd3": small_sd3, "chroma": small_chroma}


def reference_outputs(model, steps, conds, depth, full_steps):
    """Every call's output under the rule, each call slot with its own stored residuals."""
    rule = ReferenceRule(model, depth)
    stored: dict[int, dict] = {}

    def denoise(step, x, sigma, prompt, slot):
        def run():
            return call(model, x, sigma, prompt)

        if step in full_steps:
            out, stored[slot] = rule.full(run)
            return out
        return rule.cached(run, stored[slot])

    return euler(model, steps, conds, denoise)


def engine_outputs(model, steps, conds, params):
    with DeepCacheSession(model, params, total_steps=steps) as session:
        outputs = euler(model, steps, conds)
    return outputs, session.stats


@pytest.mark.parametrize("family", sorted(BUILDERS))
@pytest.mark.parametrize(
    ("interval", "depth", "full_steps"),
    # uniform refreshes, written out: every interval-th step from step 0
    [(2, 0, {0, 2, 4, 6}), (3, 1, {0, 3, 6})],
)
def test_cached_steps_add_the_stored_residual_of_the_skipped_blocks(
    family, interval, depth, full_steps
):
    model = BUILDERS[family]()
    conds = prompts(2)  # cond and uncond as separate calls: one call slot each
    expected = reference_outputs(model, 7, conds, depth, full_steps)
    params = DeepCacheParams(True, interval, depth, min_steps=0)
    got, stats = engine_outputs(model, 7, conds, params)
    assert len(got) == len(expected) == 14
    for index, (a, b) in enumerate(zip(got, expected, strict=True)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=f"call {index}")
    assert (stats.full_steps, stats.cached_steps) == (len(full_steps), 7 - len(full_steps))


@pytest.mark.parametrize("family", sorted(BUILDERS))
def test_cached_steps_really_differ_and_interval_one_is_plain_bit_for_bit(family):
    model = BUILDERS[family]()
    conds = prompts(1)
    plain = euler(model, 6, conds)
    every_step, _ = engine_outputs(model, 6, conds, DeepCacheParams(True, 1, min_steps=0))
    cached, _ = engine_outputs(model, 6, conds, DeepCacheParams(True, 3, min_steps=0))
    assert all(torch.equal(a, b) for a, b in zip(every_step, plain, strict=True))
    assert torch.equal(cached[0], plain[0])  # step 0 is full
    assert not torch.equal(cached[1], plain[1])


@pytest.mark.parametrize("family", sorted(BUILDERS))
def test_the_model_is_left_exactly_as_it_was(family):
    model = BUILDERS[family]()
    before = {name: p.clone() for name, p in model.state_dict().items()}
    engine_outputs(model, 4, prompts(1), DeepCacheParams(True, 2, min_steps=0))
    assert not [m for m in model.modules() if "forward" in m.__dict__]
    assert all(torch.equal(before[name], p) for name, p in model.state_dict().items())
    assert not model._forward_pre_hooks


def _live_blocks_per_call(model, params, steps=4):
    """How many blocks really ran, call by call (a hook on each block's first layer)."""
    counts: list[int] = []
    blocks = [*model.transformer_blocks, *getattr(model, "single_transformer_blocks", [])]

    def count(*_):
        counts[-1] += 1

    handles = [getattr(block, "norm1", None) or block.norm for block in blocks]
    handles = [norm.register_forward_hook(count) for norm in handles]
    handles.append(model.register_forward_pre_hook(lambda *_: counts.append(0)))
    try:
        engine_outputs(model, steps, prompts(1), params)
    finally:
        for handle in handles:
            handle.remove()
    return counts


@pytest.mark.parametrize(
    ("depth", "live"),
    # 2 double + 4 single blocks: depth d runs 2 d of them (0: the whole stack is skipped);
    # depth 3 would leave none to skip, so it is clamped to 2
    [(0, 0), (1, 2), (2, 4), (3, 4), (11, 4)],
)
def test_depth_sets_how_many_blocks_a_cached_call_runs(depth, live):
    counts = _live_blocks_per_call(small_flux(), DeepCacheParams(True, 2, depth, min_steps=0))
    assert counts == [6, live, 6, live]


def test_a_stack_too_short_to_skip_a_block_is_refused_by_name():
    with pytest.raises(UnsupportedUNetError, match="too few blocks"):
        layout_of(small_flux(doubles=0, singles=0))


def test_the_host_residuals_between_blocks_are_added_afresh_not_stored():
    """A ControlNet adds its residual after each double block, in the model's own loop: a cached
    call keeps those of the current call and stores only the blocks' own contributions."""
    model = small_flux(doubles=4, singles=2)
    generator = torch.Generator().manual_seed(5)
    controls = [torch.randn(1, 16, 32, generator=generator) for _ in range(4)]
    conds = prompts(1)

    def with_control(x, sigma, prompt, scale):
        return model(
            hidden_states=x,
            encoder_hidden_states=prompt.text,
            pooled_projections=prompt.pooled,
            timestep=torch.full((1,), sigma),
            img_ids=torch.zeros(16, 3),
            txt_ids=torch.zeros(8, 3),
            controlnet_block_samples=[c * scale for c in controls],
            return_dict=False,
        )[0]

    rule, stored = ReferenceRule(model, depth=0), {}

    def reference(step, x, sigma, prompt, slot):
        def run():
            return with_control(x, sigma, prompt, 1.0 + step)

        if step % 2 == 0:
            out, stored[slot] = rule.full(run)
            return out
        return rule.cached(run, stored[slot])

    def live(step, x, sigma, prompt, slot):
        return with_control(x, sigma, prompt, 1.0 + step)

    expected = euler(model, 4, conds, reference)
    with DeepCacheSession(model, DeepCacheParams(True, 2, 0, min_steps=0), total_steps=4):
        got = euler(model, 4, conds, live)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_a_new_batch_shape_misses_and_runs_fully():
    """A text stream of another length is another cache entry: that call runs whole."""
    model = small_flux()
    short, long = prompts(1)[0], prompts(1, seed=9)[0]
    long.text = torch.cat([long.text, long.text], dim=1)
    shapes = iter([short, long, long, short])

    def alternating(step, x, sigma, prompt, slot):
        return call(model, x, sigma, next(shapes))

    params = DeepCacheParams(True, 4, min_steps=0)
    with DeepCacheSession(model, params, total_steps=4) as session:
        euler(model, 4, prompts(1), alternating)
    # step 0 stores the short entry; step 1 (long) misses, runs whole and stores its own, which
    # step 2 reuses; step 3 (short) reuses step 0's
    assert (session.stats.full_steps, session.stats.cached_steps) == (2, 2)
    assert session.stats.miss_passes == 1


@pytest.mark.parametrize(
    ("depth", "full_steps"),
    # depth 1: uniform interval 2, full 0, 2, 4, 6; depth 0 (no block runs on a cached step):
    # the step after the first is full too, then every second: 0, 1, 3, 5
    [(1, (0, 2, 4, 6)), (0, (0, 1, 3, 5))],
)
@pytest.mark.parametrize("family", sorted(BUILDERS))
def test_forecast_extrapolates_the_stored_residuals_from_the_last_two_full_steps(
    family, depth, full_steps
):
    """forecast 1: a cached step adds ``R1 + (R1 - R0) (t - t1) / (t1 - t0)`` of the residual
    sums R0, R1 stored at the last two full steps (t: the step's sigma; the ratio is the same in
    SD3's 0-1000 units); with one full step behind it, R1 as stored."""
    model = BUILDERS[family]()
    conds, steps = prompts(2), 7
    sigmas = torch.linspace(1.0, 0.0, steps + 1).tolist()
    rule = ReferenceRule(model, depth=depth)
    history: dict[int, list[tuple[float, dict]]] = {0: [], 1: []}

    def forecast(slot: int, sigma: float) -> dict:
        if len(history[slot]) == 1:
            return history[slot][0][1]
        (t0, r0), (t1, r1) = history[slot][-2:]
        scale = (sigma - t1) / (t1 - t0)
        return {
            stage: [b + (b - a) * scale for a, b in zip(r0[stage], r1[stage], strict=True)]
            for stage in r1
        }

    def denoise(step, x, sigma, prompt, slot):
        def run():
            return call(model, x, sigma, prompt)

        if step in full_steps:
            out, sums = rule.full(run)
            history[slot].append((sigmas[step], sums))
            return out
        return rule.cached(run, forecast(slot, sigmas[step]))

    expected = euler(model, steps, conds, denoise)
    got, stats = engine_outputs(
        model, steps, conds, DeepCacheParams(True, 2, depth, forecast=1.0, min_steps=0)
    )
    for index, (a, b) in enumerate(zip(got, expected, strict=True)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5, msg=f"call {index}")
    assert (stats.full_steps, stats.cached_steps) == (4, 3)


@pytest.mark.parametrize(
    ("threshold", "counts"),
    # threshold 0: every change reaches it, every step full; threshold inf: only max_cached (2)
    # ends a run of cached steps: full 0, 3, 6 (worked by hand over 7 steps)
    [(0.0, (7, 0)), (math.inf, (3, 4))],
)
def test_adaptive_schedule_decides_on_the_transformer_too(threshold, counts):
    params = DeepCacheParams(
        True, 2, 0, schedule="adaptive", threshold=threshold, max_cached=2, min_steps=0
    )
    _, stats = engine_outputs(small_flux(), 7, prompts(1), params)
    assert (stats.full_steps, stats.cached_steps) == counts


def test_an_exception_mid_sampling_leaves_the_model_as_it_was():
    model = small_flux()
    conds = prompts(1)
    plain = euler(model, 4, conds)

    def failing(step, x, sigma, prompt, slot):
        if step == 3:
            raise KeyboardInterrupt
        return call(model, x, sigma, prompt)

    with pytest.raises(KeyboardInterrupt):
        with DeepCacheSession(model, DeepCacheParams(True, 2, min_steps=0), total_steps=4):
            euler(model, 4, conds, failing)
    assert not [m for m in model.modules() if "forward" in m.__dict__]
    assert not model._forward_pre_hooks
    assert all(torch.equal(a, b) for a, b in zip(euler(model, 4, conds), plain, strict=True))
