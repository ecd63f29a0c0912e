"""``--study equal-flops --family dit``: runs :mod:`.dit_study` and prints its three tables.

1. every method against uniform at matched FLOP speedup (the UNet study's table);
2. the bar (:mod:`.verdict`): each of our modes against each alternative in each cell, the
   per-seed paired difference of PSNR and SSIM with its 95 % interval, win / tie / loss; a
   rival that landed off the cell's speedup meets forecast run at its cost, and the row gives
   both speedups;
3. speed at equal quality (:mod:`.equal_quality`), the bar being classic DeepCache (interval 3,
   depth 1: the outermost block pair live).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import asdict

from . import equal_quality
from .alternatives import cache_dit_available
from .dit_study import ALTERNATIVES, DIT_METHODS, OURS, dit_study
from .records import Study
from .study import to_markdown
from .verdict import scores_json, verdict_markdown, verdicts, verdicts_json

DEFAULTS = {
    "samplers": "Euler,DPM++ 2M",
    "intervals": "2,3",
    "curve_intervals": (4, 5, 6, 7),
    # cache-dit is not among the project's pinned packages: studied where it is installed
    "methods": tuple(m for m in DIT_METHODS if m != "cache-dit" or cache_dit_available()),
}
BAR = "deepcache N=3 d1"


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
            verdict_markdown(verdicts(study, OURS, ALTERNATIVES), targets),
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


def _as_json(study: Study, quality: list[equal_quality.EqualQuality]) -> dict[str, object]:
    return {
        "rows": [{**asdict(r), "wins": r.wins} for r in study.rows],
        "verdicts": verdicts_json(verdicts(study, OURS, ALTERNATIVES)),
        "bars": study.bars,
        "equal_quality": [{**asdict(q), "speed": q.speed, "ratio": q.ratio} for q in quality],
        "points": [asdict(p) for p in study.points],
        "scores": scores_json(study),
    }
