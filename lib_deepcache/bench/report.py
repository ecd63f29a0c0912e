"""The benchmark's table: one row per (interval, depth, schedule), as markdown or JSON, and the
grid syntax that names the rows (``"3x0,5x1n,3x0a0.2"``)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from ..engine.params import AUTO_INTERVAL, DeepCacheParamError, DeepCacheParams
from .pairing import Policy


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
    # median of the pairs: each cached run's UNet time against the mean of the uncached runs
    # just before and after it (pairing.py)
    measured_speedup: float = 0.0
    # lowest and highest pair, every pair, and whether the range is too wide to trust
    speedup_low: float = 0.0
    speedup_high: float = 0.0
    pairs: list[float] = field(default_factory=list)
    wide: bool = False
    efficiency: float = 0.0
    cache_peak_mb: float = 0.0
    psnr: float | None = None
    ssim: float | None = None
    rel_l2: float | None = None

    @property
    def above_flops(self) -> bool:
        """Even the slowest pair beat the run's FLOP speedup (the limit S when N divides the
        steps): more than noise, UNet time that is not proportional to FLOPs here
        (docs/benchmarks.md)."""
        return bool(self.pairs) and self.speedup_low > self.flop_speedup

    @property
    def mark(self) -> str:
        return ("*" if self.wide else "") + ("^" if self.above_flops else "")

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
    policy: Policy = field(default_factory=Policy)
    budget_hit: bool = False  # the time budget stopped rows before their range was tight

    def how_to_read(self) -> str:
        """The one line printed under the table: what measured, range and the marks mean."""
        line = (
            "How to read: measured = median of the pairs, each a cached run's UNet time against "
            "the mean of the uncached runs just before and after it; range = slowest-fastest "
            f"pair; * = under {self.policy.min_pairs} pairs or a range wider than "
            f"{self.policy.spread:.0%} of the median: noise, not speed (a busy machine widens "
            "every range; rerun when it is idle); ^ = even the slowest pair beat the FLOP "
            "speedup (docs/benchmarks.md)."
        )
        if self.budget_hit:
            line += f" The {self.policy.budget_s:g} s budget stopped repeats (--budget 0: none)."
        return line

    def to_json(self) -> str:
        rows = [{**asdict(r), "label": r.label, "mark": r.mark} for r in self.rows]
        data = {"settings": self.settings, "how_to_read": self.how_to_read(), "rows": rows}
        return json.dumps(data, indent=2)

    def to_markdown(self) -> str:
        quality = any(r.psnr is not None for r in self.rows)
        head = ["config", "full/cached", "f_b", "FLOP speedup", "limit S", "UNet s off"]
        head += ["UNet s on", "measured", "range", "pairs", "efficiency", "cache MB"]
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
                f"{r.measured_speedup:.2f}x {r.mark}".rstrip(),
                f"{r.speedup_low:.2f}-{r.speedup_high:.2f}x",
                str(len(r.pairs)),
                f"{r.efficiency:.2f}",
                f"{r.cache_peak_mb:.1f}",
            ]
            if quality:
                cells += [_fmt(r.psnr, ".2f"), _fmt(r.ssim, ".4f"), _fmt(r.rel_l2, ".4f")]
            lines.append("| " + " | ".join(cells) + " |")
        settings = ", ".join(f"{k} {v}" for k, v in self.settings.items())
        table = "\n".join(lines)
        return f"{settings}\n\n{table}\n\n{self.how_to_read()}\n"


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


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
        if int(interval) == AUTO_INTERVAL:  # a bench row names the setting it measures
            raise DeepCacheParamError("interval", interval, "an integer from 1 (no auto here)")
        row = Row(
            int(interval), int(depth), "adaptive" if threshold is not None else schedule, threshold
        )
        row.params()
        rows.append(row)
    return rows
