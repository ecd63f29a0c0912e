"""FLOP cost of cached passes at the real SD1.5 size, counted on the ``meta`` device.

On CPU tensors SDPA attention is not counted, so the real-size model is built on ``meta``: no
memory, no compute, exact counts. The step index comes from ``set_step`` because a ``meta``
timestep has no value to read.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from lib_deepcache import DeepCacheParams, DeepCacheSession
from lib_deepcache.bench.archs import build_unet
from lib_deepcache.bench.flops import count_block_flops, speed_limit


def count(fn) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


@pytest.fixture(scope="module")
def sd15_meta():
    return build_unet("sd15", device="meta")


def meta_inputs(batch=2, size=64, context_dim=768):
    x = torch.empty(batch, 4, size, size, device="meta")
    t = torch.empty(batch, device="meta")
    context = torch.empty(batch, 77, context_dim, device="meta")
    return x, t, context


@pytest.mark.parametrize(("depth", "limit"), [(0, 0.10), (1, 0.25), (2, 0.40)])
def test_cached_pass_costs_the_shallow_share_at_sd15_512px(sd15_meta, depth, limit):
    x, t, context = meta_inputs()
    params = DeepCacheParams(enabled=True, interval=3, depth=depth)
    with torch.no_grad(), DeepCacheSession(sd15_meta, params, total_steps=3) as session:
        session.set_step(0)
        full = count(lambda: sd15_meta(x, t, context=context))
        session.set_step(1)
        cached = count(lambda: sd15_meta(x, t, context=context))
    assert session.stats.full_passes == 1 and session.stats.cached_passes == 1
    ratio = cached / full
    assert ratio <= limit
    counted = count_block_flops(sd15_meta, tuple(x.shape), tuple(context.shape))
    share = counted.shallow_share(depth)
    assert ratio == pytest.approx(share, rel=1e-6)


def test_sd15_shallow_shares_match_the_field_measurements(sd15_meta):
    counted = count_block_flops(sd15_meta, (2, 4, 64, 64), (2, 77, 768))
    shares = [counted.shallow_share(d) for d in range(4)]
    assert shares == pytest.approx([0.0787, 0.224, 0.380, 0.470], abs=0.002)
    assert speed_limit(3, shares[0]) == pytest.approx(2.59, abs=0.01)
    assert speed_limit(5, shares[0]) == pytest.approx(3.80, abs=0.01)


def test_unhooked_full_pass_costs_the_same_as_a_hooked_full_pass(sd15_meta):
    x, t, context = meta_inputs(size=32)
    plain = count(lambda: sd15_meta(x, t, context=context))
    params = DeepCacheParams(enabled=True, interval=2)
    with torch.no_grad(), DeepCacheSession(sd15_meta, params, total_steps=2) as session:
        session.set_step(0)
        hooked = count(lambda: sd15_meta(x, t, context=context))
    assert hooked == plain
