"""The transformer speed bench: its FLOP arithmetic against hand-worked numbers, and a measured
run on a tiny Flux whose step counts are the uniform schedule's (worked by hand)."""

from __future__ import annotations

import pytest
import torch

from lib_deepcache.bench import dit_speed
from lib_deepcache.engine.flops import BlockFlops


def test_flop_speedup_is_steps_over_full_plus_cached_share():
    # 4 blocks of 20 FLOPs + 20 elsewhere; depth 0 skips the middle two: f_0 = 60 / 100
    flops = BlockFlops(100, {"a": 20, "b": 20, "c": 20, "d": 20}, 4, (("b", "c"),))
    assert flops.shallow_share(0) == pytest.approx(0.6)
    # 10 steps, 4 full, 6 cached: 10 / (4 + 6 * 0.6) = 10 / 7.6
    assert dit_speed.flop_speedup(flops, 0, 4, 6) == pytest.approx(10 / 7.6)


@pytest.mark.parametrize(("steps", "interval", "full"), [(28, 2, 14), (28, 3, 10), (28, 5, 6)])
def test_uniform_full_steps(steps, interval, full):
    assert dit_speed.uniform_full_steps(steps, interval) == full


def test_a_measured_run_counts_the_uniform_schedule_and_times_every_repeat():
    torch.manual_seed(0)
    model = dit_speed.flux_dev(width=128, doubles=2, singles=4).eval()
    inputs = dit_speed.flux_inputs(16, 8, device="cpu")
    flops = BlockFlops(100, {}, 6, ((),))  # no skipped FLOPs: the FLOP speedup is 1
    rows = dit_speed.measure(model, inputs, [(3, 0)], steps=6, repeats=2, flops=flops)
    (row,) = rows
    assert (row.full, row.cached) == (2, 4)  # steps 0 and 3 full
    assert len(row.ratios) == 2 and all(r > 0 for r in row.ratios)
    assert row.flop == pytest.approx(1.0)
    assert not any("forward" in vars(m) for m in model.modules())  # the session left nothing
