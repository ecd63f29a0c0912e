"""Speed of DeepCache on diffusion transformers: FLOP speedup at full size, measured wall time.

``python -m lib_deepcache.bench.dit_speed`` prints two tables (docs/benchmarks.md,
"Transformers"):

* **FLOPs at full size.** Flux-dev (diffusers ``FluxTransformer2DModel``: width 3072, 19 double +
  38 single blocks; 1024x1024 = 4096 image tokens + 512 text tokens) and SD3.5-medium
  (``SD3Transformer2DModel``: 24 joint blocks of width 1536; 4096 image tokens + 333 text
  tokens), built on ``meta`` (no weight exists, nothing is computed) and counted per block by
  ``FlopCounterMode`` (attention included). A cached call runs the first and the last
  ``depth`` blocks (none at depth 0) and what lies outside the stack, so its share of a full
  call is ``f_d``; over K steps of which F run full
  the FLOP speedup is ``K / (F + (K - F) f_d)``, and ``1 / f_d`` is the limit of the depth.
* **Measured.** A seeded diffusers Flux transformer of the size given on the command line,
  sampled by flow-matching Euler (one transformer call a step, as Flux-dev with its distilled
  guidance runs), timed whole: each cached run between two uncached ones, the ratio to their
  mean, median over the repeats; efficiency = measured / FLOP speedup (the FLOPs counted for that
  model and that run's own full / cached steps).

``--device cuda --dtype bfloat16 --width 3072 --doubles 19 --singles 38 --tokens 4096`` measures
full-size Flux-dev with random weights on a GPU (about 24 GB of weights).
"""

from __future__ import annotations

import argparse
import itertools
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..engine.flops import BlockFlops, count_unit_flops
from ..engine.params import DeepCacheParams
from ..engine.session import DeepCacheSession

TEXT_TOKENS = {"flux-dev": 512, "sd3.5-medium": 77 + 256}
IMAGE_TOKENS = 4096  # 1024x1024: a 128x128 latent in 2x2 patches
STEPS = 28  # the Flux-dev and SD3.5 pipelines' default
INTERVALS = (2, 3, 4, 5)


def flux_dev(width: int = 3072, doubles: int = 19, singles: int = 38) -> torch.nn.Module:
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,
        num_layers=doubles,
        num_single_layers=singles,
        attention_head_dim=128,
        num_attention_heads=width // 128,
        joint_attention_dim=4096,
        pooled_projection_dim=768,
        guidance_embeds=True,
        axes_dims_rope=(16, 56, 56),
    )


def sd35_medium() -> torch.nn.Module:
    from diffusers import SD3Transformer2DModel

    return SD3Transformer2DModel(
        sample_size=128,
        patch_size=2,
        in_channels=16,
        num_layers=24,
        attention_head_dim=64,
        num_attention_heads=24,
        joint_attention_dim=4096,
        caption_projection_dim=1536,
        pooled_projection_dim=2048,
        out_channels=16,
        pos_embed_max_size=384,
        dual_attention_layers=tuple(range(13)),
        qk_norm="rms_norm",
    )


def flux_inputs(
    tokens: int, text: int, batch: int = 1, device: str | torch.device = "meta",
    dtype: torch.dtype = torch.float32,
) -> dict[str, torch.Tensor]:  # fmt: skip
    """A Flux call's keyword arguments for ``tokens`` image tokens (a square latent grid)."""
    side = math.isqrt(tokens)
    grid = torch.arange(tokens, device=device)
    make = dict(device=device, dtype=dtype)
    return {
        "hidden_states": torch.randn(batch, tokens, 64, **make),
        "encoder_hidden_states": torch.randn(batch, text, 4096, **make),
        "pooled_projections": torch.randn(batch, 768, **make),
        "timestep": torch.ones(batch, **make),
        "guidance": torch.full((batch,), 3.5, **make),
        "img_ids": torch.stack([grid * 0, grid // side, grid % side], -1).to(dtype),
        "txt_ids": torch.zeros(text, 3, **make),
        "return_dict": False,
    }


def sd3_inputs(tokens: int, text: int) -> dict[str, torch.Tensor]:
    side = 2 * math.isqrt(tokens)
    return {
        "hidden_states": torch.empty(1, 16, side, side, device="meta"),
        "encoder_hidden_states": torch.empty(1, text, 4096, device="meta"),
        "pooled_projections": torch.empty(1, 2048, device="meta"),
        "timestep": torch.empty(1, device="meta"),
        "return_dict": False,
    }


def full_size_flops() -> dict[str, BlockFlops]:
    """Per-block FLOPs of one call of each full-size model, counted on ``meta``."""
    with torch.device("meta"):
        flux, sd3 = flux_dev(), sd35_medium()
    return {
        "flux-dev": count_unit_flops(flux, (), flux_inputs(IMAGE_TOKENS, TEXT_TOKENS["flux-dev"])),
        "sd3.5-medium": count_unit_flops(
            sd3, (), sd3_inputs(IMAGE_TOKENS, TEXT_TOKENS["sd3.5-medium"])
        ),
    }


def uniform_full_steps(steps: int, interval: int) -> int:
    """Full steps of the uniform schedule: every ``interval``-th step from step 0."""
    return -(-steps // interval)


def flop_speedup(flops: BlockFlops, depth: int, full: int, cached: int) -> float:
    share = flops.shallow_share(depth)
    return (full + cached) / (full + cached * share)


def flop_table(models: dict[str, BlockFlops], steps: int = STEPS) -> list[str]:
    lines = [
        "| model | TFLOP / call | depth | cached share f_d | limit 1/f_d | "
        + " | ".join(f"interval {n}" for n in INTERVALS)
        + " |",
        "|---|---|---|---|---|" + "---|" * len(INTERVALS),
    ]
    for name, flops in models.items():
        for depth in range(min(4, len(flops.skipped))):
            share = flops.shallow_share(depth)
            speedups = [
                flop_speedup(flops, depth, full, steps - full)
                for full in (uniform_full_steps(steps, n) for n in INTERVALS)
            ]
            lines.append(
                f"| {name} | {flops.total / 1e12:.2f} | {depth} | {share:.2%} | {1 / share:.1f}x | "
                + " | ".join(f"{s:.2f}x" for s in speedups)
                + " |"
            )
    return lines


@dataclass
class Measured:
    interval: int
    depth: int
    full: int
    cached: int
    ratios: list[float]
    flop: float

    @property
    def speedup(self) -> float:
        return statistics.median(self.ratios)


def _euler(model: torch.nn.Module, inputs: dict, steps: int) -> torch.Tensor:
    """Flow-matching Euler from sigma 1 to 0, one call a step, timestep = sigma (Flux)."""
    x = inputs["hidden_states"]
    sigmas = torch.linspace(1.0, 0.0, steps + 1).tolist()
    with torch.no_grad():
        for sigma, following in itertools.pairwise(sigmas):
            batch = {**inputs, "hidden_states": x, "timestep": torch.full_like(
                inputs["timestep"], sigma)}  # fmt: skip
            x = x + (following - sigma) * model(**batch)[0]
    return x


def _timed(run: Callable[[], object], sync: Callable[[], None]) -> float:
    sync()
    start = time.perf_counter()
    run()
    sync()
    return time.perf_counter() - start


def measure(
    model: torch.nn.Module, inputs: dict, settings: Sequence[tuple[int, int]], steps: int,
    repeats: int, flops: BlockFlops,
) -> list[Measured]:  # fmt: skip
    """Each setting's cached run timed between two uncached runs, ``repeats`` times, after one
    warm-up of each."""
    device = inputs["hidden_states"].device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    grid = torch.linspace(1.0, 0.0, steps + 1).tolist()[:-1]

    def plain() -> float:
        return _timed(lambda: _euler(model, inputs, steps), sync)

    def cached(interval: int, depth: int) -> tuple[float, DeepCacheSession]:
        params = DeepCacheParams(True, interval, depth, min_steps=0)
        session = DeepCacheSession(model, params, steps, timestep_grid=grid)
        with session:
            seconds = _timed(lambda: _euler(model, inputs, steps), sync)
        return seconds, session

    plain()
    results = []
    for interval, depth in settings:
        _, session = cached(interval, depth)  # warm-up, and the run's step counts
        full, skipped = session.stats.full_steps, session.stats.cached_steps
        ratios = []
        before = plain()
        for _ in range(repeats):
            seconds, _ = cached(interval, depth)
            after = plain()
            ratios.append((before + after) / 2 / seconds)
            before = after
        speedup = flop_speedup(flops, depth, full, skipped)
        results.append(Measured(interval, depth, full, skipped, ratios, speedup))
    return results


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m lib_deepcache.bench.dit_speed")
    parser.add_argument("--width", type=int, default=512, help="multiple of 128 (Flux-dev: 3072)")
    parser.add_argument("--doubles", type=int, default=4, help="double-stream blocks (19)")
    parser.add_argument("--singles", type=int, default=8, help="single-stream blocks (38)")
    parser.add_argument("--tokens", type=int, default=256, help="image tokens, a square (4096)")
    parser.add_argument("--text", type=int, default=64, help="text tokens (512)")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--settings", default="2x0,3x0,3x1,5x0", help="interval x depth, ...")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    parser.add_argument("--no-measure", action="store_true", help="only the full-size FLOPs")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    print(f"FLOPs at full size, {STEPS} steps, 1024x1024 (counted on meta):")
    print("\n".join(flop_table(full_size_flops())))
    if args.no_measure:
        return
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    with torch.device("meta"):
        twin = flux_dev(args.width, args.doubles, args.singles)
        counted = count_unit_flops(twin, (), flux_inputs(args.tokens, args.text))
    model = flux_dev(args.width, args.doubles, args.singles).to(args.device, dtype).eval()
    inputs = flux_inputs(args.tokens, args.text, device=args.device, dtype=dtype)
    settings = [tuple(int(v) for v in s.split("x")) for s in args.settings.split(",")]
    threads = torch.get_num_threads()
    print(
        f"\nMeasured: Flux width {args.width}, {args.doubles} + {args.singles} blocks, "
        f"{args.tokens} + {args.text} tokens, {args.steps} Euler steps, {args.device} "
        f"{args.dtype} ({threads} threads), {args.repeats} interleaved repeats:"
    )
    print("| interval | depth | full / cached | FLOP speedup | measured (median, range) | "
          "efficiency |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for row in measure(model, inputs, settings, args.steps, args.repeats, counted):
        print(
            f"| {row.interval} | {row.depth} | {row.full} / {row.cached} | {row.flop:.2f}x | "
            f"{row.speedup:.2f}x ({min(row.ratios):.2f}-{max(row.ratios):.2f}) | "
            f"{row.speedup / row.flop:.2f} |"
        )


if __name__ == "__main__":
    main()
