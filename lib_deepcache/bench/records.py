"""What a method study records: one row per (sampler, interval, method) and the per-seed
scores behind it, shared by the UNet and the transformer study and by their verdicts."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .equal_quality import Point

Scores = tuple[np.ndarray, np.ndarray]  # per-seed PSNR and SSIM


@dataclass
class StudyRow:
    method: str
    sampler: str
    interval: int
    flop_speedup: float
    matched: bool
    full_steps: int
    cached_steps: int
    psnr: float
    ssim: float
    psnr_diff: float  # mean over seeds of (method - uniform); 0 for uniform itself
    psnr_ci: float  # half width of its 95 % confidence interval
    ssim_diff: float
    ssim_ci: float
    threshold: float | None = None

    @property
    def wins(self) -> bool:
        """Above uniform on both metrics, each with its whole interval above zero."""
        return self.psnr_diff - self.psnr_ci > 0 and self.ssim_diff - self.ssim_ci > 0


@dataclass
class Study:
    rows: list[StudyRow] = field(default_factory=list)
    points: list[Point] = field(default_factory=list)
    # per (sampler, interval, method): per-seed PSNR and SSIM of the matched run
    scores: dict[tuple[str, int, str], Scores] = field(default_factory=dict)
    # per (sampler, interval, rival) whose run landed off the cell's speedup: the best mode's run
    # met at that rival's cost, as (its own speedup, per-seed PSNR, per-seed SSIM)
    rematched: dict[tuple[str, int, str], tuple[float, np.ndarray, np.ndarray]] = field(
        default_factory=dict
    )
    # per sampler: the equal-quality bar (speedup, mean PSNR, mean SSIM)
    bars: dict[str, tuple[float, float, float]] = field(default_factory=dict)
