"""Step detection from the timesteps the UNet receives."""

from __future__ import annotations

from lib_deepcache.engine.clock import StepClock


def steps_of(clock, timesteps):
    return [clock.observe(t).step for t in timesteps]


def test_one_call_per_step_integer_timesteps():
    assert steps_of(StepClock(), [999, 949, 899, 849]) == [0, 1, 2, 3]


def test_repeated_timestep_is_the_same_step():
    """Split CFG: cond and uncond at the same timestep are two slots of one step."""
    assert steps_of(StepClock(), [999.0, 999.0, 900.5, 900.5]) == [0, 0, 1, 1]


def test_heun_correction_joins_the_next_noise_level():
    # step 0 at t0, correction at t1; step 1 at t1, correction at t2; last step Euler only.
    calls = [900.0, 800.0, 800.0, 700.0, 700.0]
    assert steps_of(StepClock(), calls) == [0, 1, 1, 2, 2]


def test_grid_keeps_midpoints_inside_their_step():
    grid = [900.0, 800.0, 700.0]
    calls = [900.0, 850.3, 800.0, 749.1, 700.0]
    assert steps_of(StepClock(grid), calls) == [0, 0, 1, 1, 2]
    assert steps_of(StepClock(), calls) == [0, 1, 2, 3, 4]


def test_timestep_going_up_restarts():
    clock = StepClock()
    steps_of(clock, [900.0, 800.0])
    tick = clock.observe(950.0)
    assert (tick.step, tick.new_step, tick.restarted) == (0, True, True)


def test_host_step_index():
    clock = StepClock()
    assert clock.observe_index(0).new_step
    assert not clock.observe_index(0).new_step
    assert clock.observe_index(1).step == 1
    assert clock.observe_index(0).restarted


def test_grid_gives_the_absolute_step_even_mid_pass():
    """A session opened after a model swap first sees step 12's timestep: it is step 12."""
    grid = [float(t) for t in range(950, -1, -50)]
    clock = StepClock(grid)
    assert clock.observe(grid[12]).step == 12
    assert clock.observe(grid[13]).step == 13


def test_a_refiners_slightly_shifted_timesteps_still_start_their_steps():
    """A1111's full-size refiner (fp16-rounded noise schedule) sent 272.379 where the tiny base
    model's grid said 272.455 (steps 90.818 apart, as seen in the real host): it must open
    step 8, not start over at step 0; a midpoint half a gap away stays inside its step."""
    grid = [999.0 - 90.8182 * i for i in range(12)]
    clock = StepClock(grid)
    assert clock.observe(272.379).step == 8
    assert clock.observe(227.0).step == 8  # a midpoint
    assert clock.observe(181.694).step == 9
