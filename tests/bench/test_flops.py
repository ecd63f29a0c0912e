"""FLOP cost of cached passes at real size, counted on the ``meta`` device.

On CPU tensors SDPA attention is not counted, so the real-size models are built on ``meta``: no
memory, no compute, exact counts. The step index comes from ``set_step`` because a ``meta``
timestep has no value to read.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from lib_deepcache import DeepCacheParams, DeepCacheSession
from lib_deepcache.bench.archs import build_diffusers_unet, build_unet
from lib_deepcache.bench.flops import speed_limit
from lib_deepcache.bench.harness import diffusers_kwargs
from lib_deepcache.engine.flops import count_unit_flops

DIFFUSERS = "diffusers-"


def count(fn) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


def meta_call(arch: str, size: int):
    """A real-size UNet on ``meta`` and the arguments of one CFG-batched call (batch 2)."""
    x = torch.empty(2, 4, size, size, device="meta")
    t = torch.empty(2, device="meta")
    if arch.startswith(DIFFUSERS):
        unet = build_diffusers_unet(arch[len(DIFFUSERS) :], device="meta")
        context = torch.empty(2, 77, unet.config.cross_attention_dim, device="meta")
        return unet, (x, t), diffusers_kwargs(unet, context)
    unet = build_unet(arch, device="meta")
    return unet, (x, t), {"context": torch.empty(2, 77, 768, device="meta")}


@pytest.fixture(scope="module")
def sd15_meta():
    return build_unet("sd15", device="meta")


@pytest.mark.parametrize(
    ("arch", "size", "shares"),
    [
        # the shares measured on the real models: SD1.5 at 512 px, SDXL at 1024 px
        ("sd15", 64, [0.0787, 0.224, 0.380, 0.470]),
        ("diffusers-sd15", 64, [0.0787, 0.224, 0.380]),
        ("diffusers-sdxl", 128, [0.0145, 0.0378, 0.0661]),
    ],
)
def test_cached_pass_costs_the_field_measured_shallow_share(arch, size, shares):
    """A cached pass at depth b costs the share f_b of a full pass, for the ldm UNet and the
    diffusers one: counted on the hooked UNet's real calls, and per unit by the engine."""
    unet, args, kwargs = meta_call(arch, size)
    counted = count_unit_flops(unet, args, kwargs)
    assert [counted.shallow_share(d) for d in range(len(shares))] == pytest.approx(
        shares, abs=0.002
    )
    for depth, share in enumerate(shares):
        params = DeepCacheParams(enabled=True, interval=2, depth=depth)
        with torch.no_grad(), DeepCacheSession(unet, params, total_steps=2) as session:
            session.set_step(0)
            full = count(lambda: unet(*args, **kwargs))
            session.set_step(1)
            cached = count(lambda: unet(*args, **kwargs))
        assert session.stats.full_passes == 1 and session.stats.cached_passes == 1
        assert cached / full == pytest.approx(share, abs=0.002)
        assert cached / full == pytest.approx(counted.shallow_share(depth), rel=1e-6)


def test_speed_limit_of_uniform_caching():
    """S(N, b) = N / (1 + (N - 1) f_b), at SD1.5's depth-0 share 0.0787: N=3 gives
    3 / 1.1574 = 2.59; N=5 gives 5 / 1.3148 = 3.80; N=1 never caches: 1."""
    assert speed_limit(3, 0.0787) == pytest.approx(2.59, abs=0.01)
    assert speed_limit(5, 0.0787) == pytest.approx(3.80, abs=0.01)
    assert speed_limit(1, 0.0787) == 1


def test_unhooked_full_pass_costs_the_same_as_a_hooked_full_pass(sd15_meta):
    x = torch.empty(2, 4, 32, 32, device="meta")
    t = torch.empty(2, device="meta")
    context = torch.empty(2, 77, 768, device="meta")
    plain = count(lambda: sd15_meta(x, t, context=context))
    params = DeepCacheParams(enabled=True, interval=2)
    with torch.no_grad(), DeepCacheSession(sd15_meta, params, total_steps=2) as session:
        session.set_step(0)
        hooked = count(lambda: sd15_meta(x, t, context=context))
    assert hooked == plain
