"""A model's FLOPs per unit (UNet block or layer, transformer block), counted on a weightless
``meta`` twin of the model.

The shallow path's share of the model's FLOPs (``f_b``) sets the speed limit of DeepCache: over
K steps with F full ones the model does ``F + (K - F) * f_b`` full-call equivalents. Counting on
``meta`` costs no real compute and, unlike CPU tensors, counts the SDPA attention kernels.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from .denoisers import layout_of


def meta_twin(module: torch.nn.Module) -> torch.nn.Module:
    """A structural copy whose parameters and buffers live on ``meta`` (no weight is copied).

    Instance-level ``forward`` overrides (ours, ControlNet's) are dropped from the copy so that
    the twin counts the architecture itself and never calls back into the real model.
    """
    memo: dict[int, object] = {}
    for tensor in list(module.parameters()) + list(module.buffers()):
        twin = torch.empty_like(tensor, device="meta")
        memo[id(tensor)] = (
            torch.nn.Parameter(twin, requires_grad=False)
            if isinstance(tensor, torch.nn.Parameter)
            else twin
        )
    clone = copy.deepcopy(module, memo)
    for sub in clone.modules():
        sub.__dict__.pop("forward", None)
        sub._forward_pre_hooks.clear()
        sub._forward_hooks.clear()
    return clone


@dataclass(frozen=True)
class BlockFlops:
    """FLOPs of one model call: the total, each unit's share, and the units a cached pass skips
    at each depth (``skipped[d]``; a deeper setting is clamped to the last)."""

    total: int
    per_unit: dict[str, int]
    num_blocks: int
    skipped: tuple[tuple[str, ...], ...]

    def shallow_share(self, depth: int) -> float:
        """``f_b``: FLOPs of a cached pass at this depth over FLOPs of a full pass."""
        names = self.skipped[min(depth, len(self.skipped) - 1)]
        return (self.total - sum(self.per_unit.get(name, 0) for name in names)) / self.total


def count_unit_flops(model: torch.nn.Module, args: tuple, kwargs: dict) -> BlockFlops:
    """Run a ``meta`` twin once on these (``meta``) arguments; attribute FLOPs to each unit."""
    twin = meta_twin(model)
    layout = layout_of(twin)
    units = layout.flop_units()
    names = {id(module): name for name, module in units}
    per_unit: dict[str, int] = {}
    counter = FlopCounterMode(display=False)
    starts: dict[int, int] = {}

    def before(module, args):
        starts[id(module)] = _total(counter)

    def after(module, args, output):
        name = names[id(module)]
        per_unit[name] = per_unit.get(name, 0) + _total(counter) - starts.pop(id(module))

    handles = []
    for _, module in units:
        handles.append(module.register_forward_pre_hook(before))
        handles.append(module.register_forward_hook(after))
    try:
        with torch.no_grad(), counter:
            twin(*args, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    skipped = tuple(tuple(layout.skipped_unit_names(d)) for d in range(layout.max_depth + 1))
    return BlockFlops(_total(counter), per_unit, layout.num_blocks, skipped)


def _total(counter: FlopCounterMode) -> int:
    return int(counter.get_total_flops())
