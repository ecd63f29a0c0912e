"""The benchmark's table: one row per (interval, depth, schedule), as markdown or JSON, and the
grid syntax that names the rows (``"3x0,5x1n,3x0a0.2"``)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from ..engine.params import AUTO_INTERVAL, DeepCacheParamError, DeepCacheParams


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
    # lowest and highest per-repeat speedup (each repeat's cached run against its own bracket)
    speedup_low: float = 0.0
    speedup_high: float = 0.0
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
            "range over repeats",
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
                f"{r.speedup_low:.2f}-{r.speedup_high:.2f}x",
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
