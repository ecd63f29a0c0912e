"""The speed grid: each configuration's measured UNet time against uncached runs, its step
counts and cache peak, and its FLOP speedup against the limit ``S(N, b)``; optionally its
fidelity on the trained fixture."""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from ..engine.params import DeepCacheParams, effective_depth
from ..engine.session import DeepCacheSession
from .archs import sdpa_attention
from .flops import count_unit_flops, schedule_speedup, speed_limit
from .harness import Rig, make_rig
from .pairing import MIN_PAIRS, Policy, RowTiming, Timed, pairs_text, time_pairs
from .report import Report, Row

QUALITY_SEEDS = list(range(16))


def add_timing_args(parser: argparse.ArgumentParser) -> None:
    """``--repeats``, ``--spread``, ``--budget``: how long each row is paired (:class:`Policy`)."""
    parser.add_argument(
        "--repeats",
        type=int,
        default=5,
        help="at most this many pairs (a cached run between two uncached ones) per row; a row "
        f"stops at {MIN_PAIRS} or more once their range is within --spread",
    )
    parser.add_argument(
        "--spread", type=float, default=0.10, help="tight range: (max - min) / median (0.10)"
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=240.0,
        help="seconds from the start after which no row gets another pair (0: none); every "
        "row gets one (default 240: the default run stays under 5 minutes on 2 cores)",
    )


def run(args: argparse.Namespace) -> Report:
    """Time every row of ``args.grid`` against uncached runs, and fill in its FLOP figures."""
    started = time.monotonic()
    device = torch.device(args.device)
    rig = make_rig(args.arch, width=args.width, seed=args.seed, size=args.size)
    if args.checkpoint is not None:
        load_checkpoint(rig.unet, args.checkpoint)
    rig.model.to(device)
    rig.denoiser.to(device)
    policy = Policy(args.repeats, args.spread, args.budget)
    report = Report(settings=_settings(args, policy), rows=args.grid, policy=policy)
    load = _load()
    timed = _time_rows(rig, args, device, policy, started)
    report.budget_hit = timed.budget_hit
    report.settings["load"] = f"{load} at start, {_load()} at end ({os.cpu_count()} cores)"
    counted = count_unit_flops(rig.unet, *rig.meta_call(2, args.size))
    for row, timing in zip(report.rows, timed.rows, strict=True):
        row.shallow_share = counted.shallow_share(effective_depth(row.depth, counted.num_blocks))
        row.flop_speedup = schedule_speedup(row.full_steps, row.cached_steps, row.shallow_share)
        row.limit = speed_limit(row.interval, row.shallow_share)
        fill_timing(row, timing, policy)
    if args.quality:
        add_quality(report, args)
    return report


def fill_timing(row: Row, timing: RowTiming, policy: Policy) -> None:
    """A row's timing columns from its pairs (its FLOP speedup must be filled in already)."""
    row.unet_seconds_off = statistics.median(timing.uncached)
    row.unet_seconds_on = statistics.median(timing.cached)
    row.pairs = timing.speedups
    row.measured_speedup = timing.median
    row.speedup_low, row.speedup_high = min(row.pairs), max(row.pairs)
    row.wide = not timing.tight(policy)
    row.efficiency = row.measured_speedup / row.flop_speedup


def _load() -> str:
    """The 1-minute load average, so that the reader sees how busy the machine was: another
    program on the cores widens every range."""
    return f"{os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else "unknown"


def _settings(args: argparse.Namespace, policy: Policy) -> dict[str, Any]:
    return {
        "arch": args.arch,
        "width": args.width or "full",
        "device": args.device,
        "sampler": args.sampler,
        "steps": args.steps,
        "latent": f"{args.size}x{args.size}",
        "CFG batch": 2,
        "pairs": pairs_text(policy),
        "checkpoint": str(args.checkpoint) if args.checkpoint else "seeded weights",
    }


def _time_rows(
    rig: Rig, args: argparse.Namespace, device: torch.device, policy: Policy, started: float
) -> Timed:
    """Each row's pairs of UNet seconds (:func:`time_pairs`), after a warm-up. Fills each row's
    step counts and cache peak on the way."""
    from tqdm import tqdm

    rows = args.grid
    sigmas = rig.sigmas(args.steps)
    grid = rig.timestep_grid(sigmas)
    timer = UnetTimer(rig.unet, device)
    progress = tqdm(total=1 + 2 * len(rows) * policy.max_pairs, desc="bench", unit="run")

    def sample(params: DeepCacheParams, what: str) -> DeepCacheSession:
        session = DeepCacheSession(rig.unet, params, args.steps, grid)
        timer.reset(session)
        with session:
            rig.sample(
                args.sampler, args.steps, batch=1, size=args.size, sigmas=sigmas, device=device
            )
        progress.set_postfix_str(what)
        progress.update()
        return session

    def uncached() -> float:
        sample(DeepCacheParams(), "uncached")
        return timer.seconds

    def cached(i: int) -> float:
        row = rows[i]
        stats = sample(row.params(), row.label).stats
        row.full_steps, row.cached_steps = stats.full_steps, stats.cached_steps
        row.cache_peak_mb = max(row.cache_peak_mb, timer.peak_bytes / 2**20)
        return timer.seconds

    try:
        with sdpa_attention():
            rig.sample(args.sampler, 2, batch=1, size=args.size, device=device)  # warm-up
            return time_pairs(len(rows), uncached, cached, policy, started=started)
    finally:
        timer.remove()
        progress.total = progress.n  # rows that agreed early leave runs undone
        progress.close()


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
