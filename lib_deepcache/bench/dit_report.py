"""``--study equal-flops --family dit``: runs :mod:`.dit_study` and prints its three tables.

1. every method against uniform at matched FLOP speedup (the UNet study's table);
2. the bar: each of our modes against each alternative in each cell, the per-seed paired
   difference of PSNR and SSIM with its 95 % interval: "win" (whole interval above 0), "tie"
   (spanning 0), "loss" (whole interval below 0); an alternative that landed slower than the
   cell (it spent more) meets forecast run at its own speedup (:func:`.dit_study._forecast_at`),
   and the row gives both speedups;
3. speed at equal quality (:mod:`.equal_quality`), the bar being classic DeepCache (interval 3,
   depth 1: the outermost block pair live).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from . import equal_quality
from .alternatives import cache_dit_available
from .dit_study import ALTERNATIVES, DIT_METHODS, OURS, DitStudy, dit_study
from .study import MATCH_TOLERANCE, paired_ci, to_markdown

DEFAULTS = {
    "samplers": "Euler,DPM++ 2M",
    "intervals": "2,3",
    "curve_intervals": (4, 5),
    # cache-dit is not among the project's pinned packages: studied where it is installed
    "methods": tuple(m for m in DIT_METHODS if m != "cache-dit" or cache_dit_available()),
}
BAR = "deepcache N=3 d1"


@dataclass(frozen=True)
class Verdict:
    sampler: str
    interval: int
    mode: str
    rival: str
    rival_speedup: float
    mode_speedup: float | None  # set where the mode was run again at the rival's speedup
    psnr_diff: float
    psnr_ci: float
    ssim_diff: float
    ssim_ci: float

    @staticmethod
    def _word(diff: float, ci: float) -> str:
        return "win" if diff - ci > 0 else "loss" if diff + ci < 0 else "tie"

    @property
    def psnr(self) -> str:
        return self._word(self.psnr_diff, self.psnr_ci)

    @property
    def ssim(self) -> str:
        return self._word(self.ssim_diff, self.ssim_ci)


def verdicts(study: DitStudy, modes: Sequence[str] = OURS) -> list[Verdict]:
    out = []
    for row in study.rows:
        if row.method not in ALTERNATIVES:
            continue
        key = (row.sampler, row.interval)
        for mode in modes:
            if (*key, mode) not in study.scores:
                continue
            mine, theirs = study.scores[(*key, mode)], study.scores[(*key, row.method)]
            mode_speedup = None
            if mode == "forecast" and (*key, row.method) in study.rematched:
                mode_speedup, *mine = study.rematched[(*key, row.method)]
            psnr = paired_ci(mine[0] - theirs[0])
            ssim = paired_ci(mine[1] - theirs[1])
            out.append(
                Verdict(*key, mode, row.method, row.flop_speedup, mode_speedup, *psnr, *ssim)
            )
    return out


def verdict_markdown(rows: Sequence[Verdict], targets: dict[tuple[str, int], float]) -> str:
    lines = [
        "Δ = our mode - alternative per seed, mean and 95 % CI; win / tie / loss by the interval",
        "",
        "| sampler | N | our mode | alternative (its speedup) | Δ PSNR dB | Δ SSIM | PSNR | SSIM |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for v in rows:
        target = targets[(v.sampler, v.interval)]
        slower = v.rival_speedup < target * (1 - MATCH_TOLERANCE)
        speed = f"{v.rival_speedup:.2f}x" + (", slower" if slower else "")
        mode = v.mode if v.mode_speedup is None else f"{v.mode} at {v.mode_speedup:.2f}x"
        lines.append(
            f"| {v.sampler} | {v.interval} | {mode} | {v.rival} ({speed}) | "
            f"{v.psnr_diff:+.2f} ± {v.psnr_ci:.2f} | {v.ssim_diff:+.4f} ± {v.ssim_ci:.4f} | "
            f"{v.psnr} | {v.ssim} |"
        )
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace, seeds: list[int], tick: Callable[[str], None]) -> str:
    """The study on the transformer fixture; returns the report as markdown (also printed)."""
    study = dit_study(
        args.samplers, args.intervals, seeds, args.steps, args.methods,
        curve_intervals=args.curve_intervals, tick=tick,
    )  # fmt: skip
    targets = {(r.sampler, r.interval): r.flop_speedup for r in study.rows if r.method == "uniform"}
    quality = equal_quality.equal_quality(study.points, study.bars)
    header = (
        f"transformer fixture, seeds {seeds[0]}-{seeds[-1]}, {args.steps} steps, depth 0; "
        "Δ = method - uniform per seed, mean and 95 % CI; FLOPs measured per run"
    )
    report = "\n".join(
        [
            to_markdown(study.rows, header),
            verdict_markdown(verdicts(study), targets),
            equal_quality.to_markdown(
                quality, "Speed at the quality of classic DeepCache (interval 3, depth 1)", BAR
            ),
        ]
    )
    print(report)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(_as_json(study, quality), indent=1))
    if args.markdown is not None:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(report)
    if study.bars:
        equal_quality.save_plot(study.points, study.bars, args.png, BAR)
    return report


def _as_json(study: DitStudy, quality: list[equal_quality.EqualQuality]) -> dict[str, object]:
    return {
        "rows": [{**asdict(r), "wins": r.wins} for r in study.rows],
        "verdicts": [{**asdict(v), "psnr": v.psnr, "ssim": v.ssim} for v in verdicts(study)],
        "bars": study.bars,
        "equal_quality": [{**asdict(q), "speed": q.speed, "ratio": q.ratio} for q in quality],
        "points": [asdict(p) for p in study.points],
        "scores": {
            f"{sampler}|{interval}|{method}": [psnr.tolist(), ssim.tolist()]
            for (sampler, interval, method), (psnr, ssim) in study.scores.items()
        },
    }
