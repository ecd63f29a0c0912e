"""Pass detection inside one diffusers pipeline run (SD.Next): executed steps from the scheduler."""

from __future__ import annotations

import pytest
from diffusers import DDIMScheduler, EulerDiscreteScheduler, HeunDiscreteScheduler

from lib_deepcache.pipeline import scheduler_steps


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
