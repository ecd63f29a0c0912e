"""Few steps: does caching beat the obvious alternative, sampling with fewer steps at the same
UNet cost?

For K steps, the reference is the uncached K-step image of each seed. Caching at interval N
costs ``full + cached * f_0`` full-call equivalents; the alternative spends the same on fewer
uncached steps. That cost is rarely a whole number of steps, so the alternative's error is the
mean squared error interpolated linearly between the uncached runs with the step counts just
below and above it (a mix of the two, at the same average cost), then turned into PSNR. The
difference caching minus alternative is paired per seed, with its 95 % interval.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..engine.params import DeepCacheParams
from .fidelity import FixtureSampler, mse
from .study import SAMPLER_NAMES
from .verdict import paired_ci

MODES = {"deepcache": 0.0, "forecast": 1.0}  # mode name -> forecast strength


@dataclass
class FewStepsRow:
    sampler: str
    steps: int
    mode: str
    full_steps: int
    cached_steps: int
    cost: float  # full-call equivalents
    psnr: float  # caching, against the uncached K-step image
    fewer_psnr: float  # fewer steps at the same cost, against the same
    diff: float  # mean over seeds of the per-seed PSNR difference, caching - fewer
    ci: float


def to_psnr(errors: np.ndarray, cap: float = 100.0) -> np.ndarray:
    """PSNR in dB of per-image errors, capped (an identical image would be infinite)."""
    with np.errstate(divide="ignore"):
        return np.minimum(10 * np.log10(1.0 / errors), cap)


def interpolated_mse(cost: float, steps: int, errors_at: Callable[[int], np.ndarray]) -> np.ndarray:
    """Error of fewer uncached steps at a fractional cost; ``errors_at(k)`` for whole k."""
    low, high = math.floor(cost), math.ceil(cost)
    low_err = errors_at(low) if low >= 1 else np.ones_like(errors_at(high))
    if high == low:
        return low_err
    weight = cost - low
    high_err = errors_at(high) if high < steps else np.zeros_like(low_err)
    return (1 - weight) * low_err + weight * high_err


class _UncachedRuns:
    """The uncached images of one sampler at each step count, sampled once each."""

    def __init__(self, fixture: FixtureSampler, seeds: list[int], sampler: str) -> None:
        self.fixture, self.seeds, self.sampler = fixture, seeds, sampler
        self._runs: dict[int, torch.Tensor] = {}

    def __call__(self, steps: int) -> torch.Tensor:
        if steps not in self._runs:
            self._runs[steps] = self.fixture.sample(self.seeds, steps, self.sampler)[0]
        return self._runs[steps]


def few_steps_study(
    samplers: Sequence[str],
    step_counts: Sequence[int],
    seeds: Sequence[int],
    interval: int = 3,
    depth: int = 0,
    tick: Callable[[str], None] = lambda _: None,
) -> list[FewStepsRow]:
    """Plain DeepCache and forecast 1 at each step count, against fewer steps at equal cost."""
    fixture = FixtureSampler()
    seeds = list(seeds)
    share = fixture.shallow_share(depth, len(seeds))
    rows: list[FewStepsRow] = []
    for name in samplers:
        uncached = _UncachedRuns(fixture, seeds, SAMPLER_NAMES[name])
        for steps in step_counts:
            reference = uncached(steps)
            for mode, strength in MODES.items():
                params = DeepCacheParams(True, interval, depth, forecast=strength, min_steps=0)
                images, stats = fixture.sample(seeds, steps, uncached.sampler, params)
                cost = stats.full_steps + stats.cached_steps * share
                cached = to_psnr(mse(reference, images))
                errors = interpolated_mse(
                    cost, steps, lambda k, ref=reference, runs=uncached: mse(ref, runs(k))
                )
                diff, ci = paired_ci(cached - to_psnr(errors))
                rows.append(
                    FewStepsRow(
                        name, steps, mode, stats.full_steps, stats.cached_steps, cost,
                        float(np.mean(cached)), float(np.mean(to_psnr(errors))), diff, ci,
                    )
                )  # fmt: skip
                tick(f"{name} K={steps} {mode}")
    return rows


def to_markdown(rows: Sequence[FewStepsRow], header: str) -> str:
    lines = [
        header,
        "",
        "| sampler | K | mode | full/cached | cost (steps) | PSNR dB | fewer steps, same cost"
        " | Δ (95 % CI) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.sampler} | {r.steps} | {r.mode} | {r.full_steps}/{r.cached_steps} | "
            f"{r.cost:.2f} | {r.psnr:.2f} | {r.fewer_psnr:.2f} | {r.diff:+.2f} ± {r.ci:.2f} |"
        )
    return "\n".join(lines) + "\n"
