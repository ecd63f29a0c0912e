"""Speed at equal quality: the FLOP speedup at which each method still reaches the fidelity of
a bar (uniform DeepCache at interval 3 for the UNet, classic DeepCache for the transformer), read
off its speed/fidelity curve.

A method's curve is the set of its runs (intervals, or the thresholds tried while matching) as
(FLOP speedup, mean PSNR, mean SSIM) per sampler. For each metric, the speed at the bar is the
fastest point still at or above it, extended by linear interpolation towards the next faster
point, which is below it; the method reaches the bar on both metrics at the smaller of the two
speeds. A method none of whose runs reach the bar has no speed there (reported as "-").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Point:
    """One run of a method: its setting, speedup and mean fidelity to the uncached images."""

    method: str
    sampler: str
    knob: float | None
    flop_speedup: float
    psnr: float
    ssim: float


@dataclass(frozen=True)
class EqualQuality:
    sampler: str
    method: str
    psnr_speed: float | None  # fastest speed with PSNR at the bar
    ssim_speed: float | None
    bar_speed: float  # the bar's own speedup

    @property
    def speed(self) -> float | None:
        """The speed at which both metrics reach the bar."""
        if self.psnr_speed is None or self.ssim_speed is None:
            return None
        return min(self.psnr_speed, self.ssim_speed)

    @property
    def ratio(self) -> float | None:
        """How much faster than the bar, at its quality."""
        return None if self.speed is None else self.speed / self.bar_speed


def speed_at(curve: Sequence[tuple[float, float]], bar: float) -> float | None:
    """The largest speed at which the piecewise-linear curve (speed, value), sorted by speed,
    is still >= bar: past the fastest point at the bar, up to where the segment to the next
    point crosses it."""
    points = sorted(curve)
    reached = [i for i, (_, value) in enumerate(points) if value >= bar]
    if not reached:
        return None
    i = reached[-1]
    speed, value = points[i]
    if i + 1 == len(points):
        return speed
    next_speed, next_value = points[i + 1]
    if next_value == value:
        return next_speed
    return speed + (next_speed - speed) * (value - bar) / (value - next_value)


def equal_quality(
    points: Sequence[Point], bars: dict[str, tuple[float, float, float]]
) -> list[EqualQuality]:
    """Per sampler and method; ``bars[sampler]`` = (speedup, PSNR, SSIM) of the bar's run."""
    out = []
    for sampler, (bar_speed, bar_psnr, bar_ssim) in bars.items():
        methods = dict.fromkeys(p.method for p in points if p.sampler == sampler)
        for method in methods:
            mine = [p for p in points if p.sampler == sampler and p.method == method]
            psnr = speed_at([(p.flop_speedup, p.psnr) for p in mine], bar_psnr)
            ssim = speed_at([(p.flop_speedup, p.ssim) for p in mine], bar_ssim)
            out.append(EqualQuality(sampler, method, psnr, ssim, bar_speed))
    return out


def to_markdown(rows: Sequence[EqualQuality], header: str, bar: str = "uniform N=3") -> str:
    def fmt(value: float | None, suffix: str = "x") -> str:
        return "-" if value is None else f"{value:.2f}{suffix}"

    lines = [
        header,
        "",
        "| sampler | method | speed at the PSNR bar | speed at the SSIM bar | speed at both"
        f" | vs {bar} |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.sampler} | {r.method} | {fmt(r.psnr_speed)} | {fmt(r.ssim_speed)} | "
            f"{fmt(r.speed)} | {fmt(r.ratio)} |"
        )
    return "\n".join(lines) + "\n"


def save_plot(
    points: Sequence[Point],
    bars: dict[str, tuple[float, float, float]],
    path: Path,
    bar: str = "uniform N=3",
) -> None:
    """PSNR and SSIM against FLOP speedup, a column per sampler, the bars dashed."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    samplers = list(bars)
    figure, axes = plt.subplots(2, len(samplers), figsize=(5 * len(samplers), 7), squeeze=False)
    for col, sampler in enumerate(samplers):
        mine = [p for p in points if p.sampler == sampler]
        for row, metric in enumerate(("psnr", "ssim")):
            ax = axes[row][col]
            for method in dict.fromkeys(p.method for p in mine):
                curve = sorted(
                    (p.flop_speedup, getattr(p, metric)) for p in mine if p.method == method
                )
                ax.plot(*zip(*curve, strict=True), marker="o", markersize=3, label=method)
            ax.axhline(bars[sampler][1 + row], color="black", linestyle="--", linewidth=0.8)
            ax.set_title(f"{sampler}: {metric.upper()} (dashed: {bar})")
            ax.set_xlabel("FLOP speedup")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
