"""The transformer study's matching, equal-quality reading and command (the command's output
shape, not its result)."""

from __future__ import annotations

import json

import pytest
import torch

from lib_deepcache.bench import cli
from lib_deepcache.bench.dit_study import closest_integer, match_threshold
from lib_deepcache.bench.equal_quality import speed_at
from lib_deepcache.bench.fidelity import Calibrated
from lib_deepcache.bench.verdict import MEET_TOLERANCE


def _fake(speed_of):
    tried = []

    def run(knob):
        tried.append(knob)
        return Calibrated(knob, speed_of(knob), torch.zeros(1), (0, 0))

    return run, tried


def test_match_threshold_lands_within_tolerance_of_a_monotone_speed():
    """Speed 1 + log10(1 + 100 t): the target 2.5 is reached at t = (10**1.5 - 1) / 100."""
    import math

    run, tried = _fake(lambda t: 1 + math.log10(1 + 100 * t))
    found = match_threshold(run, 2.5)
    assert abs(found.flop_speedup / 2.5 - 1) <= 0.01
    assert found.threshold == pytest.approx((10**1.5 - 1) / 100, rel=0.05)
    assert len(tried) <= 8


def test_closest_integer_stops_past_the_target_or_when_speed_saturates():
    run, tried = _fake(lambda k: 1 + 0.4 * k)  # 1.8, 2.2, 2.6, ...
    assert closest_integer(run, 2.5).threshold == 4 and tried == [2, 3, 4]
    run, tried = _fake(lambda k: min(1.3, 1 + 0.1 * k))  # saturates at 1.3 from k = 3
    assert closest_integer(run, 2.0).threshold == 3 and tried == [2, 3, 4]


def test_speed_at_interpolates_past_the_fastest_point_at_the_bar():
    curve = [(1.0, 40.0), (2.0, 36.0), (3.0, 30.0)]
    assert speed_at(curve, 36.0) == pytest.approx(2.0)
    assert speed_at(curve, 33.0) == pytest.approx(2.5)  # halfway from 36 at 2x to 30 at 3x
    assert speed_at(curve, 30.0) == pytest.approx(3.0)
    assert speed_at(curve, 41.0) is None
    # a non-monotone curve: the fastest point at the bar counts
    assert speed_at([(1.0, 30.0), (2.0, 37.0), (3.0, 20.0)], 36.0) == pytest.approx(2.0 + 1 / 17)


def test_dit_study_command_prints_the_three_tables(tmp_path, capsys):
    out = tmp_path / "dit.json"
    cli.main(
        [
            "--study", "equal-flops", "--family", "dit", "--samplers", "Euler",
            "--intervals", "3", "--seeds", "2", "--steps", "6",
            "--methods", "forecast,fbcache,taylorseer,teacache",
            "--json", str(out), "--png", str(tmp_path / "eq.png"),
        ]
    )  # fmt: skip
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    methods = [row["method"] for row in report["rows"]]
    assert methods == ["uniform", "forecast", "fbcache", "taylorseer", "teacache"]
    uniform = report["rows"][0]
    assert (uniform["full_steps"], uniform["cached_steps"]) == (2, 4)  # full 0, 3
    # forecast's own interval 3 runs 0, 1 and 4 full (its warm-up): 3 / 3, slower than the
    # cell; met at its cost by interval 5 (0, 1 full, then nothing left to refresh): 2 / 4
    forecast = report["rows"][1]
    assert (forecast["full_steps"], forecast["cached_steps"]) == (2, 4)
    assert forecast["flop_speedup"] == pytest.approx(uniform["flop_speedup"])
    modes = {(v["mode"], v["rival"]) for v in report["verdicts"]}
    assert modes == {(m, r) for m in ("uniform", "forecast") for r in methods[2:]} | {
        ("forecast", "uniform")
    }
    assert all(v["psnr"] in ("win", "tie", "loss") for v in report["verdicts"])
    # a rival off the cell's speedup is met by forecast at its cost or less
    target = uniform["flop_speedup"]
    for v in report["verdicts"]:
        off = abs(v["rival_speedup"] / target - 1) > 0.01
        assert (v["mode_speedup"] is not None) == (off and v["mode"] == "forecast"), v
        if v["mode_speedup"] is not None:  # never spending more than the rival it meets
            assert v["mode_speedup"] >= v["rival_speedup"] * (1 - MEET_TOLERANCE)
    bar_speed, bar_psnr, _ = report["bars"]["Euler"]
    assert bar_speed > 1 and bar_psnr > 0
    assert {q["method"] for q in report["equal_quality"]} >= set(methods)
    assert "our mode" in printed and "Speed at the quality" in printed
    assert (tmp_path / "eq.png").stat().st_size > 0


def test_family_picks_its_methods():
    with pytest.raises(SystemExit):
        cli.parse_args(["--study", "equal-flops", "--methods", "pab"])
    args = cli.parse_args(["--study", "equal-flops", "--family", "dit", "--methods", "pab"])
    assert args.methods == ["uniform", "pab"] and args.intervals == [2, 3]
    assert args.samplers == ["Euler", "DPM++ 2M"]
