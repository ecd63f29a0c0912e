"""The session as owner of the patches: install, remove, conflicts, memory, foreign wrappers."""

from __future__ import annotations

import gc
import logging
import weakref

import pytest
import torch

from lib_deepcache import (
    DeepCacheParams,
    DeepCacheSession,
    SessionConflictError,
    UnsupportedUNetError,
)
from lib_deepcache.bench.archs import build_unet
from tests.support import assert_same_fingerprint, make_rig, unet_fingerprint

ON = DeepCacheParams(enabled=True, interval=3, depth=0)


@pytest.fixture(scope="module")
def rig():
    return make_rig("sd15", width=32, seed=21)


def test_disabled_installs_nothing_and_is_bit_identical(rig):
    before = unet_fingerprint(rig.unet)
    plain, _ = rig.sample("euler", 5, batch=2)
    with DeepCacheSession(rig.unet, DeepCacheParams(enabled=False), 5) as session:
        assert_same_fingerprint(before, unet_fingerprint(rig.unet))
        out, _ = rig.sample("euler", 5, batch=2)
    assert torch.equal(plain, out)
    assert not session.active
    assert session.stats.full_steps == session.stats.cached_steps == 0


@pytest.mark.parametrize("arch", ["sd15", "diffusers-sd15"])
def test_exit_restores_the_very_same_forward_callables(request, arch):
    """The ldm UNet and the diffusers one (SD.Next's): after the session every forward, hook,
    attribute and weight is as before."""
    rig = request.getfixturevalue("rig") if arch == "sd15" else make_rig(arch, width=32, seed=21)
    before = unet_fingerprint(rig.unet)
    with DeepCacheSession(rig.unet, ON, 5):
        wrapped = unet_fingerprint(rig.unet)
        assert wrapped["forwards"] != before["forwards"]
        rig.sample("euler", 5)
    assert_same_fingerprint(before, unet_fingerprint(rig.unet))


def test_instance_forward_set_before_the_session_is_put_back(rig):
    """A block whose forward another extension already replaced gets that same callable back."""
    block = rig.unet.middle_block
    theirs = block.forward
    block.forward = theirs  # now an instance attribute, as ControlNet leaves it
    try:
        with DeepCacheSession(rig.unet, ON, 5):
            assert block.__dict__["forward"] is not theirs
        assert block.__dict__["forward"] is theirs
    finally:
        del block.forward


def test_entering_twice_and_leaving_twice_is_harmless(rig):
    before = unet_fingerprint(rig.unet)
    session = DeepCacheSession(rig.unet, ON, 5)
    with session:
        with session:
            rig.sample("euler", 5)
        assert session.active, "the inner exit must not unhook the outer use"
        rig.sample("euler", 5)
    session.close()
    session.__exit__(None, None, None)
    assert not session.active
    assert_same_fingerprint(before, unet_fingerprint(rig.unet))
    with pytest.raises(RuntimeError, match="cannot be reopened"), session:
        pass


def test_a_second_session_on_the_same_unet_is_refused(rig):
    before = unet_fingerprint(rig.unet)
    with DeepCacheSession(rig.unet, ON, 5):
        with pytest.raises(SessionConflictError):
            DeepCacheSession(rig.unet, ON, 5).__enter__()
        rig.sample("euler", 5)
    assert_same_fingerprint(before, unet_fingerprint(rig.unet))
    with DeepCacheSession(rig.unet, ON, 5) as again:
        rig.sample("euler", 5)
    assert again.stats.cached_steps > 0


def test_one_tensor_per_slot_and_all_freed_at_exit(rig):
    refs: list[weakref.ref] = []
    counts: list[int] = []
    session = DeepCacheSession(rig.unet, ON, 9)

    def watch(module, args, output):
        counts.append(len(session.cached_tensors))
        refs.extend(weakref.ref(t) for t in session.cached_tensors)

    handle = rig.unet.register_forward_hook(watch)
    try:
        with session:
            rig.sample("euler", 9, split=True)
    finally:
        handle.remove()
    assert max(counts) == 2, "cond and uncond slots: exactly one tensor each"
    assert session.cached_tensors == [] and session.cache_nbytes == 0
    gc.collect()
    assert all(ref() is None for ref in refs), "a cached feature outlived the session"


def test_nothing_is_stored_after_the_last_cached_step(rig):
    """Interval 1 caches nothing, so it never stores a feature either."""
    seen: list[int] = []
    session = DeepCacheSession(rig.unet, DeepCacheParams(enabled=True, interval=1), 5)
    handle = rig.unet.register_forward_hook(lambda *_: seen.append(session.cache_nbytes))
    try:
        with session:
            rig.sample("euler", 5)
    finally:
        handle.remove()
    assert seen == [0] * 5


def test_wrapper_stays_as_pass_through_when_wrapped_again(rig, caplog):
    """ControlNet saves a block's forward once and wraps it; if that happens while DeepCache is
    active, our wrapper cannot be unlinked: it must become a transparent pass-through."""
    block = rig.unet.output_blocks[3]
    plain, _ = rig.sample("euler", 5, batch=1)
    with caplog.at_level(logging.WARNING, logger="deepcache"):
        with DeepCacheSession(rig.unet, ON, 5):
            inner = block.forward
            block.forward = lambda *a, **k: inner(*a, **k)
        after, _ = rig.sample("euler", 5, batch=1)
    del block.forward
    assert "wrapped again" in caplog.text
    assert torch.equal(plain, after)


def test_direct_forward_call_bypassing_call_runs_fully(rig):
    """A host calling unet.forward directly gives no timestep: the pass runs fully, counted."""
    x = torch.randn(2, 4, 16, 16)
    context = rig.text(2, 0)
    t = torch.full((2,), 500.0)
    with torch.no_grad():
        plain = rig.unet(x, t, context=context)
        with DeepCacheSession(rig.unet, ON, 5) as session:
            out = rig.unet.forward(x, t, context=context)
    assert torch.equal(plain, out)
    assert session.stats.unannounced_passes == 1


@pytest.mark.parametrize("arch", ["sdxl", "diffusers-sdxl"])
def test_depth_beyond_the_unet_is_clamped_to_its_deepest_branch(arch):
    """SDXL has 9 input blocks, so branches 0-8 (SD1.x: 0-11): depth 11 runs as depth 8, sample
    for sample; depth 7 gives another sample, so the comparison tells depths apart."""
    rig = make_rig(arch, width=32, seed=3)
    samples, depths = {}, {}
    for depth in (11, 8, 7):
        params = DeepCacheParams(enabled=True, interval=2, depth=depth)
        with DeepCacheSession(rig.unet, params, 4) as session:
            samples[depth], _ = rig.sample("euler", 4, batch=1)
        depths[depth] = (session.depth, session.stats.depth)
    assert depths == {11: (8, 8), 8: (8, 8), 7: (7, 7)}
    assert torch.equal(samples[11], samples[8])
    assert not torch.equal(samples[8], samples[7])


@pytest.mark.parametrize(
    ("arch", "interval", "counts"),
    # 6 steps; interval 3: full at 0, 3; interval 2: full at 0, 2, 4 (worked by hand)
    [
        ("sd15", 3, (2, 4)),
        ("sd21", 3, (2, 4)),
        ("sdxl", 2, (3, 3)),
        ("diffusers-sd15", 3, (2, 4)),
        ("diffusers-sdxl", 2, (3, 3)),
    ],
)
def test_auto_runs_the_layouts_own_interval(arch, interval, counts, caplog):
    """docs/quality.md "Per-model defaults": SD1.x/2.x interval 3, SDXL interval 2; ``auto``
    samples exactly what the explicit interval samples, and the session says which it ran."""
    rig = make_rig(arch, width=32, seed=5)
    samples, stats = {}, {}
    for value in ("auto", interval):
        params = DeepCacheParams(enabled=True, interval=value, min_steps=0)
        with (
            caplog.at_level(logging.INFO, logger="deepcache"),
            DeepCacheSession(rig.unet, params, 6) as session,
        ):
            samples[value], _ = rig.sample("euler", 6, batch=1)
        stats[value] = (session.params.interval, session.stats.interval)
        assert (session.stats.full_steps, session.stats.cached_steps) == counts
    assert stats == {"auto": (interval, interval), interval: (interval, interval)}
    assert torch.equal(samples["auto"], samples[interval])
    assert f"interval auto = {interval} for a UNet with" in caplog.text


def test_stats_report_the_flop_saving(rig):
    with DeepCacheSession(rig.unet, ON, 6) as session:
        rig.sample("euler", 6, batch=1)
    stats = session.measure_flops()
    assert stats.full_steps == 2 and stats.cached_steps == 4
    assert 0 < stats.shallow_share < 0.3
    expected = 4 * (1 - stats.shallow_share) / 6
    assert stats.estimated_flop_saving == pytest.approx(expected)
    assert "2 full / 4 cached steps" in stats.summary()


def test_unsupported_module_is_refused_clearly():
    with pytest.raises(UnsupportedUNetError, match="Linear is none of the models DeepCache knows"):
        DeepCacheSession(torch.nn.Linear(2, 2), ON, 5)


def test_disabled_session_accepts_any_module():
    with DeepCacheSession(torch.nn.Linear(2, 2), DeepCacheParams(enabled=False), 5) as session:
        assert not session.active


@pytest.mark.parametrize("steps", [0, -1, 2.5, True, None])
def test_total_steps_must_be_a_positive_integer(steps):
    with pytest.raises(ValueError, match="total_steps"):
        DeepCacheSession(build_unet("sd15", width=32), ON, steps)
