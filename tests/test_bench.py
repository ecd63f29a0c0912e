"""The benchmark command runs end to end and reports consistent figures (never timings)."""

from __future__ import annotations

from lib_deepcache import bench
from lib_deepcache.flops import speed_limit


def test_bench_reports_counts_times_and_flop_speedup(capsys):
    result = bench.main(["--width", "32", "--steps", "6", "--size", "16", "--interval", "3"])
    out = capsys.readouterr().out
    assert (result.full_steps, result.cached_steps) == (2, 4)
    assert result.seconds_off > 0 and result.seconds_on > 0
    assert 1 < result.flop_speedup <= speed_limit(3, result.shallow_share) * (1 + 1e-9)
    for label in ("full / cached steps", "uncached time", "DeepCache time", "measured speedup"):
        assert label in out
