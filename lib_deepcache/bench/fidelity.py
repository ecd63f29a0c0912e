"""How close a DeepCache sample stays to the uncached one: PSNR, SSIM, relative L2.

Measured on the trained fixture (``fixture.py``), whose samples look like photo crops, with the
same seeds and sampler for both runs, so any difference comes from caching alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..engine.flops import BlockFlops
from ..engine.params import DeepCacheParams
from ..engine.report import DeepCacheStats
from ..engine.session import DeepCacheSession
from . import fixture
from .flops import count_block_flops, schedule_speedup
from .harness import SAMPLERS, sd_alphas_cumprod
from .stepskip import StepSkip, first_block_share


@dataclass(frozen=True)
class Fidelity:
    psnr: float
    ssim: float
    rel_l2: float


class _FixtureModel(torch.nn.Module):
    """What k-diffusion's CompVis wrapper calls: the fixture UNet with its constant context."""

    def __init__(self, unet: torch.nn.Module) -> None:
        super().__init__()
        self.diffusion_model = unet
        self.register_buffer("alphas_cumprod", sd_alphas_cumprod())

    def apply_model(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.diffusion_model(x, t, context=cond)


class FixtureSampler:
    def __init__(self, unet: torch.nn.Module | None = None) -> None:
        import k_diffusion

        self.unet = unet if unet is not None else fixture.load()
        self.denoiser = k_diffusion.external.CompVisDenoiser(_FixtureModel(self.unet))

    def sample(
        self, seeds: list[int], steps: int, sampler: str, params: DeepCacheParams | None = None
    ) -> tuple[torch.Tensor, DeepCacheStats]:
        """One batched run over all seeds: images in [-1, 1], (N, 3, 32, 32), and the stats."""
        sigmas = self.denoiser.get_sigmas(steps)
        size = fixture.IMAGE_SIZE
        noise = torch.stack(
            [torch.randn(3, size, size, generator=torch.Generator().manual_seed(s)) for s in seeds]
        )
        context = fixture.context(len(seeds))

        def model(x: torch.Tensor, sigma: torch.Tensor, **_: object) -> torch.Tensor:
            return self.denoiser(x, sigma, cond=context)

        grid = [float(t) for t in self.denoiser.sigma_to_t(sigmas[:-1])]
        session = DeepCacheSession(self.unet, params or DeepCacheParams(), steps, grid)
        torch.manual_seed(seeds[0])
        with torch.no_grad(), session:
            images = SAMPLERS[sampler](model, noise * sigmas[0], sigmas, disable=True)
        return images.clamp(-1, 1), session.stats

    def flops(self, batch: int) -> BlockFlops:
        """FLOPs of one UNet call per unit, at the fixture's sampling shape."""
        size = fixture.IMAGE_SIZE
        return count_block_flops(
            self.unet, (batch, 3, size, size), (batch, fixture.CONTEXT_TOKENS, 32)
        )

    def shallow_share(self, depth: int, batch: int) -> float:
        """f_b of the fixture at its sampling shape."""
        return self.flops(batch).shallow_share(depth)


def counts(stats: DeepCacheStats) -> tuple[int, int]:
    return stats.full_steps, stats.cached_steps


def flop_speedup(stats: DeepCacheStats, shallow_share: float) -> float:
    """UNet FLOPs uncached over cached for the steps a session ran."""
    return schedule_speedup(stats.full_steps, stats.cached_steps, shallow_share)


@dataclass(frozen=True)
class Calibrated:
    """A method's run at one setting: its speedup, images and (full, cached) counts: steps, or
    UNet calls for step skip. ``threshold`` is None for a method that has none."""

    threshold: float | None
    flop_speedup: float
    images: torch.Tensor
    counts: tuple[int, int]


def bisect_threshold(
    run: Callable[[float], Calibrated],
    target_speedup: float,
    iterations: int = 14,
    tolerance: float = 0.005,
) -> Calibrated:
    """The threshold whose FLOP speedup is closest to the target, for a method that caches more
    as its threshold grows (so its speedup grows with it).

    Bisection in log space over [1e-4, 10]; stops early once within ``tolerance`` (relative).
    """
    low, high = 1e-4, 10.0
    best: Calibrated | None = None
    for _ in range(iterations):
        threshold = math.sqrt(low * high)
        candidate = run(threshold)
        if best is None or abs(candidate.flop_speedup - target_speedup) < abs(
            best.flop_speedup - target_speedup
        ):
            best = candidate
        if abs(candidate.flop_speedup / target_speedup - 1) <= tolerance:
            break
        if candidate.flop_speedup < target_speedup:
            low = threshold
        else:
            high = threshold
    assert best is not None
    return best


def calibrate_threshold(
    fixture_sampler: FixtureSampler,
    seeds: list[int],
    steps: int,
    sampler: str,
    target_speedup: float,
    shallow_share: float,
    depth: int = 0,
    max_cached: int = 10,
    iterations: int = 14,
    tolerance: float = 0.005,
) -> Calibrated:
    """The adaptive threshold whose FLOP speedup on the fixture is closest to the target."""

    def run(threshold: float) -> Calibrated:
        params = DeepCacheParams(
            True, depth=depth, schedule="adaptive", threshold=threshold, max_cached=max_cached
        )
        images, stats = fixture_sampler.sample(seeds, steps, sampler, params)
        return Calibrated(threshold, flop_speedup(stats, shallow_share), images, counts(stats))

    return bisect_threshold(run, target_speedup, iterations, tolerance)


def calibrate_step_skip(
    fixture_sampler: FixtureSampler,
    seeds: list[int],
    steps: int,
    sampler: str,
    target_speedup: float,
    iterations: int = 14,
    tolerance: float = 0.005,
) -> Calibrated:
    """The step-skip threshold (:mod:`.stepskip`) closest to the target FLOP speedup."""
    share = first_block_share(fixture_sampler.flops(len(seeds)))

    def run(threshold: float) -> Calibrated:
        with StepSkip(fixture_sampler.unet, threshold) as skip:
            images, _ = fixture_sampler.sample(seeds, steps, sampler)
        calls = (skip.full_calls, skip.skipped_calls)
        return Calibrated(threshold, skip.speedup(share), images, calls)

    return bisect_threshold(run, target_speedup, iterations, tolerance)


def mse(reference: torch.Tensor, candidate: torch.Tensor) -> np.ndarray:
    """Mean squared error of each image pair, images in [-1, 1] mapped to [0, 1]."""
    ref = ((reference + 1) / 2).double()
    cand = ((candidate + 1) / 2).double()
    return (ref - cand).pow(2).flatten(1).mean(1).numpy()


def per_image(reference: torch.Tensor, candidate: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """PSNR (dB, images in [0, 1]; inf when identical) and SSIM of each image pair."""
    from skimage.metrics import structural_similarity

    psnrs = [math.inf if e == 0 else 10 * math.log10(1.0 / e) for e in mse(reference, candidate)]
    ref = ((reference + 1) / 2).double()
    cand = ((candidate + 1) / 2).double()
    ssims = []
    for r, c in zip(ref, cand, strict=True):
        ssims.append(
            structural_similarity(
                r.permute(1, 2, 0).numpy(),
                c.permute(1, 2, 0).numpy(),
                channel_axis=-1,
                data_range=1.0,
            )
        )
    return np.array(psnrs), np.array(ssims)


def compare(reference: torch.Tensor, candidate: torch.Tensor) -> Fidelity:
    """Mean PSNR (dB, images in [0, 1]; inf when identical), mean SSIM, mean relative L2."""
    psnrs, ssims = per_image(reference, candidate)
    ref, cand = reference.double(), candidate.double()
    rels = [float((r - c).norm() / r.norm()) for r, c in zip(ref + 1, cand + 1, strict=True)]
    return Fidelity(float(np.mean(psnrs)), float(np.mean(ssims)), float(np.mean(rels)))


def save_grid(rows: list[tuple[str, torch.Tensor]], path: Path, columns: int = 8) -> None:
    """One row of images per configuration (the first row uncached), labelled on the left."""
    from PIL import Image, ImageDraw

    scale, label_width = 3, 150
    size = fixture.IMAGE_SIZE * scale
    sheet = Image.new("RGB", (label_width + columns * size, len(rows) * size), "white")
    draw = ImageDraw.Draw(sheet)
    for row, (label, images) in enumerate(rows):
        draw.text((4, row * size + size // 2 - 6), label, fill="black")
        for col, image in enumerate(images[:columns]):
            pixels = ((image.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
            tile = Image.fromarray(pixels).resize((size, size), Image.NEAREST)
            sheet.paste(tile, (label_width + col * size, row * size))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
