"""FLOP figures for the benchmark: per-unit counts for inputs of given shapes, the speed limit
``S(N, b)`` of uniform caching, and the FLOP speedup of a run's step counts.

The per-unit counting itself (on a weightless ``meta`` twin) is the engine's
(:mod:`lib_deepcache.engine.flops`), which reports a session's estimated saving with it.
"""

from __future__ import annotations

import torch

from ..engine.flops import BlockFlops, count_unit_flops


def count_block_flops(
    unet: torch.nn.Module,
    x_shape: tuple[int, ...],
    context_shape: tuple[int, ...] | None,
    y_shape: tuple[int, ...] | None = None,
    dtype: torch.dtype = torch.float32,
) -> BlockFlops:
    """:func:`count_unit_flops` for an ldm ``UNetModel`` called with inputs of these shapes."""
    x = torch.empty(x_shape, device="meta", dtype=dtype)
    t = torch.empty((x_shape[0],), device="meta", dtype=torch.float32)
    kwargs = {"context": _meta(context_shape, dtype)}
    if y_shape is not None:
        kwargs["y"] = _meta(y_shape, dtype)
    return count_unit_flops(unet, (x, t), kwargs)


def _meta(shape: tuple[int, ...] | None, dtype: torch.dtype) -> torch.Tensor | None:
    return None if shape is None else torch.empty(shape, device="meta", dtype=dtype)


def speed_limit(interval: int, shallow_share: float) -> float:
    """S(N, b) = N / (1 + (N - 1) f_b): the UNet speedup uniform caching can never exceed."""
    return interval / (1 + (interval - 1) * shallow_share)


def schedule_speedup(full_steps: int, cached_steps: int, shallow_share: float) -> float:
    """UNet FLOPs uncached over cached for a run with these step counts."""
    total = full_steps + cached_steps
    return total / (full_steps + cached_steps * shallow_share)
