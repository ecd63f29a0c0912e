"""``python -m lib_deepcache.bench``: sample with and without DeepCache and compare.

A seeded UNet in the full SD1.5 architecture (random weights: no weights can be downloaded
here) is sampled by a real k-diffusion sampler with classifier-free guidance (UNet batch 2),
once uncached and once cached, alternating so that drift of the machine hits both alike. The
report gives the full/cached step counts, the median wall time of each, the measured speedup and
the UNet FLOP ratio computed from the counted shallow-path share. The FLOP ratio is not a hard
wall-time ceiling, since time per block is not proportional to FLOPs: on a 2-core CPU the
measured speedup has come out above it.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from . import schedule
from .archs import ARCHS, sdpa_attention
from .flops import count_block_flops
from .harness import SAMPLERS, make_rig
from .params import DeepCacheParams
from .session import DeepCacheSession
from .unet_ldm import LdmLayout

logger = logging.getLogger("deepcache")


@dataclass(frozen=True)
class BenchResult:
    full_steps: int
    cached_steps: int
    seconds_off: float
    seconds_on: float
    shallow_share: float

    @property
    def speedup(self) -> float:
        return self.seconds_off / self.seconds_on

    @property
    def flop_speedup(self) -> float:
        """Exact UNet FLOP ratio, uncached over cached, for these step counts."""
        total = self.full_steps + self.cached_steps
        return total / (self.full_steps + self.cached_steps * self.shallow_share)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m lib_deepcache.bench", description=__doc__)
    parser.add_argument("--arch", choices=sorted(ARCHS), default="sd15")
    parser.add_argument("--width", type=int, default=None, help="model channels (default: real)")
    parser.add_argument("--sampler", choices=sorted(SAMPLERS), default="euler")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--size", type=int, default=32, help="latent side (pixels / 8)")
    parser.add_argument("--interval", type=int, default=3)
    parser.add_argument("--depth", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per setting")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> BenchResult:
    params = DeepCacheParams(enabled=True, interval=args.interval, depth=args.depth)
    print(f"building {args.arch} UNet (seeded weights) ...", flush=True)
    rig = make_rig(args.arch, width=args.width, seed=args.seed, size=args.size)
    sigmas = rig.sigmas(args.steps)
    grid = rig.timestep_grid(sigmas)
    times: dict[bool, list[float]] = {False: [], True: []}
    stats = None
    with sdpa_attention():
        rig.sample(args.sampler, 1, batch=1, size=args.size)  # warm-up: allocator, kernels
        for repeat in range(args.repeats):
            for enabled in (False, True):
                session = DeepCacheSession(
                    rig.unet, params if enabled else DeepCacheParams(), args.steps, grid
                )
                start = time.perf_counter()
                with session:
                    rig.sample(args.sampler, args.steps, batch=1, size=args.size, sigmas=sigmas)
                times[enabled].append(time.perf_counter() - start)
                label = "DeepCache" if enabled else "uncached "
                print(f"  run {repeat + 1}/{args.repeats} {label} {times[enabled][-1]:7.2f} s")
                if enabled:
                    stats = session.stats
    if stats is None:
        raise RuntimeError("no cached run was made")
    layout = LdmLayout.of(rig.unet)
    context_shape = (2, 77, rig.context_dim)
    counted = count_block_flops(rig.unet, (2, 4, args.size, args.size), context_shape)
    return BenchResult(
        full_steps=stats.full_steps,
        cached_steps=stats.cached_steps,
        seconds_off=statistics.median(times[False]),
        seconds_on=statistics.median(times[True]),
        shallow_share=counted.shallow_share(stats.depth, layout),
    )


def main(argv: Sequence[str] | None = None) -> BenchResult:
    args = parse_args(argv)
    torch.set_grad_enabled(False)
    result = run(args)
    expected = len(
        schedule.full_steps(DeepCacheParams(True, args.interval, args.depth), args.steps)
    )
    print()
    print(
        f"{args.arch}, {args.sampler}, {args.steps} steps, latent {args.size}x{args.size}, "
        f"CFG batch 2, interval {args.interval}, depth {args.depth}, device cpu"
    )
    print(
        f"full / cached steps     : {result.full_steps} / {result.cached_steps}"
        f" (schedule: {expected} full)"
    )
    print(f"uncached time (median)  : {result.seconds_off:.2f} s")
    print(f"DeepCache time (median) : {result.seconds_on:.2f} s")
    print(f"measured speedup        : {result.speedup:.2f}x")
    print(
        f"UNet FLOP ratio         : {result.flop_speedup:.2f}x"
        f"  (shallow share f = {result.shallow_share:.2%})"
    )
    return result


if __name__ == "__main__":
    main()
