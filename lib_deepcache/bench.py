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
import json
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .archs import sdpa_attention
from .flops import count_unit_flops, schedule_speedup, speed_limit
from .harness import DIFFUSERS_PREFIX, RIG_ARCHS, SAMPLERS, make_rig
from .params import DeepCacheParams, effective_depth
from .session import DeepCacheSession

DEFAULT_GRID = "2x0,2x1,2x2,3x0,3x1,3x2,5x0,5x1,5x2,5x0n"
QUICK_GRID = "3x0,5x1n"
QUALITY_SEEDS = list(range(16))


@dataclass
class Row:
    interval: int
    depth: int
    schedule: str
    threshold: float | None = None
    full_steps: int = 0
    cached_steps: int = 0
    shallow_share: float = 0.0
    flop_speedup: float = 0.0
    limit: float = 0.0
    unet_seconds_off: float = 0.0
    unet_seconds_on: float = 0.0
    measured_speedup: float = 0.0
    efficiency: float = 0.0
    cache_peak_mb: float = 0.0
    psnr: float | None = None
    ssim: float | None = None
    rel_l2: float | None = None

    @property
    def label(self) -> str:
        text = f"N={self.interval} b={self.depth} {self.schedule}"
        return text if self.threshold is None else f"{text} t={self.threshold:g}"

    def params(self) -> DeepCacheParams:
        if self.schedule == "adaptive":
            return DeepCacheParams(
                True,
                depth=self.depth,
                schedule="adaptive",
                threshold=self.threshold,
                max_cached=2 * self.interval,
            )
        return DeepCacheParams(True, self.interval, self.depth, schedule=self.schedule)


@dataclass
class Report:
    settings: dict[str, Any]
    rows: list[Row] = field(default_factory=list)

    def to_json(self) -> str:
        rows = [{**asdict(r), "label": r.label} for r in self.rows]
        return json.dumps({"settings": self.settings, "rows": rows}, indent=2)

    def to_markdown(self) -> str:
        quality = any(r.psnr is not None for r in self.rows)
        head = [
            "config",
            "full/cached",
            "f_b",
            "FLOP speedup",
            "limit S",
            "UNet s off",
            "UNet s on",
            "measured",
            "efficiency",
            "cache MB",
        ]
        if quality:
            head += ["PSNR dB", "SSIM", "rel L2"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in self.rows:
            cells = [
                r.label,
                f"{r.full_steps}/{r.cached_steps}",
                f"{r.shallow_share:.2%}",
                f"{r.flop_speedup:.2f}x",
                f"{r.limit:.2f}x",
                f"{r.unet_seconds_off:.2f}",
                f"{r.unet_seconds_on:.2f}",
                f"{r.measured_speedup:.2f}x",
                f"{r.efficiency:.2f}",
                f"{r.cache_peak_mb:.1f}",
            ]
            if quality:
                cells += [_fmt(r.psnr, ".2f"), _fmt(r.ssim, ".4f"), _fmt(r.rel_l2, ".4f")]
            lines.append("| " + " | ".join(cells) + " |")
        settings = ", ".join(f"{k} {v}" for k, v in self.settings.items())
        return f"{settings}\n\n" + "\n".join(lines) + "\n"


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


class UnetTimer:
    """Wall time spent inside the UNet's calls (synchronised on CUDA) and the cache's peak."""

    def __init__(self, unet: torch.nn.Module, device: torch.device) -> None:
        self.device = device
        self.seconds = 0.0
        self.session: DeepCacheSession | None = None
        self.peak_bytes = 0
        self._start = 0.0
        self._handles = [
            unet.register_forward_pre_hook(self._before),
            unet.register_forward_hook(self._after),
        ]

    def reset(self, session: DeepCacheSession) -> None:
        self.seconds, self.peak_bytes, self.session = 0.0, 0, session

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _before(self, module: torch.nn.Module, args: Any) -> None:
        self._sync()
        self._start = time.perf_counter()

    def _after(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        self._sync()
        self.seconds += time.perf_counter() - self._start
        if self.session is not None:
            self.peak_bytes = max(self.peak_bytes, self.session.cache_nbytes)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def parse_grid(text: str) -> list[Row]:
    """``"3x0,5x1n,3x0a0.2"``: interval x depth; ``n``: non-uniform; ``a<T>``: adaptive with
    threshold T and at most 2N cached steps in a row."""
    rows = []
    for item in text.split(","):
        item = item.strip()
        threshold = None
        if "a" in item:
            item, _, raw = item.partition("a")
            threshold = float(raw)
        schedule = "non-uniform" if item.endswith("n") else "uniform"
        interval, depth = item.rstrip("n").split("x")
        row = Row(
            int(interval), int(depth), "adaptive" if threshold is not None else schedule, threshold
        )
        row.params()
        rows.append(row)
    return rows


def load_checkpoint(unet: torch.nn.Module, path: Path) -> None:
    """Load a WebUI checkpoint's UNet (keys under ``model.diffusion_model.``)."""
    from safetensors.torch import load_file

    prefix = "model.diffusion_model."
    state = {k[len(prefix) :]: v for k, v in load_file(str(path)).items() if k.startswith(prefix)}
    if not state:
        raise ValueError(f"{path} has no keys under {prefix!r}: not a WebUI checkpoint")
    try:
        result = unet.load_state_dict(state, strict=False)
    except RuntimeError as error:  # tensors of other shapes
        raise ValueError(f"{path} does not fit this --arch UNet: {error}") from None
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"{path} does not fit this --arch UNet: {len(result.missing_keys)} missing, "
            f"{len(result.unexpected_keys)} unexpected keys (e.g. "
            f"{(result.missing_keys or result.unexpected_keys)[0]})"
        )


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


def run(args: argparse.Namespace) -> Report:
    from tqdm import tqdm

    device = torch.device(args.device)
    rig = make_rig(args.arch, width=args.width, seed=args.seed, size=args.size)
    if args.checkpoint is not None:
        load_checkpoint(rig.unet, args.checkpoint)
    rig.model.to(device)
    rig.denoiser.to(device)
    sigmas = rig.sigmas(args.steps)
    grid = rig.timestep_grid(sigmas)
    counted = count_unit_flops(rig.unet, *rig.meta_call(2, args.size))
    report = Report(
        settings={
            "arch": args.arch,
            "width": args.width or "full",
            "device": args.device,
            "sampler": args.sampler,
            "steps": args.steps,
            "latent": f"{args.size}x{args.size}",
            "CFG batch": 2,
            "repeats": args.repeats,
            "checkpoint": str(args.checkpoint) if args.checkpoint else "seeded weights",
        }
    )
    rows = args.grid
    off_times: list[float] = []
    on_times: dict[int, list[float]] = {i: [] for i in range(len(rows))}
    timer = UnetTimer(rig.unet, device)
    progress = tqdm(total=args.repeats * (len(rows) + 2), desc="bench", unit="run")

    def sample(params: DeepCacheParams) -> DeepCacheSession:
        session = DeepCacheSession(rig.unet, params, args.steps, grid)
        timer.reset(session)
        with session:
            rig.sample(
                args.sampler, args.steps, batch=1, size=args.size, sigmas=sigmas, device=device
            )
        progress.update()
        return session

    try:
        with sdpa_attention():
            rig.sample(args.sampler, 2, batch=1, size=args.size, device=device)  # warm-up
            for _ in range(args.repeats):
                sample(DeepCacheParams())
                bracket = timer.seconds
                for i, row in enumerate(rows):
                    stats = sample(row.params()).stats
                    on_times[i].append(timer.seconds)
                    row.full_steps, row.cached_steps = stats.full_steps, stats.cached_steps
                    row.cache_peak_mb = max(row.cache_peak_mb, timer.peak_bytes / 2**20)
                sample(DeepCacheParams())
                off_times.append((bracket + timer.seconds) / 2)
    finally:
        timer.remove()
        progress.close()
    off = statistics.median(off_times)
    for i, row in enumerate(rows):
        row.shallow_share = counted.shallow_share(effective_depth(row.depth, counted.num_blocks))
        row.flop_speedup = schedule_speedup(row.full_steps, row.cached_steps, row.shallow_share)
        row.limit = speed_limit(row.interval, row.shallow_share)
        row.unet_seconds_off = off
        row.unet_seconds_on = statistics.median(on_times[i])
        row.measured_speedup = off / row.unet_seconds_on
        row.efficiency = row.measured_speedup / row.flop_speedup
    report.rows = rows
    if args.quality:
        add_quality(report, args)
    return report


def add_quality(report: Report, args: argparse.Namespace) -> None:
    from .fidelity import FixtureSampler, compare, save_grid

    sampler = FixtureSampler()
    reference, _ = sampler.sample(QUALITY_SEEDS, args.steps, args.sampler)
    images = [("uncached", reference)]
    for row in report.rows:
        samples, _ = sampler.sample(QUALITY_SEEDS, args.steps, args.sampler, row.params())
        fidelity = compare(reference, samples)
        row.psnr, row.ssim, row.rel_l2 = fidelity.psnr, fidelity.ssim, fidelity.rel_l2
        images.append((row.label, samples))
    save_grid(images, args.png)
    report.settings["quality"] = (
        f"trained fixture, {len(QUALITY_SEEDS)} seeds, {args.sampler}, {args.steps} steps"
    )


def adaptive_study(steps: int, samplers: Sequence[str], intervals: Sequence[int]) -> str:
    """Adaptive against uniform and non-uniform at matched FLOP speedups, on the fixture.

    For each sampler and interval N (depth 0): the uniform and non-uniform schedules' FLOP
    speedups and PSNRs, and the adaptive schedule with its threshold calibrated to the uniform
    schedule's FLOP speedup. Returns a markdown table.
    """
    from .fidelity import FixtureSampler, calibrate_threshold, compare, flop_speedup

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


def main(argv: Sequence[str] | None = None) -> Report | None:
    args = parse_args(argv)
    torch.set_grad_enabled(False)
    if args.adaptive_study:
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


if __name__ == "__main__":
    main()
