"""The benchmark: report structure and FLOP figures (never timings), checkpoint loading."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lib_deepcache.bench import cli as bench
from lib_deepcache.bench import speed
from lib_deepcache.bench.archs import build_unet
from lib_deepcache.bench.flops import count_block_flops, speed_limit
from lib_deepcache.engine.params import DeepCacheParamError, DeepCacheParams

ROOT = Path(__file__).resolve().parents[2]


def test_checkpoints_are_refused_for_diffusers_archs(tmp_path):
    with pytest.raises(SystemExit):
        bench.parse_args(["--arch", "diffusers-sd15", "--checkpoint", str(tmp_path / "x")])


@pytest.mark.parametrize(
    ("argv", "rows"),
    [
        # the quick grid over 6 steps: N=3 refreshes at 0, 3; N=5 non-uniform as often as
        # uniform N=5 (0, 5): 2 full / 4 cached each
        pytest.param([], [("N=3 b=0 uniform", 3, 2), ("N=5 b=1 non-uniform", 5, 2)], id="ldm"),
        # N=2 over 6 steps refreshes at 0, 2, 4: 3 full / 3 cached
        *(
            pytest.param(
                ["--arch", arch, "--grid", "3x0,2x2"],
                [("N=3 b=0 uniform", 3, 2), ("N=2 b=2 uniform", 2, 3)],
                id=arch,
            )
            for arch in ("diffusers-sd15", "diffusers-sdxl")
        ),
    ],
)
def test_quick_bench_writes_a_consistent_report(tmp_path, capsys, argv, rows):
    outputs = ["--json", str(tmp_path / "r.json"), "--markdown", str(tmp_path / "r.md")]
    # three pairs per row, no time budget: a busy machine must not stop rows before them
    report = bench.main(["--quick", "--repeats", "3", "--budget", "0", *argv, *outputs])
    assert [(r.label, r.interval, r.full_steps) for r in report.rows] == rows
    for row in report.rows:
        assert row.full_steps + row.cached_steps == 6
        # FLOP speedup of the run and the limit N / (1 + (N - 1) f), from the measured share f
        share = row.shallow_share
        assert row.flop_speedup == pytest.approx(6 / (row.full_steps + row.cached_steps * share))
        assert row.limit == pytest.approx(row.interval / (1 + (row.interval - 1) * share))
        assert 1 < row.flop_speedup <= row.limit * (1 + 1e-9)
        assert row.unet_seconds_off > 0 and row.unet_seconds_on > 0
        assert row.cache_peak_mb > 0
        # median and range are the three pairs'
        assert len(row.pairs) == 3
        assert row.speedup_low == min(row.pairs) and row.speedup_high == max(row.pairs)
        assert row.speedup_low <= row.measured_speedup <= row.speedup_high
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["settings"]["steps"] == 6 and len(data["rows"]) == 2
    tight = "3 per row (tight: range within 10% of the median), no time budget"
    assert data["settings"]["pairs"] == tight
    assert data["how_to_read"] == report.how_to_read()
    assert data["settings"]["load"].endswith(" cores)")  # how busy the machine was
    assert {"flop_speedup", "limit", "measured_speedup", "pairs", "mark", "cache_peak_mb"} <= set(
        data["rows"][0]
    )
    markdown = (tmp_path / "r.md").read_text()
    assert "| config | full/cached |" in markdown and rows[1][0] in markdown
    assert "| range | pairs |" in markdown
    printed = capsys.readouterr().out
    assert rows[0][0] in printed and report.how_to_read() in printed.splitlines()


def test_the_default_run_is_the_short_paired_grid_and_studies_keep_30_steps():
    args = bench.parse_args([])
    assert [row.label for row in args.grid] == ["N=3 b=0 uniform", "N=5 b=0 uniform"]
    assert (args.steps, args.repeats, args.spread, args.budget) == (10, 5, 0.10, 240.0)
    assert bench.parse_args(["--study", "few-steps"]).steps == 30
    assert bench.parse_args(["--quick"]).steps == 6
    assert bench.parse_args(["--steps", "20", "--quick"]).steps == 20


def test_the_first_lines_carry_no_pkg_resources_warning():
    """k_diffusion imports clip, which imports pkg_resources: setuptools warned on every run.
    A fresh interpreter with Python's default warning filters, not pytest's."""
    code = "import lib_deepcache.bench.cli"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert "pkg_resources" not in done.stderr, done.stderr


# 30 steps: N=2 refreshes at 0, 2, ..., 28 (15 full); N=3 at 0, 3, ..., 27 (10); N=5 at 0, 5,
# ..., 25 (6)
@pytest.mark.parametrize(("interval", "full"), [(2, 15), (3, 10), (5, 6)])
@pytest.mark.parametrize("depth", [0, 1, 2])
def test_sd15_flop_speedup_over_30_steps_is_within_2_percent_of_the_limit(interval, full, depth):
    unet = build_unet("sd15", device="meta")
    counted = count_block_flops(unet, (2, 4, 16, 16), (2, 77, 768))
    share = counted.shallow_share(depth)
    speedup = 30 / (full + (30 - full) * share)
    assert speedup == pytest.approx(speed_limit(interval, share), rel=0.02)
    assert speedup > 1


def test_grid_syntax():
    rows = bench.parse_grid("3x0, 5x1n, 3x2a0.25")
    assert [r.label for r in rows] == [
        "N=3 b=0 uniform",
        "N=5 b=1 non-uniform",
        "N=3 b=2 adaptive t=0.25",
    ]
    assert rows[2].params() == DeepCacheParams(
        True, depth=2, schedule="adaptive", threshold=0.25, max_cached=6
    )
    with pytest.raises(DeepCacheParamError):
        bench.parse_grid("0x0")


def test_checkpoint_weights_load_into_the_unet(tmp_path):
    from safetensors.torch import save_file

    source = build_unet("sd15", width=32, seed=1)
    save_file(
        {f"model.diffusion_model.{k}": v for k, v in source.state_dict().items()}
        | {"first_stage_model.decoder.conv_in.weight": torch.zeros(1)},
        str(tmp_path / "model.safetensors"),
    )
    target = build_unet("sd15", width=32, seed=2)
    speed.load_checkpoint(target, tmp_path / "model.safetensors")
    for key, value in source.state_dict().items():
        assert torch.equal(value, target.state_dict()[key]), key
    with pytest.raises(ValueError, match="does not fit"):
        speed.load_checkpoint(build_unet("sdxl", width=32), tmp_path / "model.safetensors")
    save_file({"other": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not a WebUI checkpoint"):
        speed.load_checkpoint(target, tmp_path / "other.safetensors")
