"""Caching against fewer steps at the same cost: the interpolation and the command."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lib_deepcache.bench import cli
from lib_deepcache.bench.fewsteps import interpolated_mse, to_psnr


def test_fewer_steps_error_is_interpolated_between_whole_step_counts():
    """Cost 2.3 of a 5-step run: 0.7 x error(2 steps) + 0.3 x error(3 steps)."""
    errors = {2: np.array([0.5, 0.1]), 3: np.array([0.2, 0.05])}
    got = interpolated_mse(2.3, 5, errors.__getitem__)
    np.testing.assert_allclose(got, [0.7 * 0.5 + 0.3 * 0.2, 0.7 * 0.1 + 0.3 * 0.05])


def test_the_full_step_count_itself_has_no_error():
    """Cost 3.5 of a 4-step run: halfway between 3 steps and the reference (error 0)."""
    got = interpolated_mse(3.5, 4, {3: np.array([0.2])}.__getitem__)
    np.testing.assert_allclose(got, [0.1])


def test_psnr_of_errors_is_capped():
    np.testing.assert_allclose(to_psnr(np.array([0.01, 0.0])), [20.0, 100.0])


def test_few_steps_command(tmp_path):
    """3 steps at interval 3: full at step 0, cached at 1 and 2, for both modes."""
    out = tmp_path / "few.json"
    cli.main(
        [
            "--study", "few-steps", "--samplers", "Euler", "--step-counts", "3",
            "--seeds", "2", "--json", str(out),
        ]
    )  # fmt: skip
    rows = json.loads(out.read_text())
    assert [row["mode"] for row in rows] == ["deepcache", "forecast"]
    for row in rows:
        assert (row["steps"], row["full_steps"], row["cached_steps"]) == (3, 1, 2)
        assert 1 < row["cost"] < 2
        assert row["diff"] == pytest.approx(row["psnr"] - row["fewer_psnr"])
