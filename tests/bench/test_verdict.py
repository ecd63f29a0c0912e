"""The bar's verdicts and the equal-cost meeting of a rival, on hand-made numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lib_deepcache.bench.records import Study, StudyRow
from lib_deepcache.bench.verdict import meet, verdicts

STEPS = 20


def _full_steps(interval: int, k: int) -> int:
    """Hand count of a pass's full steps: k full first steps, then every interval-th."""
    return k + math.ceil((STEPS - k) / interval)


def _speed(interval: int, k: int) -> float:
    return STEPS / _full_steps(interval, k)


def test_meet_slows_the_cells_interval_for_a_rival_that_spent_more():
    """Target 2.5 at interval 3 (20/7 = 2.86x): k = 1 and 2 give 8 full steps (2.5x), k = 3
    gives 9 (2.22x): the most full first steps still as fast as the rival is 2."""
    assert meet(_speed, 3, STEPS, 2.5) == (3, 2)


def test_meet_accepts_a_speed_within_half_a_percent_below_the_target():
    """Target 2.51: 8 full steps (2.5x) are 0.4 % short, within the tolerance: still (3, 2)."""
    assert meet(_speed, 3, STEPS, 2.51) == (3, 2)
    assert meet(_speed, 3, STEPS, 2.52) == (3, 0)  # 0.8 % short: only k = 0 (2.86x) is fast enough


def test_meet_takes_a_longer_interval_for_a_rival_that_spent_less():
    """Target 3.0: interval 3 is too slow (2.86x); interval 4 gives 4x at k = 0, 3.33x at
    k = 1 (6 full), 2.86x at k = 2 (7 full): (4, 1)."""
    assert meet(_speed, 3, STEPS, 3.0) == (4, 1)


def test_meet_stops_at_the_fastest_setting_when_nothing_reaches_the_target():
    assert meet(_speed, 3, STEPS, 30.0) == (STEPS, 0)


def _row(method: str, speedup: float) -> StudyRow:
    return StudyRow(method, "Euler", 3, speedup, True, 0, 0, 0, 0, 0, 0, 0, 0)


def test_verdicts_pair_per_seed_and_meet_off_target_rivals_with_the_rematched_run():
    seeds = 4
    study = Study()
    psnr = {
        "uniform": np.array([30.0, 31.0, 32.0, 33.0]),
        "forecast": np.array([35.0, 36.5, 37.0, 38.5]),  # +5, +5.5, +5, +5.5 over uniform
        "rival": np.array([34.0, 35.0, 37.5, 36.0]),  # forecast - rival: +1, +1.5, -0.5, +2.5
    }
    for method, speedup in (("uniform", 2.8), ("forecast", 2.8), ("rival", 2.0)):
        study.rows.append(_row(method, speedup))
        study.scores[("Euler", 3, method)] = (psnr[method], np.full(seeds, 0.9))
    # the rival spent more (2.0x): forecast met at its cost scored these instead
    met = np.array([36.0, 37.0, 38.0, 39.0])
    study.rematched[("Euler", 3, "rival")] = (2.05, met, np.full(seeds, 0.95))
    found = {(v.mode, v.rival): v for v in verdicts(study, ("uniform", "forecast"), ("rival",))}
    assert set(found) == {("uniform", "rival"), ("forecast", "rival"), ("forecast", "uniform")}
    against_uniform = found[("forecast", "uniform")]
    assert against_uniform.mode_speedup is None
    assert against_uniform.psnr_diff == pytest.approx(5.25)
    # t(0.975, 3) = 3.18245; differences 5, 5.5, 5, 5.5: sd 0.288675, half width 0.45934
    assert against_uniform.psnr_ci == pytest.approx(0.45934, abs=1e-4)
    assert (against_uniform.psnr, against_uniform.ssim) == ("win", "tie")
    against_rival = found[("forecast", "rival")]
    assert against_rival.mode_speedup == 2.05 and against_rival.rival_speedup == 2.0
    # met - rival: +2, +2, +0.5, +3 (the rematched run, not the cell's)
    assert against_rival.psnr_diff == pytest.approx(1.875)
    assert against_rival.ssim_diff == pytest.approx(0.05) and against_rival.ssim == "win"
    # uniform is not rematched: its own run at 2.8x, -4, -4, -5.5, -3
    plain = found[("uniform", "rival")]
    assert plain.mode_speedup is None and plain.psnr_diff == pytest.approx(-4.125)
    assert plain.psnr == "loss"


def test_an_undefined_difference_is_no_verdict():
    """A seed whose image equals the reference under both methods has PSNR inf - inf = nan."""
    study = Study()
    for method in ("uniform", "forecast"):
        study.rows.append(_row(method, 2.8))
        study.scores[("Euler", 3, method)] = (
            np.array([math.inf, 30.0, 31.0]),
            np.array([1.0, 0.9, 0.8 if method == "uniform" else 0.95]),
        )
    (v,) = verdicts(study, ("uniform", "forecast"), ())
    assert (v.mode, v.rival, v.psnr) == ("forecast", "uniform", "n/a")
    assert v.ssim == "tie"  # +0, +0, +0.15: interval spans 0
