"""``python -m lib_deepcache.bench``: DeepCache's speed against its FLOP limit, and its fidelity.

For each (interval N, depth b, schedule) of a grid, on the full SD1.5 UNet architecture (seeded
weights; ``--checkpoint`` loads a real one) sampled by a real k-diffusion sampler with CFG batch 2:

* FLOP speedup: exact, from ``torch.utils.flop_counter`` on a ``meta`` twin, for the step counts
  the session really ran; limit ``S(N, b) = N / (1 + (N - 1) f_b)``;
* measured UNet wall-time speedup: time spent inside UNet calls, each cached run against the
  uncached runs just before and after it, repeated until the pairs agree (:mod:`.pairing`);
  median and range of the pairs, marked where they stay apart; efficiency = measured / FLOP
  speedup;
* peak memory held by the cache, and the full/cached step counts;
* with ``--quality``: PSNR, SSIM and relative L2 of each configuration's samples against the
  uncached samples (same seeds, same sampler) on the trained fixture, and a PNG grid.

``--study equal-flops`` runs the method study instead (:mod:`.study`).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from . import defaults, dit_report, fewsteps
from .defaults import DefaultsRow
from .dit_study import DIT_METHODS
from .fewsteps import FewStepsRow
from .harness import DIFFUSERS_PREFIX, RIG_ARCHS, SAMPLERS
from .records import Study
from .report import Report, parse_grid
from .speed import add_timing_args, run
from .study import (
    ALTERNATIVES,
    METHODS,
    OURS,
    SAMPLER_NAMES,
    equal_flops_study,
    equal_quality_report,
    save_curves,
    to_json,
    to_markdown,
)
from .verdict import verdict_markdown, verdicts

UNET_DEFAULTS = {
    "samplers": "Euler,DPM++ 2M,DPM++ SDE", "intervals": "3,5", "curve_intervals": (2, 4, 6, 8),
    "methods": METHODS,
}  # fmt: skip
# The default run: the recommended interval and the fastest, over 10 steps: few enough UNet
# calls to pair and repeat each row in under 5 minutes on 2 cores (N=3 refreshes 4 times in 10
# steps, so its FLOP speedup stays under the limit S; N=5 reaches it). The docs' full grid:
# --grid 2x0,2x1,2x2,3x0,3x1,3x2,5x0,5x1,5x2,5x0n --steps 30.
DEFAULT_GRID = "3x0,5x0"
DEFAULT_STEPS = 10
QUICK_GRID = "3x0,5x1n"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m lib_deepcache.bench", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--arch", choices=RIG_ARCHS, default="sd15")
    parser.add_argument("--width", type=int, default=None, help="model channels (default: real)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--sampler", choices=sorted(SAMPLERS), default="euler")
    parser.add_argument(
        "--steps", type=int, default=None, help="default 10 (grid), 30 (studies), 6 (--quick)"
    )
    parser.add_argument("--size", type=int, default=16, help="latent side (pixels / 8)")
    parser.add_argument(
        "--grid", type=parse_grid, default=None, help='e.g. "3x0,5x1n,3x0a0.2" (see parse_grid)'
    )
    add_timing_args(parser)
    parser.add_argument("--checkpoint", type=Path, default=None, help="WebUI .safetensors")
    parser.add_argument("--quality", action="store_true", help="fidelity on the trained fixture")
    _add_study_args(parser)
    parser.add_argument("--quick", action="store_true", help="tiny model, 2 configs (CI)")
    parser.add_argument("--json", type=Path, default=None, help="write the report as JSON")
    parser.add_argument("--markdown", type=Path, default=None, help="write a markdown table")
    parser.add_argument(
        "--png", type=Path, default=None, help="sample grid (--quality) or curves (--study)"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.checkpoint is not None and args.arch.startswith(DIFFUSERS_PREFIX):
        parser.error("--checkpoint loads a WebUI (ldm) checkpoint; choose an ldm --arch")
    if args.quick:
        args.width = args.width or 32
        args.steps = args.steps or 6
        args.grid = args.grid or parse_grid(QUICK_GRID)
        # one pair of a tiny model is mostly timer noise: three at least
        args.repeats = max(args.repeats, 3)
    args.steps = args.steps or (30 if args.study else DEFAULT_STEPS)
    args.grid = args.grid or parse_grid(DEFAULT_GRID)
    if args.study:
        known = DIT_METHODS if args.family == "dit" else METHODS
        family = dit_report.DEFAULTS if args.family == "dit" else UNET_DEFAULTS
        args.samplers = args.samplers or family["samplers"]
        args.intervals = args.intervals or family["intervals"]
        args.methods = args.methods or ",".join(family["methods"])
        args.curve_intervals = family["curve_intervals"]
        args.samplers = _names(parser, "--samplers", args.samplers, list(SAMPLER_NAMES))
        methods = _names(parser, "--methods", args.methods, known, allow_none=True)
        args.methods = ["uniform"] + [name for name in methods if name != "uniform"]
        args.intervals = [int(n) for n in args.intervals.split(",")]
        args.step_counts = [int(n) for n in args.step_counts.split(",")]
        args.depths = [int(n) for n in args.depths.split(",")]
        args.layouts = [name.strip() for name in args.layouts.split(",")]
        if any(n < 2 for n in args.intervals) or args.seeds < 2:
            parser.error("--intervals must be >= 2 and --seeds >= 2 (a paired interval needs two)")
    args.png = args.png or Path(
        "artifacts/study-equal-flops.png" if args.study else "artifacts/bench-quality.png"
    )
    return args


def _add_study_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--study",
        choices=["equal-flops", "few-steps", "defaults"],
        default=None,
        help="instead of the speed grid: every caching method against uniform at matched FLOP "
        "speedup (equal-flops, see lib_deepcache/bench/study.py), or caching against fewer "
        "steps at the same cost (few-steps, see fewsteps.py), on the trained fixture; or an "
        "(interval, depth) grid on each layout's fixture to choose its defaults (defaults.py)",
    )
    parser.add_argument(
        "--family",
        choices=["unet", "dit"],
        default="unet",
        help="equal-flops study: the trained UNet fixture, or the transformer one (dit_report.py)",
    )
    parser.add_argument("--samplers", default=None, help="study: comma-separated")
    parser.add_argument("--intervals", default=None, help="study: uniform intervals to match")
    parser.add_argument(
        "--methods",
        default=None,
        help="study: comma-separated, from "
        + ", ".join(METHODS)
        + " (--family dit: "
        + ", ".join(DIT_METHODS)
        + "); uniform always runs",
    )
    parser.add_argument(
        "--step-counts",
        default="2,3,4,5,6,8,10,12,15,20,30",
        help="few-steps study: the requested step counts (at the first of --intervals)",
    )
    parser.add_argument("--depths", default="0,1,2", help="defaults study: depths of the grid")
    parser.add_argument("--layouts", default="sd15,sdxl", help="defaults study: fixture layouts")
    parser.add_argument("--seeds", type=int, default=16, help="study: seeds per cell")
    parser.add_argument("--seed-start", type=int, default=0, help="study: first seed")


def _names(
    parser: argparse.ArgumentParser,
    flag: str,
    text: str,
    known: Sequence[str],
    allow_none: bool = False,
) -> list[str]:
    """A comma-separated list of known names; an unknown one (or none, unless allowed) is
    refused."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in known]
    if unknown or not (names or allow_none):
        parser.error(f"{flag}: {', '.join(unknown) or 'none'}; one of {', '.join(known)}")
    return names


def main(argv: Sequence[str] | None = None) -> Report | list[Any]:
    args = parse_args(argv)
    torch.set_grad_enabled(False)
    if args.study == "few-steps":
        return _few_steps(args)
    if args.study == "defaults":
        return _defaults(args)
    if args.study:
        return _study(args)
    report = run(args)
    print(report.to_markdown())
    _write(args.json, report.to_json())
    _write(args.markdown, report.to_markdown())
    if args.quality:
        print(f"sample grid: {args.png}")
    return report


@contextmanager
def _progress(total: int, desc: str, unit: str = "run") -> Iterator[Callable[[str], None]]:
    """A progress bar; the ``tick`` it yields names the run just finished and advances it."""
    from tqdm import tqdm

    with tqdm(total=total, desc=desc, unit=unit) as bar:

        def tick(what: str) -> None:
            bar.set_postfix_str(what)
            bar.update()

        yield tick


def _seeds(args: argparse.Namespace) -> list[int]:
    return list(range(args.seed_start, args.seed_start + args.seeds))


def _study(args: argparse.Namespace) -> Study | str:
    seeds = _seeds(args)
    if args.family == "dit":
        runs = len(args.samplers) * (1 + len(args.intervals) * len(args.methods))
        with _progress(runs, "dit", "cell") as tick:
            return dit_report.run(args, seeds, tick)
    runs = len(args.samplers) * (1 + len(args.intervals) * len(args.methods))
    with _progress(runs, "study", "cell") as tick:
        study = equal_flops_study(
            args.samplers, args.intervals, seeds, args.steps, methods=args.methods, tick=tick
        )
    header = (
        f"trained fixture, seeds {seeds[0]}-{seeds[-1]}, {args.steps} steps, depth 0; "
        "Δ = method - uniform per seed, mean and 95 % CI"
    )
    targets = {(r.sampler, r.interval): r.flop_speedup for r in study.rows if r.method == "uniform"}
    report = "\n".join(
        [
            to_markdown(study.rows, header),
            verdict_markdown(verdicts(study, OURS, ALTERNATIVES), targets),
        ]
    )
    if args.curve_intervals:
        report += "\n" + equal_quality_report(
            study.rows, args.curve_intervals, seeds, args.steps,
            args.png.with_name("equal-quality.png"),
        )  # fmt: skip
    print(report)
    _write(args.json, to_json(study))
    _write(args.markdown, report)
    save_curves(study.rows, args.png)
    print(f"curves: {args.png}")
    return study


def _few_steps(args: argparse.Namespace) -> list[FewStepsRow]:
    seeds = _seeds(args)
    interval = args.intervals[0]
    runs = len(args.samplers) * len(args.step_counts) * len(fewsteps.MODES)
    with _progress(runs, "few steps") as tick:
        rows = fewsteps.few_steps_study(args.samplers, args.step_counts, seeds, interval, tick=tick)
    header = (
        f"trained fixture, seeds {seeds[0]}-{seeds[-1]}, interval {interval}, depth 0; PSNR "
        "against the uncached K-step image; Δ = caching - fewer steps, mean and 95 % CI"
    )
    print(fewsteps.to_markdown(rows, header))
    _write(args.json, json.dumps([asdict(row) for row in rows], indent=2))
    _write(args.markdown, fewsteps.to_markdown(rows, header))
    return rows


def _defaults(args: argparse.Namespace) -> list[DefaultsRow]:
    seeds = _seeds(args)
    grid = len(args.intervals) * len(args.depths)
    runs = len(args.layouts) * len(args.samplers) * grid
    with _progress(runs, "defaults") as tick:
        rows = defaults.defaults_study(
            args.layouts, args.samplers, args.intervals, args.depths, seeds, args.steps, tick
        )
    header = (
        f"trained fixtures {', '.join(args.layouts)}, seeds {seeds[0]}-{seeds[-1]}, "
        f"{args.steps} steps; PSNR/SSIM against the same layout's uncached image"
    )
    print(defaults.to_markdown(rows, header))
    _write(args.json, json.dumps([asdict(row) for row in rows], indent=2))
    _write(args.markdown, defaults.to_markdown(rows, header))
    return rows


def _write(path: Path | None, text: str) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
