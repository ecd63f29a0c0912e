"""Passes inside one diffusers pipeline run (SD.Next): executed steps from the scheduler, and a
fresh session per pass from the watcher."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler, HeunDiscreteScheduler

from lib_deepcache import DeepCacheParams
from lib_deepcache.archs import build_diffusers_unet
from lib_deepcache.generation import GenerationRun, PassPlan
from lib_deepcache.pipeline import PassWatcher, scheduler_steps


@pytest.mark.parametrize("scheduler_class", [DDIMScheduler, EulerDiscreteScheduler])
def test_img2img_pass_counts_only_the_steps_from_its_first_timestep(scheduler_class):
    scheduler = scheduler_class(num_train_timesteps=1000)
    scheduler.set_timesteps(10)
    timesteps = [float(t) for t in scheduler.timesteps]
    assert scheduler_steps(scheduler, timesteps[0]) == (10, timesteps)
    steps, grid = scheduler_steps(scheduler, timesteps[6])
    assert steps == 4 and grid == timesteps[6:]


def test_second_order_scheduler_counts_steps_not_evaluations():
    scheduler = HeunDiscreteScheduler(num_train_timesteps=1000)
    scheduler.set_timesteps(8)
    assert len(scheduler.timesteps) == 15
    steps, grid = scheduler_steps(scheduler, float(scheduler.timesteps[0]))
    assert steps == 8 and grid is None


def test_a_timestep_off_the_schedule_is_refused():
    scheduler = DDIMScheduler(num_train_timesteps=1000)
    scheduler.set_timesteps(10)
    with pytest.raises(ValueError, match="no timestep 3"):
        scheduler_steps(scheduler, 3.0)


def _unet_calls(unet, timesteps):
    x = torch.randn(1, 4, 8, 8)
    context = torch.randn(1, 7, unet.config.cross_attention_dim)
    with torch.no_grad():
        for t in timesteps:
            unet(x, torch.tensor(float(t)), encoder_hidden_states=context)


def test_watcher_opens_a_session_per_pass_and_survives_a_failing_plan(caplog):
    unet = build_diffusers_unet("sd15", width=32)
    run = GenerationRun()
    plans = iter(
        [
            PassPlan("first pass", DeepCacheParams(True, 2, 0), 4),
            ValueError("no schedule"),
            None,
            PassPlan("hires", DeepCacheParams(True, 3, 0), 3),
        ]
    )

    def plan_for_pass(first_timestep):
        plan = next(plans)
        if isinstance(plan, Exception):
            raise plan
        return plan

    watcher = PassWatcher(run, unet, plan_for_pass)
    try:
        _unet_calls(unet, [999, 750, 500, 250])  # planned: 2 full / 2 cached
        _unet_calls(unet, [800, 400])  # planning fails: uncached, logged
        _unet_calls(unet, [900, 300])  # plan None: uncached
        _unet_calls(unet, [700, 500, 300])  # planned: 1 full / 2 cached
    finally:
        watcher.remove()
        run.close()
    assert run.counts_infotext() == "first pass 2 full / 2 cached; hires 1 full / 2 cached"
    assert "this pass runs uncached: no schedule" in caplog.text
    assert not unet._forward_pre_hooks
