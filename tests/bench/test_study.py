"""The equal-FLOPs study: its statistics and its command."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lib_deepcache.bench import cli
from lib_deepcache.bench.verdict import MEET_TOLERANCE, paired_ci


def test_paired_interval_is_students_t():
    """Differences 1, 2, 3, 4: mean 2.5, sample sd sqrt(5/3) = 1.29099, t(0.975, 3) = 3.18245
    (table value), half width 3.18245 * 1.29099 / 2 = 2.0543."""
    mean, half = paired_ci(np.array([1.0, 2.0, 3.0, 4.0]))
    assert mean == pytest.approx(2.5)
    assert half == pytest.approx(2.0543, abs=1e-4)


def test_study_command_writes_every_method_at_the_uniform_speedup(tmp_path):
    """Euler, 6 steps, N = 3: uniform refreshes at steps 0 and 3 (2 full / 4 cached); the
    non-uniform schedule and the forecast keep that count, so their speedup matches."""
    out = tmp_path / "study.json"
    cli.main(
        [
            "--study", "equal-flops", "--samplers", "Euler", "--intervals", "3", "--seeds", "2",
            "--steps", "6", "--json", str(out), "--png", str(tmp_path / "curves.png"),
            "--markdown", str(tmp_path / "study.md"),
        ]
    )  # fmt: skip
    report = json.loads(out.read_text())
    rows = {row["method"]: row for row in report["rows"]}
    # the equal-quality table, read off uniform's and forecast's curves over more intervals
    table = (tmp_path / "study.md").read_text().split("Speed at the quality of uniform N = 3")[1]
    assert "| Euler | uniform | 2." in table and "| Euler | forecast |" in table
    assert (tmp_path / "equal-quality.png").stat().st_size > 0
    assert set(rows) == {"uniform", "non-uniform", "adaptive", "forecast", "step-skip"}
    for row in rows.values():
        assert {"method", "sampler", "interval", "flop_speedup", "psnr", "ssim"} <= set(row)
        assert (row["sampler"], row["interval"]) == ("Euler", 3)
    assert (rows["uniform"]["full_steps"], rows["uniform"]["cached_steps"]) == (2, 4)
    assert (rows["forecast"]["full_steps"], rows["forecast"]["cached_steps"]) == (2, 4)
    assert rows["forecast"]["matched"] and rows["non-uniform"]["matched"]
    assert rows["uniform"]["psnr_diff"] == 0
    assert rows["forecast"]["psnr"] != rows["uniform"]["psnr"]
    # step skip counts UNet calls: Euler makes one per step
    assert rows["step-skip"]["full_steps"] + rows["step-skip"]["cached_steps"] == 6
    assert rows["step-skip"]["threshold"] is not None and rows["uniform"]["threshold"] is None
    assert (tmp_path / "curves.png").stat().st_size > 0
    # the bar's verdicts: our modes against the alternatives, forecast also against our others
    pairs = {(v["mode"], v["rival"]) for v in report["verdicts"]}
    assert pairs == {
        (mode, rival)
        for mode in ("uniform", "adaptive", "forecast")
        for rival in ("non-uniform", "step-skip")
    } | {("forecast", "uniform"), ("forecast", "adaptive")}
    assert len(report["scores"]["Euler|3|forecast"][0]) == 2  # per seed
    target = rows["uniform"]["flop_speedup"]
    for v in report["verdicts"]:  # forecast never spends more than a rival off the target
        off = abs(v["rival_speedup"] / target - 1) > 0.01
        assert (v["mode_speedup"] is not None) == (off and v["mode"] == "forecast"), v
        if v["mode_speedup"] is not None:
            assert v["mode_speedup"] >= v["rival_speedup"] * (1 - MEET_TOLERANCE)
    assert "our mode | rival" in (tmp_path / "study.md").read_text()


def test_study_runs_uniform_and_the_methods_asked_for(tmp_path):
    out = tmp_path / "study.json"
    cli.main(
        [
            "--study", "equal-flops", "--samplers", "Euler", "--intervals", "3", "--seeds", "2",
            "--steps", "6", "--methods", "forecast", "--json", str(out),
            "--png", str(tmp_path / "curves.png"),
        ]
    )  # fmt: skip
    rows = json.loads(out.read_text())["rows"]
    assert [row["method"] for row in rows] == ["uniform", "forecast"]
    with pytest.raises(SystemExit):
        cli.parse_args(["--study", "equal-flops", "--methods", "tgate"])


def test_study_refuses_an_unknown_sampler():
    with pytest.raises(SystemExit):
        cli.parse_args(["--study", "equal-flops", "--samplers", "UniPC"])
