"""The adaptive schedule against the uniform and non-uniform ones at matched FLOP speedups."""

from __future__ import annotations

from collections.abc import Sequence

from ..engine.params import DeepCacheParams
from .fidelity import FixtureSampler, calibrate_threshold, compare, flop_speedup
from .speed import QUALITY_SEEDS


def adaptive_study(steps: int, samplers: Sequence[str], intervals: Sequence[int]) -> str:
    """Adaptive against uniform and non-uniform at matched FLOP speedups, on the fixture.

    For each sampler and interval N (depth 0): the uniform and non-uniform schedules' FLOP
    speedups and PSNRs, and the adaptive schedule with its threshold calibrated to the uniform
    schedule's FLOP speedup. Returns a markdown table.
    """
    fixture_sampler = FixtureSampler()
    share = fixture_sampler.shallow_share(0, len(QUALITY_SEEDS))
    lines = [
        f"trained fixture, {len(QUALITY_SEEDS)} seeds, {steps} steps, depth 0, "
        f"shallow share f_0 = {share:.2%}",
        "",
        "| sampler | N | schedule | threshold | full/cached | FLOP speedup | PSNR dB | SSIM |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for sampler in samplers:
        reference, _ = fixture_sampler.sample(QUALITY_SEEDS, steps, sampler)
        for interval in intervals:
            uniform_speedup = 0.0
            for schedule in ("uniform", "non-uniform"):
                params = DeepCacheParams(True, interval, 0, schedule=schedule)
                images, stats = fixture_sampler.sample(QUALITY_SEEDS, steps, sampler, params)
                speedup = flop_speedup(stats, share)
                uniform_speedup = uniform_speedup or speedup
                quality = compare(reference, images)
                lines.append(
                    f"| {sampler} | {interval} | {schedule} | - | {stats.full_steps}/"
                    f"{stats.cached_steps} | {speedup:.2f}x | {quality.psnr:.2f} | "
                    f"{quality.ssim:.4f} |"
                )
            found = calibrate_threshold(
                fixture_sampler,
                QUALITY_SEEDS,
                steps,
                sampler,
                uniform_speedup,
                share,
                max_cached=2 * interval,
            )
            quality = compare(reference, found.images)
            lines.append(
                f"| {sampler} | {interval} | adaptive (max cached {2 * interval}) | "
                f"{found.threshold:.4g} | {found.stats.full_steps}/{found.stats.cached_steps} | "
                f"{found.flop_speedup:.2f}x | {quality.psnr:.2f} | {quality.ssim:.4f} |"
            )
    return "\n".join(lines) + "\n"
