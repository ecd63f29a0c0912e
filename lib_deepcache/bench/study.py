"""The equal-FLOPs study: each caching method against uniform DeepCache at the same UNet FLOP
speedup, on the trained fixture.

Per sampler and interval N (the speedup of uniform N at the study's depth is the target): the
uncached images of every seed are the reference; each method samples the same seeds; PSNR and
SSIM are taken per image, and the difference to uniform is paired per seed, with its 95 %
confidence interval (Student's t over the seeds). Methods whose FLOP speedup is set by their
schedule (non-uniform, forecast) match uniform's by construction; the thresholds of adaptive
and step skip are calibrated to it, and a row says whether it matched within 1 %. Step skip
(:mod:`.stepskip`) counts UNet calls where the others count steps. The bar's verdicts, our
modes against the alternatives per seed, are the transformer study's (:mod:`.verdict`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from ..engine.params import DeepCacheParams
from . import equal_quality
from .equal_quality import Point
from .fidelity import (
    Calibrated,
    FixtureSampler,
    calibrate_step_skip,
    calibrate_threshold,
    counts,
    flop_speedup,
    per_image,
)
from .records import Study, StudyRow
from .verdict import (
    BEST,
    meet,
    off_target,
    paired_ci,
    scores_json,
    verdicts,
    verdicts_json,
)

# The WebUI's sampler names, and the k-diffusion functions behind them (harness.SAMPLERS).
SAMPLER_NAMES = {
    "Euler": "euler",
    "Euler a": "euler_ancestral",
    "DPM++ 2M": "dpmpp_2m",
    "DPM++ SDE": "dpmpp_sde",
}
METHODS = ("uniform", "non-uniform", "adaptive", "forecast", "step-skip")
OURS = ("uniform", "adaptive", "forecast")
ALTERNATIVES = ("non-uniform", "step-skip")  # the paper's schedule; FBCache / TeaCache's kind


def equal_flops_study(
    samplers: Sequence[str],
    intervals: Sequence[int],
    seeds: Sequence[int],
    steps: int = 30,
    depth: int = 0,
    methods: Sequence[str] = METHODS,
    tick: Callable[[str], None] = lambda _: None,
) -> Study:
    """Uniform and each of ``methods`` per (sampler, interval); ``tick`` after each run. A rival
    whose run landed off the cell's speedup is also met by forecast at its cost
    (:func:`.verdict.meet`)."""
    fixture = FixtureSampler()
    seeds = list(seeds)
    share = fixture.shallow_share(depth, len(seeds))
    methods = ["uniform"] + [m for m in methods if m != "uniform"]
    study = Study()
    for name in samplers:
        sampler = SAMPLER_NAMES[name]
        reference, _ = fixture.sample(seeds, steps, sampler)
        tick(f"{name} uncached")
        for interval in intervals:
            scores: dict[str, tuple[np.ndarray, np.ndarray]] = {}
            target = 0.0
            for method in methods:
                if method == "adaptive":
                    found = calibrate_threshold(
                        fixture, seeds, steps, sampler, target, share, depth, 2 * interval
                    )
                elif method == "step-skip":
                    found = calibrate_step_skip(fixture, seeds, steps, sampler, target)
                else:
                    found = _run(
                        fixture, seeds, steps, sampler, _params(method, interval, depth), share
                    )
                target = target or found.flop_speedup  # uniform runs first
                scores[method] = per_image(reference, found.images)
                study.scores[(name, interval, method)] = scores[method]
                study.rows.append(study_row(method, name, interval, target, found, scores))
                if BEST in methods and method != BEST and off_target(found.flop_speedup, target):
                    met = _forecast_at(
                        fixture, seeds, steps, sampler, (interval, depth), share, found
                    )
                    study.rematched[(name, interval, method)] = (
                        met.flop_speedup,
                        *per_image(reference, met.images),
                    )
                tick(f"{name} N={interval} {method}")
    return study


def _run(
    fixture: FixtureSampler, seeds: list[int], steps: int, sampler: str,
    params: DeepCacheParams, share: float,
) -> Calibrated:  # fmt: skip
    images, stats = fixture.sample(seeds, steps, sampler, params)
    return Calibrated(None, flop_speedup(stats, share), images, counts(stats))


def _forecast_at(
    fixture: FixtureSampler, seeds: list[int], steps: int, sampler: str,
    cell: tuple[int, int], share: float, rival: Calibrated,
) -> Calibrated:  # fmt: skip
    """Forecast at the rival's cost or less (:func:`.verdict.meet`); the setting is found on two
    seeds (the speedup is the schedule's, the same for any batch), then run on all."""
    interval, depth = cell

    def params(n: int, k: int) -> DeepCacheParams:
        return replace(_params(BEST, n, depth), start=k / steps)

    def speed(n: int, k: int) -> float:
        return _run(fixture, seeds[:2], steps, sampler, params(n, k), share).flop_speedup

    found = meet(speed, interval, steps, rival.flop_speedup)
    return _run(fixture, seeds, steps, sampler, params(*found), share)


def curve_points(
    samplers: Sequence[str],
    intervals: Sequence[int],
    seeds: Sequence[int],
    steps: int = 30,
    depth: int = 0,
) -> list[Point]:
    """Uniform and forecast at more intervals: points of their speed/fidelity curves, for the
    equal-quality table (:mod:`.equal_quality`)."""
    fixture = FixtureSampler()
    seeds = list(seeds)
    share = fixture.shallow_share(depth, len(seeds))
    points = []
    for name in samplers:
        reference, _ = fixture.sample(seeds, steps, SAMPLER_NAMES[name])
        for interval in intervals:
            for method in ("uniform", "forecast"):
                params = _params(method, interval, depth)
                images, stats = fixture.sample(seeds, steps, SAMPLER_NAMES[name], params)
                psnr, ssim = per_image(reference, images)
                speed = flop_speedup(stats, share)
                points.append(Point(method, name, interval, speed, psnr.mean(), ssim.mean()))
    return points


def equal_quality_report(
    rows: Sequence[StudyRow], curve_intervals: Sequence[int], seeds: Sequence[int], steps: int,
    png: Path,
) -> str:  # fmt: skip
    """The equal-quality table of the UNet study (rows plus :func:`curve_points`); its plot."""
    samplers = list(dict.fromkeys(r.sampler for r in rows))
    intervals = [n for n in curve_intervals if n not in {r.interval for r in rows}]
    points = row_points(rows) + curve_points(samplers, intervals, seeds, steps)
    bars = {
        r.sampler: (r.flop_speedup, r.psnr, r.ssim)
        for r in rows
        if r.method == "uniform" and r.interval == 3
    }
    if bars:
        equal_quality.save_plot(points, bars, png)
    return equal_quality.to_markdown(
        equal_quality.equal_quality(points, bars), "Speed at the quality of uniform N = 3"
    )


def row_points(rows: Sequence[StudyRow]) -> list[Point]:
    """The study's own rows as curve points."""
    return [Point(r.method, r.sampler, r.threshold, r.flop_speedup, r.psnr, r.ssim) for r in rows]


def _params(method: str, interval: int, depth: int) -> DeepCacheParams:
    if method == "forecast":
        return DeepCacheParams(True, interval, depth, forecast=1.0)
    return DeepCacheParams(True, interval, depth, schedule=method)


def study_row(
    method: str,
    sampler: str,
    interval: int,
    target: float,
    found: Calibrated,
    scores: dict[str, tuple[np.ndarray, np.ndarray]],
) -> StudyRow:
    """One method's row; its differences are paired per seed with uniform's scores."""
    psnr, ssim = scores[method]
    base_psnr, base_ssim = scores["uniform"]
    psnr_diff, psnr_ci = paired_ci(psnr - base_psnr)
    ssim_diff, ssim_ci = paired_ci(ssim - base_ssim)
    full, cached = found.counts
    return StudyRow(
        method,
        sampler,
        interval,
        found.flop_speedup,
        not off_target(found.flop_speedup, target),
        full,
        cached,
        float(np.mean(psnr)),
        float(np.mean(ssim)),
        psnr_diff,
        psnr_ci if method != "uniform" else 0.0,
        ssim_diff,
        ssim_ci if method != "uniform" else 0.0,
        found.threshold,
    )


def to_json(study: Study) -> str:
    """The rows, the verdicts of the bar and every matched run's per-seed scores."""
    return json.dumps(
        {
            "rows": [{**asdict(r), "wins": r.wins} for r in study.rows],
            "verdicts": verdicts_json(verdicts(study, OURS, ALTERNATIVES)),
            "scores": scores_json(study),
        },
        indent=1,
    )


def to_markdown(rows: Sequence[StudyRow], header: str) -> str:
    lines = [
        header,
        "",
        "| sampler | N | method | full/cached | FLOP speedup | PSNR dB"
        " | Δ PSNR vs uniform (95 % CI) | SSIM | Δ SSIM vs uniform (95 % CI) | beats uniform |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        speed = f"{r.flop_speedup:.2f}x" + ("" if r.matched else " (not matched)")
        if r.threshold is not None:
            speed += f", threshold {r.threshold:.3g}"
        if r.method == "uniform":
            d_psnr = d_ssim = "-"
            verdict = "-"
        else:
            d_psnr = f"{r.psnr_diff:+.2f} ± {r.psnr_ci:.2f}"
            d_ssim = f"{r.ssim_diff:+.4f} ± {r.ssim_ci:.4f}"
            verdict = "yes" if r.wins and r.matched else "no"
        lines.append(
            f"| {r.sampler} | {r.interval} | {r.method} | {r.full_steps}/{r.cached_steps} | "
            f"{speed} | {r.psnr:.2f} | {d_psnr} | {r.ssim:.4f} | {d_ssim} | {verdict} |"
        )
    return "\n".join(lines) + "\n"


def save_curves(rows: Sequence[StudyRow], path: Path) -> None:
    """PSNR against FLOP speedup, one panel per sampler, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    samplers = list(dict.fromkeys(r.sampler for r in rows))
    figure, axes = plt.subplots(1, len(samplers), figsize=(4.5 * len(samplers), 3.6), squeeze=False)
    for ax, sampler in zip(axes[0], samplers, strict=True):
        for method in METHODS:
            points = sorted(
                (r.flop_speedup, r.psnr)
                for r in rows
                if r.sampler == sampler and r.method == method
            )
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", label=method)
        ax.set_title(sampler)
        ax.set_xlabel("UNet FLOP speedup")
        ax.set_ylabel("PSNR vs uncached (dB)")
        ax.grid(alpha=0.3)
    axes[0][0].legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
