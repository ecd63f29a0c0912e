"""The equal-FLOPs study on the transformer fixture (``--study equal-flops --family dit``).

Per sampler and interval N: the uncached images of every seed are the reference; uniform
DeepCache at interval N (depth 0: the whole block stack skipped on cached steps) sets the target
FLOP speedup; every other method is turned to it: forecast, whose warm-up costs one full step
more than uniform at the same interval, at the setting closest to it (:func:`.verdict.meet`),
the threshold methods (adaptive, first-block cache, MagCache, TeaCache, cache-dit)
are bisected to it, and the integer ones (PAB and FasterCache's attention reuse range,
TaylorSeer's cache interval) take the value whose speedup comes closest. A rival that lands off
the target is also met by forecast at its own cost or less (:func:`.verdict.meet`), so every
verdict of forecast compares equal costs. Speedups are measured per run (:mod:`.dit_sampler`).
Every run made on the way is kept as a point of its method's speed/fidelity curve, for the
equal-quality table (:mod:`.equal_quality`), whose bar is classic DeepCache: interval 3 with the
first and the last block live (depth 1).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np

from ..engine.params import DeepCacheParams
from ..engine.session import DeepCacheSession
from . import alternatives
from .dit_sampler import DitRun, DitSampler, Method
from .equal_quality import Point
from .fidelity import Calibrated, per_image
from .records import Study
from .study import SAMPLER_NAMES, study_row
from .teacache import ChangeRecorder, fit_coefficients
from .verdict import BEST, meet, off_target

OURS = ("uniform", "adaptive", "forecast")
ALTERNATIVES = (
    "pab", "fastercache", "fbcache", "taylorseer", "magcache", "teacache", "cache-dit",
)  # fmt: skip
DIT_METHODS = OURS + ALTERNATIVES
INTEGER_KNOBS = ("pab", "fastercache", "taylorseer")
CALIBRATION_SEEDS = (1000, 1001, 1002, 1003)  # TeaCache's fit and MagCache's ratios
PROBE_SEEDS = 4  # the first seeds, on which knobs are matched before the run on all
# The equal-quality bar: the paper's DeepCache on a transformer, the outermost block pair live
CLASSIC = "deepcache"
CLASSIC_PARAMS = DeepCacheParams(True, 3, 1)


class _Cell:
    """One sampler's runs: the reference, the per-sampler calibrations, and run bookkeeping."""

    def __init__(
        self, dit: DitSampler, name: str, seeds: list[int], steps: int, study: Study | None
    ) -> None:
        self.dit, self.name, self.seeds, self.steps, self.study = dit, name, seeds, steps, study
        self.sampler = SAMPLER_NAMES[name]
        self.reference = dit.sample(seeds, steps, self.sampler)
        self._calibrated: dict[str, list[float]] = {}

    def run(self, method: str, knob: float | None, make: Method) -> Calibrated:
        counts = (0, 0)
        sessions: list[DeepCacheSession] = []

        def tracked(sampler: DitSampler, steps: int):
            context = make(sampler, steps)
            if isinstance(context, DeepCacheSession):
                sessions.append(context)
            return context

        result: DitRun = self.dit.sample(self.seeds, self.steps, self.sampler, tracked)
        if sessions:
            counts = (sessions[0].stats.full_steps, sessions[0].stats.cached_steps)
        speedup = self.reference.flops / result.flops
        psnr, ssim = per_image(self.reference.images, result.images)
        if self.study is not None:  # a probe's runs (fewer seeds) are no curve points
            fidelity = float(np.mean(psnr)), float(np.mean(ssim))
            self.study.points.append(Point(method, self.name, knob, speedup, *fidelity))
        return Calibrated(knob, speedup, result.images, counts)

    def factory(self, method: str, interval: int) -> Callable[[float], Method]:
        """The method at a knob value. MagCache's ratios and TeaCache's polynomial are
        calibrated once per sampler; MagCache may skip up to 2N steps in a row, as adaptive."""
        if method == "magcache":
            if "magcache" not in self._calibrated:
                self._calibrated["magcache"] = alternatives.mag_ratios(
                    self.dit, self.steps, self.sampler
                )
            return alternatives.magcache(self._calibrated["magcache"], 2 * interval)
        if method == "teacache":
            if "teacache" not in self._calibrated:
                with ChangeRecorder(self.dit.model) as seen:
                    self.dit.sample(list(CALIBRATION_SEEDS), self.steps, self.sampler)
                self._calibrated["teacache"] = fit_coefficients(seen.inputs, seen.outputs)
            return alternatives.teacache(self._calibrated["teacache"])
        simple = {
            "pab": alternatives.pab,
            "fastercache": alternatives.fastercache,
            "fbcache": alternatives.fbcache,
            "taylorseer": alternatives.taylorseer,
            "cache-dit": alternatives.cache_dit,
        }
        return simple[method]


def ours(params: DeepCacheParams) -> Method:
    return lambda sampler, steps: DeepCacheSession(
        sampler.model, params, steps, sampler.timestep_grid(steps)
    )


def dit_study(
    samplers: Sequence[str],
    intervals: Sequence[int],
    seeds: Sequence[int],
    steps: int = 30,
    methods: Sequence[str] = DIT_METHODS,
    curve_intervals: Sequence[int] = (),
    tick: Callable[[str], None] = lambda _: None,
    dit: DitSampler | None = None,
) -> Study:
    """Uniform and each of ``methods`` per (sampler, interval); uniform and forecast also at
    ``curve_intervals`` (curve points only); ``tick`` after each matched method."""
    dit = dit or DitSampler()
    study = Study()
    methods = ["uniform"] + [m for m in methods if m != "uniform"]
    for name in samplers:
        cell = _Cell(dit, name, list(seeds), steps, study)
        probe = _Cell(dit, name, list(seeds)[:PROBE_SEEDS], steps, None)
        tick(f"{name} uncached")
        classic = cell.run(CLASSIC, CLASSIC_PARAMS.interval, ours(CLASSIC_PARAMS))
        study.bars[name] = (classic.flop_speedup, *_means(cell, classic))
        for interval in intervals:
            scores: dict[str, tuple[np.ndarray, np.ndarray]] = {}
            target = 0.0
            for method in methods:
                found = _match(cell, probe, method, interval, target)
                target = target or found.flop_speedup  # uniform runs first
                scores[method] = per_image(cell.reference.images, found.images)
                study.scores[(name, interval, method)] = scores[method]
                study.rows.append(study_row(method, name, interval, target, found, scores))
                if BEST in methods and method != BEST and off_target(found.flop_speedup, target):
                    met = _forecast_at(cell, probe, interval, found.flop_speedup)
                    psnr, ssim = per_image(cell.reference.images, met.images)
                    study.rematched[(name, interval, method)] = (met.flop_speedup, psnr, ssim)
                tick(f"{name} N={interval} {method}")
        for interval in curve_intervals:
            for method in ("uniform", "forecast"):
                if method in methods and interval not in intervals:
                    cell.run(method, interval, ours(_params(method, interval)))
    return study


def _means(cell: _Cell, run: Calibrated) -> tuple[float, float]:
    psnr, ssim = per_image(cell.reference.images, run.images)
    return float(np.mean(psnr)), float(np.mean(ssim))


def _forecast_at(cell: _Cell, probe: _Cell, interval: int, speedup: float) -> Calibrated:
    """Forecast at a rival's cost or less (:func:`.verdict.meet`), its setting found on the
    probe's seeds (the speedup is the schedule's), then run on all seeds."""

    def params(n: int, k: int) -> DeepCacheParams:
        return replace(_params(BEST, n), start=k / cell.steps)

    def speed(n: int, k: int) -> float:
        return probe.run(BEST, None, ours(params(n, k))).flop_speedup

    found = meet(speed, interval, cell.steps, speedup)
    return cell.run(BEST, None, ours(params(*found)))


def _params(method: str, interval: int, threshold: float | None = None) -> DeepCacheParams:
    if method == "forecast":
        return DeepCacheParams(True, interval, 0, forecast=1.0)
    if method == "adaptive":
        return DeepCacheParams(
            True, depth=0, schedule="adaptive", threshold=threshold, max_cached=2 * interval
        )
    return DeepCacheParams(True, interval, 0)


def _match(cell: _Cell, probe: _Cell, method: str, interval: int, target: float) -> Calibrated:
    """The method's run on all seeds at the setting matched on the probe's first seeds (a
    sampling run of a few seeds costs a fraction of one of all; the row then says whether the
    final run's speedup matched). Forecast at interval N costs one full step more than uniform
    N on a transformer (its warm-up, ``schedule.FORECAST_WARMUP``): it is met at the cell's cost
    (:func:`_forecast_at`)."""
    if method in ("uniform", "forecast"):
        found = cell.run(method, interval, ours(_params(method, interval)))
        if method == BEST and target and off_target(found.flop_speedup, target):
            return _forecast_at(cell, probe, interval, target)
        return replace(found, threshold=None)
    if method == "adaptive":
        make: Callable[[float], Method] = lambda t: ours(_params(method, interval, t))  # noqa: E731
    else:
        make = cell.factory(method, interval)
    if method in INTEGER_KNOBS:
        knob = closest_integer(lambda k: probe.run(method, k, make(k)), target).threshold
    else:
        knob = match_threshold(lambda t: probe.run(method, t, make(t)), target).threshold
    return cell.run(method, knob, make(knob))


def match_threshold(
    run: Callable[[float], Calibrated],
    target: float,
    iterations: int = 8,
    tolerance: float = 0.01,
    low: float = 1e-3,
    high: float = 10.0,
) -> Calibrated:
    """The threshold whose speedup is closest to the target, for a method whose speedup grows
    with its threshold: false position in log threshold between a bracket's measured ends
    (bisection when a bracket end is not measured yet, or the step would hug an end), stopping
    within ``tolerance``. Fewer runs than plain bisection, each run being a whole sampling."""
    ends: dict[str, Calibrated | None] = {"low": None, "high": None}
    best: Calibrated | None = None
    for _ in range(iterations):
        guess = math.sqrt(low * high)
        lo, hi = ends["low"], ends["high"]
        if lo is not None and hi is not None and hi.flop_speedup > lo.flop_speedup:
            share = (target - lo.flop_speedup) / (hi.flop_speedup - lo.flop_speedup)
            share = min(max(share, 0.1), 0.9)
            guess = math.exp(math.log(low) + share * (math.log(high) - math.log(low)))
        found = run(guess)
        if best is None or abs(found.flop_speedup - target) < abs(best.flop_speedup - target):
            best = found
        if abs(found.flop_speedup / target - 1) <= tolerance:
            break
        if found.flop_speedup < target:
            low, ends["low"] = guess, found
        else:
            high, ends["high"] = guess, found
    assert best is not None
    return best


def closest_integer(
    run: Callable[[int], Calibrated], target: float, first: int = 2, last: int = 12
) -> Calibrated:
    """The integer setting whose speedup is closest to the target, for a method that speeds
    up as the setting grows: tried upwards until the target is passed or the speedup stops
    growing (a method that cannot reach the target returns its fastest setting)."""
    best: Calibrated | None = None
    for knob in range(first, last + 1):
        found = run(knob)
        improves = best is None or found.flop_speedup > best.flop_speedup * 1.005
        if best is None or abs(found.flop_speedup - target) < abs(best.flop_speedup - target):
            best = found
        if found.flop_speedup >= target or not improves:
            break
    assert best is not None
    return best
