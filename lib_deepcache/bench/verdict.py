"""The bar of both equal-FLOPs studies: our modes against each alternative, per cell and seed.

A study records, per (sampler, interval N, method), the per-seed PSNR and SSIM of the method's
run at the cell's FLOP speedup (uniform DeepCache at N sets it). A verdict is the paired
difference of one of our modes to one rival with its 95 % interval: "win" (whole interval above
0), "tie" (spanning 0), "loss" (whole interval below 0).

Equal cost in every verdict of the best mode (forecast): a rival whose matched run landed more
than the tolerance off the cell's speedup (whole-call or integer granularity, a threshold matched
on a few seeds) meets forecast run again at that rival's own speedup or faster (:func:`meet`), so
forecast never spends more FLOPs than what it is compared with (give or take
:data:`MEET_TOLERANCE`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from .records import Study

MATCH_TOLERANCE = 0.01
# meeting a rival: at least as fast, give or take this (FLOP counts of the same number of full
# steps differ by a few tenths of a percent between methods' own extra work)
MEET_TOLERANCE = 0.005
BEST = "forecast"  # our closest mode at equal cost, the one judged against the bar


@dataclass(frozen=True)
class Verdict:
    sampler: str
    interval: int
    mode: str
    rival: str
    rival_speedup: float
    mode_speedup: float | None  # set where the mode was run again at the rival's cost
    psnr_diff: float
    psnr_ci: float
    ssim_diff: float
    ssim_ci: float

    @staticmethod
    def _word(diff: float, ci: float) -> str:
        """win / tie / loss; "n/a" where the difference is undefined (an image identical to
        the reference under both methods has an infinite PSNR)."""
        if not math.isfinite(diff):
            return "n/a"
        return "win" if diff - ci > 0 else "loss" if diff + ci < 0 else "tie"

    @property
    def psnr(self) -> str:
        return self._word(self.psnr_diff, self.psnr_ci)

    @property
    def ssim(self) -> str:
        return self._word(self.ssim_diff, self.ssim_ci)


def paired_ci(diff: np.ndarray) -> tuple[float, float]:
    """Mean of paired differences and the half width of its 95 % t interval."""
    from scipy import stats

    n = len(diff)
    mean = float(np.mean(diff))
    if n < 2:
        return mean, math.inf
    half = float(stats.t.ppf(0.975, n - 1) * np.std(diff, ddof=1) / math.sqrt(n))
    return mean, half


def off_target(speedup: float, target: float) -> bool:
    """Whether a rival's run landed more than the tolerance off the cell's speedup."""
    return abs(speedup / target - 1) > MATCH_TOLERANCE


def verdicts(study: Study, ours: Sequence[str], alternatives: Sequence[str]) -> list[Verdict]:
    """Each of our modes against each alternative in each cell; the best mode also against our
    other modes (the default among them)."""
    rows = {(r.sampler, r.interval, r.method): r for r in study.rows}
    out = []
    for (sampler, interval, mode), mine in study.scores.items():
        if mode not in ours:
            continue
        rivals = [*alternatives, *(m for m in ours if m != mode)] if mode == BEST else alternatives
        for rival in rivals:
            key = (sampler, interval, rival)
            if key not in study.scores:
                continue
            mode_speedup, psnr, ssim = None, *mine
            if mode == BEST and key in study.rematched:
                mode_speedup, psnr, ssim = study.rematched[key]
            theirs = study.scores[key]
            out.append(
                Verdict(
                    sampler, interval, mode, rival, rows[key].flop_speedup, mode_speedup,
                    *paired_ci(psnr - theirs[0]), *paired_ci(ssim - theirs[1]),
                )
            )  # fmt: skip
    return out


def verdict_markdown(rows: Sequence[Verdict], targets: dict[tuple[str, int], float]) -> str:
    lines = [
        "Δ = our mode - rival per seed, mean and 95 % CI; win / tie / loss by the interval",
        "",
        "| sampler | N | our mode | rival (its speedup) | Δ PSNR dB | Δ SSIM | PSNR | SSIM |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for v in rows:
        target = targets[(v.sampler, v.interval)]
        speed = f"{v.rival_speedup:.2f}x"
        if off_target(v.rival_speedup, target):
            speed += ", slower" if v.rival_speedup < target else ", faster"
        mode = v.mode if v.mode_speedup is None else f"{v.mode} at {v.mode_speedup:.2f}x"
        lines.append(
            f"| {v.sampler} | {v.interval} | {mode} | {v.rival} ({speed}) | "
            f"{v.psnr_diff:+.2f} ± {v.psnr_ci:.2f} | {v.ssim_diff:+.4f} ± {v.ssim_ci:.4f} | "
            f"{v.psnr} | {v.ssim} |"
        )
    return "\n".join(lines) + "\n"


def verdicts_json(rows: Sequence[Verdict]) -> list[dict[str, object]]:
    return [{**asdict(v), "psnr": v.psnr, "ssim": v.ssim} for v in rows]


def scores_json(study: Study) -> dict[str, list[list[float]]]:
    return {
        f"{sampler}|{interval}|{method}": [psnr.tolist(), ssim.tolist()]
        for (sampler, interval, method), (psnr, ssim) in study.scores.items()
    }


def meet(
    speed: Callable[[int, int], float], interval: int, steps: int, target: float
) -> tuple[int, int]:
    """The (interval, full first steps k) of the best mode whose speedup is the closest to
    ``target`` that is still at least as fast (within :data:`MEET_TOLERANCE`): a rival that
    spent more is met at a longer run of full first steps (``start`` = k / steps), one that
    spent less at a longer interval slowed the same way (up to an interval of ``steps``:
    nothing is faster). ``speed(interval, k)`` measures one setting; more full steps are never
    faster."""
    floor = target * (1 - MEET_TOLERANCE)
    while interval < steps and speed(interval, 0) < floor:
        interval += 1
    low, high = 0, steps - 1
    if speed(interval, high) >= floor:
        return interval, high
    while high - low > 1:  # speed(low) >= floor > speed(high), or low = 0 too slow already
        middle = (low + high) // 2
        if speed(interval, middle) >= floor:
            low = middle
        else:
            high = middle
    return interval, low
