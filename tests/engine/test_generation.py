"""One generation: a fresh session per pass, the hooks following a model swap, clean close."""

from __future__ import annotations

import torch

from lib_deepcache.bench.archs import build_unet, unet_config
from lib_deepcache.engine.generation import GenerationRun, PassPlan
from lib_deepcache.engine.params import DeepCacheParams
from tests.support import assert_same_fingerprint, unet_fingerprint

ON = DeepCacheParams(enabled=True, interval=2, min_steps=0)  # these passes are 2-4 steps
CONTEXT = unet_config("sd15", 32)["context_dim"]


def call(unet, t, batch=2, size=16, context_dim=CONTEXT):
    x = torch.randn(batch, 4, size, size)
    with torch.no_grad():
        unet(x, torch.full((batch,), float(t)), context=torch.randn(batch, 77, context_dim))


def test_each_pass_gets_a_fresh_session_and_cache():
    unet = build_unet("sd15", width=32)
    run = GenerationRun()
    run.begin_pass(unet, PassPlan("first pass", ON, 4))
    first = run.session
    for t in (999, 750, 500, 250):
        call(unet, t)
    assert first.stats.cached_passes == 2
    run.begin_pass(unet, PassPlan("hires", ON, 2))
    assert run.session is not first and not first.active
    assert run.session.cached_tensors == []
    for t in (500, 250):
        call(unet, t, size=24)
    run.close()
    assert run.counts_infotext() == "first pass 2 full / 2 cached; hires 1 full / 1 cached"


def test_disabled_pass_installs_nothing():
    unet = build_unet("sd15", width=32)
    before = unet_fingerprint(unet)
    run = GenerationRun()
    run.begin_pass(unet, PassPlan("first pass", DeepCacheParams(), 4))
    assert run.session is None
    assert_same_fingerprint(before, unet_fingerprint(unet))
    assert run.counts_infotext() == ""


def test_a_pass_shorter_than_min_steps_runs_uncached_and_says_so():
    """min_steps 4: the 4-step first pass is cached (4 is not below 4), the 3-step hires pass
    runs on the untouched UNet and is reported off."""
    unet = build_unet("sd15", width=32)
    before = unet_fingerprint(unet)
    params = DeepCacheParams(enabled=True, interval=2, min_steps=4)
    run = GenerationRun()
    run.begin_pass(unet, PassPlan("first pass", params, 4))
    for t in (999, 750, 500, 250):
        call(unet, t)
    assert run.begin_pass(unet, PassPlan("hires", params, 3)) is None
    assert run.session is None
    assert_same_fingerprint(before, unet_fingerprint(unet))
    for t in (500, 250, 100):
        call(unet, t, size=24)
    run.close()
    assert run.counts_infotext() == "first pass 2 full / 2 cached; hires off (3 steps < 4)"
    alone = GenerationRun()
    alone.begin_pass(unet, PassPlan("first pass", params, 3))
    alone.close()
    assert alone.counts_infotext() == "off (3 steps < 4)"


def test_min_steps_compares_the_requested_steps_not_the_executed_ones():
    """img2img at strength 0.25 executes 3 of 12 requested steps: still cached (12 >= 4); a
    requested 3 with all 3 executed is off."""
    unet = build_unet("sd15", width=32)
    params = DeepCacheParams(enabled=True, interval=2, min_steps=4)
    run = GenerationRun()
    assert run.begin_pass(unet, PassPlan("first pass", params, 3, None, 12)) is not None
    run.close()
    assert run.begin_pass(unet, PassPlan("first pass", params, 3, None, 3)) is None


def test_auto_records_the_interval_each_pass_ran_at():
    """A generation's record of what ``auto`` became: per pass, per session (a refiner of
    another layout takes over mid-pass with its own); a pass that ran no step records none."""
    sd15, sdxl = build_unet("sd15", width=32), build_unet("sdxl", width=32)
    auto = DeepCacheParams(enabled=True, min_steps=0)
    run = GenerationRun()
    run.begin_pass(sdxl, PassPlan("first pass", auto, 4, [999.0, 750.0, 500.0, 250.0]))
    for t in (999, 750):
        call(sdxl, t, context_dim=unet_config("sdxl", 32)["context_dim"])
    run.follow_unet(sd15)
    for t in (500, 250):
        call(sd15, t)
    run.begin_pass(sd15, PassPlan("hires", auto, 2))  # begun, never ran
    run.close()
    assert run.ran_intervals() == {"first pass": [2, 3], "hires": []}


def test_model_swap_moves_the_hooks_and_restores_the_old_unet():
    base, refiner = build_unet("sd15", width=32, seed=1), build_unet("sd15", width=32, seed=2)
    before = unet_fingerprint(base)
    grid = [999.0, 750.0, 500.0, 250.0]
    run = GenerationRun()
    run.begin_pass(base, PassPlan("first pass", ON, 4, grid))
    call(base, 999)
    run.follow_unet(base)  # same model: nothing happens
    run.follow_unet(refiner)
    assert_same_fingerprint(before, unet_fingerprint(base))
    assert run.session.unet is refiner
    for t in (750, 500, 250):
        call(refiner, t)
    run.close()
    run.close()
    # steps 0 and 2 full by the schedule; step 1 was to be cached but missed on the new UNet and
    # ran it whole, so it counts as full; step 3 reused the new UNet's step-2 feature
    assert run.counts_infotext() == "3 full / 1 cached"
    moved = run.passes[0].stats[1]
    assert moved.miss_passes == 1  # step 1 (cached) found no feature on the new UNet: ran fully
    assert moved.cached_passes == 1  # step 3 used the new UNet's own step-2 feature


def test_only_sessions_that_ran_steps_log_their_counts(caplog):
    """Forge begins its hires pass twice: the first, empty session logged "0 full / 0 cached"
    to the console before; only the session that ran steps may log counts."""
    unet = build_unet("sd15", width=32)
    run = GenerationRun()
    with caplog.at_level("INFO", logger="deepcache"):
        run.begin_pass(unet, PassPlan("hires", ON, 2))
        run.begin_pass(unet, PassPlan("hires", ON, 2))
        for t in (500, 250):
            call(unet, t)
        run.close()
    counts = [r.getMessage() for r in caplog.records if "full /" in r.getMessage()]
    assert counts == ["DeepCache: 1 full / 1 cached steps"], counts


def test_a_pass_begun_again_before_it_ran_is_counted_once():
    """Forge calls its per-pass hook twice before the hires pass; attach=False leaves the UNet
    untouched for the host to attach per call."""
    unet = build_unet("sd15", width=32)
    run = GenerationRun()
    run.begin_pass(unet, PassPlan("first pass", ON, 2))
    call(unet, 999)
    call(unet, 500)
    run.begin_pass(unet, PassPlan("hires", ON, 2), attach=False)
    session = run.begin_pass(unet, PassPlan("hires", ON, 2), attach=False)
    assert not session.active and "forward" not in unet.input_blocks[0].__dict__
    for t in (999, 500):
        with session.attached():
            call(unet, t)
        assert not session.active
    run.close()
    assert [record.name for record in run.passes] == ["first pass", "hires"]
    assert run.counts_infotext() == "first pass 1 full / 1 cached; hires 1 full / 1 cached"


def test_per_call_sessions_do_not_follow_model_swaps():
    base, other = build_unet("sd15", width=32, seed=1), build_unet("sd15", width=32, seed=2)
    run = GenerationRun()
    session = run.begin_pass(base, PassPlan("first pass", ON, 2), attach=False)
    run.follow_unet(other)
    assert run.session is session and session.unet is base
    run.close()


def test_refiner_weights_loaded_into_the_same_unet_get_a_fresh_cache():
    """A1111 loads a refiner of the base's config into the same model object: the UNet object
    stays, the checkpoint changes. Hand-worked with interval 2 over 4 steps, switching after
    step 0: the base ran step 0 fully; the refiner's step 1 would be cached but must not read
    the base's feature, so it runs fully on the new weights; step 2 is full by the schedule and
    step 3 reuses the refiner's own step-2 feature."""
    unet = build_unet("sd15", width=32, seed=1)
    grid = [999.0, 750.0, 500.0, 250.0]
    run = GenerationRun()
    run.begin_pass(unet, PassPlan("first pass", ON, 4, grid), model_id="base.safetensors")
    call(unet, 999)
    base_session = run.session
    run.follow_unet(unet, "base.safetensors")  # same weights: the session stays
    assert run.session is base_session
    unet.load_state_dict(build_unet("sd15", width=32, seed=2).state_dict())
    run.follow_unet(unet, "refiner.safetensors")
    assert run.session is not base_session and run.session.unet is unet
    for t in (750, 500, 250):
        call(unet, t)
    run.close()
    assert run.counts_infotext() == "3 full / 1 cached"
    refined = run.passes[0].stats[1]
    assert (refined.miss_passes, refined.cached_passes) == (1, 1)
