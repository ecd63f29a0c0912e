"""SD.Next's adapter: executed steps and grid of a pass from the pipeline's scheduler, and the
passes it leaves uncached."""

from __future__ import annotations

import types

import pytest
import torch
from diffusers import (
    DDIMScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    KDPM2DiscreteScheduler,
    PNDMScheduler,
)

from lib_deepcache.bench.archs import build_diffusers_unet
from lib_deepcache.engine.clock import StepClock
from lib_deepcache.engine.generation import GenerationRun
from lib_deepcache.hosts import webui
from lib_deepcache.hosts.script_args import ScriptArgs
from lib_deepcache.hosts.sdnext import SdNext, scheduler_steps


@pytest.mark.parametrize("scheduler_class", [DDIMScheduler, EulerDiscreteScheduler])
def test_img2img_pass_counts_only_the_steps_from_its_first_timestep(scheduler_class):
    scheduler = scheduler_class(num_train_timesteps=1000)
    scheduler.set_timesteps(10)
    timesteps = [float(t) for t in scheduler.timesteps]
    assert scheduler_steps(scheduler, timesteps[0]) == (10, timesteps)
    steps, grid = scheduler_steps(scheduler, timesteps[6])
    assert steps == 4 and grid == timesteps[6:]


def _step_starts(scheduler, begin: int = 0) -> list[float]:
    """The oracle: drive the real scheduler through its timesteps from ``begin`` and note the
    timesteps at which it is in its first-order state (the start of a step)."""
    scheduler.set_begin_index(begin)
    sample = torch.zeros(1, 1, 2, 2)
    starts = []
    for t in scheduler.timesteps[begin:]:
        if getattr(scheduler, "state_in_first_order", True):
            starts.append(float(t))
        sample = scheduler.step(torch.zeros_like(sample), t, sample).prev_sample
    return starts


@pytest.mark.parametrize("scheduler_class", [HeunDiscreteScheduler, KDPM2DiscreteScheduler])
@pytest.mark.parametrize("t_start", [0, 5])
def test_second_order_scheduler_counts_steps_not_evaluations(scheduler_class, t_start):
    """SD.Next's KDPM2 reported 15 full / 8 cached for 12 steps: each step is listed twice."""
    scheduler = scheduler_class(num_train_timesteps=1000)
    scheduler.set_timesteps(12)
    begin = t_start * scheduler.order  # where diffusers' img2img pipelines slice
    want = _step_starts(scheduler, begin)
    assert len(want) == 12 - t_start
    assert scheduler_steps(scheduler, float(scheduler.timesteps[begin])) == (len(want), want)


# PNDM at 12 steps (diffusers, num_train_timesteps 1000, steps_offset 1), written out by hand
# from its schedule: one start per step, 83 apart
PNDM_STARTS_12 = [914.0, 831.0, 748.0, 665.0, 582.0, 499.0, 416.0, 333.0, 250.0, 167.0, 84.0, 1.0]


@pytest.mark.parametrize("skip_prk_steps", [True, False], ids=["plms", "prk-warm-up"])
@pytest.mark.parametrize("t_start", [0, 5])
def test_pndm_counts_its_steps_not_its_evaluations(skip_prk_steps, t_start):
    """SD.Next's PNDM runs reported 6 full / 6 cached (PLMS: 13 evaluations, the second
    timestep twice) and 6 full / 9 cached (the PRK warm-up: 21 evaluations at 15 timesteps) for
    12 steps at interval 3: every step start is on its grid, every extra evaluation joins one."""
    scheduler = PNDMScheduler(
        num_train_timesteps=1000, steps_offset=1, skip_prk_steps=skip_prk_steps
    )
    scheduler.set_timesteps(12)
    start = PNDM_STARTS_12[t_start]
    assert scheduler_steps(scheduler, start) == (12 - t_start, PNDM_STARTS_12[t_start:])
    clock = StepClock(PNDM_STARTS_12[t_start:])
    first = [float(t) for t in scheduler.timesteps].index(start)
    steps = [clock.observe(float(t)).step for t in scheduler.timesteps[first:]]
    assert sorted(set(steps)) == list(range(12 - t_start))


def test_a_timestep_off_the_schedule_is_refused():
    scheduler = DDIMScheduler(num_train_timesteps=1000)
    scheduler.set_timesteps(10)
    with pytest.raises(ValueError, match="no timestep 3"):
        scheduler_steps(scheduler, 3.0)


def _pipeline_pass(unet, timesteps, context):
    """The UNet calls of one pipeline pass (batch 1, CFG off), and their outputs."""
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return [unet(x, torch.tensor(t), encoder_hidden_states=context).sample for t in timesteps]


def test_the_refiner_pass_of_a_pipeline_run_stays_uncached(monkeypatch):
    """SD.Next runs the base pass and the refiner pass in one batch; the refiner pass is left
    uncached (its plan is None). Base: 4 steps at interval 2 → full at 0 and 2, cached at 1 and
    3: "2 full / 2 cached". The refiner pass (timesteps rise again: a new pass) must add no
    record and give exactly the uncached UNet's outputs."""
    unet = build_diffusers_unet("sd15", width=32)
    scheduler = DDIMScheduler(num_train_timesteps=1000)
    scheduler.set_timesteps(4)
    timesteps = [float(t) for t in scheduler.timesteps]
    model = types.SimpleNamespace(unet=unet, scheduler=scheduler)
    monkeypatch.setattr(webui, "sd_model", lambda: model)
    context = torch.randn(1, 7, unet.config.cross_attention_dim)
    refiner_timesteps = timesteps[2:]
    reference = _pipeline_pass(unet, refiner_timesteps, context)

    args = ScriptArgs.from_args([{"enabled": True, "interval": 2, "min_steps": 0}])
    p = types.SimpleNamespace(deepcache_args=args, steps=4)
    run, adapter = GenerationRun(), SdNext()
    adapter.on_batch(run, p)
    try:
        _pipeline_pass(unet, timesteps, context)
        p.is_refiner_pass = True
        refined = _pipeline_pass(unet, refiner_timesteps, context)
    finally:
        adapter.close()
        run.close()
    assert run.counts_infotext() == "2 full / 2 cached"
    assert all(torch.equal(a, b) for a, b in zip(refined, reference, strict=True))
    assert not unet._forward_pre_hooks
