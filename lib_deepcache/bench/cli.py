"""``python -m lib_deepcache.bench``: DeepCache's speed against its FLOP limit, and its fidelity.

For each (interval N, depth b, schedule) of a grid, on the full SD1.5 UNet architecture (seeded
weights; ``--checkpoint`` loads a real one) sampled by a real k-diffusion sampler with CFG batch 2:

* FLOP speedup: exact, from ``torch.utils.flop_counter`` on a ``meta`` twin, for the step counts
  the session really ran; limit ``S(N, b) = N / (1 + (N - 1) f_b)``;
* measured UNet wall-time speedup: time spent inside UNet calls, uncached runs bracketing the
  cached ones in each repeat, medians over repeats; efficiency = measured / FLOP speedup;
* peak memory held by the cache, and the full/cached step counts;
* with ``--quality``: PSNR, SSIM and relative L2 of each configuration's samples against the
  uncached samples (same seeds, same sampler) on the trained fixture, and a PNG grid.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import torch

from .harness import DIFFUSERS_PREFIX, RIG_ARCHS, SAMPLERS
from .report import Report, parse_grid
from .speed import run

DEFAULT_GRID = "2x0,2x1,2x2,3x0,3x1,3x2,5x0,5x1,5x2,5x0n"
QUICK_GRID = "3x0,5x1n"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m lib_deepcache.bench", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--arch", choices=RIG_ARCHS, default="sd15")
    parser.add_argument("--width", type=int, default=None, help="model channels (default: real)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--sampler", choices=sorted(SAMPLERS), default="euler")
    parser.add_argument("--steps", type=int, default=30, help="30: divisible by N = 2, 3, 5")
    parser.add_argument("--size", type=int, default=16, help="latent side (pixels / 8)")
    parser.add_argument(
        "--grid", type=parse_grid, default=None, help='e.g. "3x0,5x1n,3x0a0.2" (see parse_grid)'
    )
    parser.add_argument("--repeats", type=int, default=1, help="timed repeats per setting")
    parser.add_argument("--checkpoint", type=Path, default=None, help="WebUI .safetensors")
    parser.add_argument("--quality", action="store_true", help="fidelity on the trained fixture")
    parser.add_argument(
        "--adaptive-study",
        type=Path,
        default=None,
        metavar="FILE.md",
        help="instead of the speed grid: adaptive against uniform/non-uniform at matched FLOP "
        "speedups on the fixture (Euler and DPM++ 2M, N = 3 and 5, depth 0)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny model, 2 configs (CI)")
    parser.add_argument("--json", type=Path, default=None, help="write the report as JSON")
    parser.add_argument("--markdown", type=Path, default=None, help="write a markdown table")
    parser.add_argument("--png", type=Path, default=Path("artifacts/bench-quality.png"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.checkpoint is not None and args.arch.startswith(DIFFUSERS_PREFIX):
        parser.error("--checkpoint loads a WebUI (ldm) checkpoint; choose an ldm --arch")
    if args.quick:
        args.width = args.width or 32
        args.steps = 6 if args.steps == 30 else args.steps
        args.grid = args.grid or parse_grid(QUICK_GRID)
    args.grid = args.grid or parse_grid(DEFAULT_GRID)
    return args


def main(argv: Sequence[str] | None = None) -> Report | None:
    args = parse_args(argv)
    torch.set_grad_enabled(False)
    if args.adaptive_study:
        from .study import adaptive_study

        study = adaptive_study(args.steps, ["euler", "dpmpp_2m"], [3, 5])
        print(study)
        args.adaptive_study.parent.mkdir(parents=True, exist_ok=True)
        args.adaptive_study.write_text(study)
        return None
    report = run(args)
    print(report.to_markdown())
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(report.to_json())
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(report.to_markdown())
    if args.quality:
        print(f"sample grid: {args.png}")
    return report
