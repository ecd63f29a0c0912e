"""The speed grid: each configuration's measured UNet time against uncached runs, its step
counts and cache peak, and its FLOP speedup against the limit ``S(N, b)``; optionally its
fidelity on the trained fixture."""

from __future__ import annotations

import argparse
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
from .report import Report

QUALITY_SEEDS = list(range(16))


def run(args: argparse.Namespace) -> Report:
    """Time every row of ``args.grid`` against uncached runs, and fill in its FLOP figures."""
    device = torch.device(args.device)
    rig = make_rig(args.arch, width=args.width, seed=args.seed, size=args.size)
    if args.checkpoint is not None:
        load_checkpoint(rig.unet, args.checkpoint)
    rig.model.to(device)
    rig.denoiser.to(device)
    report = Report(settings=_settings(args), rows=args.grid)
    off_times, on_times = _time_rows(rig, args, device)
    off = statistics.median(off_times)
    counted = count_unit_flops(rig.unet, *rig.meta_call(2, args.size))
    for row, on in zip(report.rows, on_times, strict=True):
        row.shallow_share = counted.shallow_share(effective_depth(row.depth, counted.num_blocks))
        row.flop_speedup = schedule_speedup(row.full_steps, row.cached_steps, row.shallow_share)
        row.limit = speed_limit(row.interval, row.shallow_share)
        row.unet_seconds_off = off
        row.unet_seconds_on = statistics.median(on)
        row.measured_speedup = off / row.unet_seconds_on
        paired = [bracket / cached for bracket, cached in zip(off_times, on, strict=True)]
        row.speedup_low, row.speedup_high = min(paired), max(paired)
        row.efficiency = row.measured_speedup / row.flop_speedup
    if args.quality:
        add_quality(report, args)
    return report


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    return {
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


def _time_rows(
    rig: Rig, args: argparse.Namespace, device: torch.device
) -> tuple[list[float], list[list[float]]]:
    """UNet seconds per repeat: the uncached time (the mean of the two runs bracketing the
    repeat's cached runs), and each row's cached runs. Fills each row's step counts and cache
    peak on the way."""
    from tqdm import tqdm

    rows = args.grid
    sigmas = rig.sigmas(args.steps)
    grid = rig.timestep_grid(sigmas)
    off_times: list[float] = []
    on_times: list[list[float]] = [[] for _ in rows]
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
                for row, on in zip(rows, on_times, strict=True):
                    stats = sample(row.params()).stats
                    on.append(timer.seconds)
                    row.full_steps, row.cached_steps = stats.full_steps, stats.cached_steps
                    row.cache_peak_mb = max(row.cache_peak_mb, timer.peak_bytes / 2**20)
                sample(DeepCacheParams())
                off_times.append((bracket + timer.seconds) / 2)
    finally:
        timer.remove()
        progress.close()
    return off_times, on_times


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
