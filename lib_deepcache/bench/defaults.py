"""Per-layout defaults: which interval and depth to start a user on, for each UNet layout.

Each trained fixture (``fixture.LAYOUTS``: SD1.x/2.x block structure and SDXL's) samples the same
seeds with every (interval, depth) of a grid; fidelity is PSNR/SSIM against the same layout's
uncached image, speed the FLOP speedup from that layout's own shallow shares. The rule
(:func:`choose`): the fidelity bar is that of interval 3, depth 0 on the SD1.x layout (what users
know from the paper and every extension); per layout, the fastest setting whose PSNR, averaged
over the samplers, clears that bar.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..engine.params import DeepCacheParams
from . import fixture
from .fidelity import FixtureSampler, flop_speedup, per_image
from .study import SAMPLER_NAMES

BAR = ("sd15", 3, 0)  # layout, interval, depth whose fidelity every layout's default must reach


@dataclass
class DefaultsRow:
    layout: str
    sampler: str
    interval: int
    depth: int
    flop_speedup: float
    psnr: float
    ssim: float


def defaults_study(
    layouts: Sequence[str],
    samplers: Sequence[str],
    intervals: Sequence[int],
    depths: Sequence[int],
    seeds: Sequence[int],
    steps: int = 30,
    tick: Callable[[str], None] = lambda _: None,
) -> list[DefaultsRow]:
    seeds = list(seeds)
    rows: list[DefaultsRow] = []
    for layout in layouts:
        sampler_rig = FixtureSampler(fixture.load(layout=layout))
        flops = sampler_rig.flops(len(seeds))
        for name in samplers:
            sampler = SAMPLER_NAMES[name]
            reference, _ = sampler_rig.sample(seeds, steps, sampler)
            for interval in intervals:
                for depth in depths:
                    params = DeepCacheParams(True, interval, depth)
                    images, stats = sampler_rig.sample(seeds, steps, sampler, params)
                    psnr, ssim = per_image(reference, images)
                    speed = flop_speedup(stats, flops.shallow_share(depth))
                    rows.append(
                        DefaultsRow(
                            layout, name, interval, depth, speed,
                            float(np.mean(psnr)), float(np.mean(ssim)),
                        )
                    )  # fmt: skip
                    tick(f"{layout} {name} N={interval} b={depth}")
    return rows


def choose(rows: Sequence[DefaultsRow]) -> dict[str, tuple[int, int]]:
    """Per layout, the fastest (interval, depth) whose mean PSNR over the samplers reaches the
    mean PSNR of :data:`BAR`; ties go to the smaller interval, then the smaller depth."""
    mean: dict[tuple[str, int, int], tuple[float, float]] = {}
    for key in {(r.layout, r.interval, r.depth) for r in rows}:
        cell = [r for r in rows if (r.layout, r.interval, r.depth) == key]
        mean[key] = (
            float(np.mean([r.psnr for r in cell])),
            float(np.mean([r.flop_speedup for r in cell])),
        )
    bar = mean[BAR][0]
    chosen: dict[str, tuple[int, int]] = {}
    for layout in sorted({r.layout for r in rows}):
        passing = [
            (speed, -interval, -depth)
            for (lay, interval, depth), (psnr, speed) in mean.items()
            if lay == layout and psnr >= bar
        ]
        if passing:
            _, interval, depth = max(passing)
            chosen[layout] = (-interval, -depth)
    return chosen


def to_markdown(rows: Sequence[DefaultsRow], header: str) -> str:
    lines = [
        header,
        "",
        "| layout | sampler | interval | depth | FLOP speedup | PSNR dB | SSIM |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.layout} | {r.sampler} | {r.interval} | {r.depth} | {r.flop_speedup:.2f}x | "
            f"{r.psnr:.2f} | {r.ssim:.4f} |"
        )
    chosen = choose(rows)
    lines += ["", "Chosen (fastest setting at the fidelity of SD1.x interval 3, depth 0):", ""]
    lines += [f"- {layout}: interval {n}, depth {b}" for layout, (n, b) in chosen.items()]
    return "\n".join(lines) + "\n"
