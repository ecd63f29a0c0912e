"""UNet FLOPs per block, counted on a weightless ``meta`` twin of the model.

The shallow path's share of the UNet's FLOPs (``f_b``) sets the speed limit of DeepCache:
over K steps with F full ones the UNet does ``F + (K - F) * f_b`` full-call equivalents. Counting
on ``meta`` costs no real compute and, unlike CPU tensors, counts the SDPA attention kernels.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from .layout import skipped_units, unit_name
from .unets import layout_of


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
    """FLOPs of one UNet call: the total and each unit's share (see :mod:`.layout`)."""

    total: int
    per_unit: dict[str, int]
    num_blocks: int

    def shallow_share(self, depth: int) -> float:
        """``f_b``: FLOPs of a cached pass at this depth over FLOPs of a full pass."""
        skipped = sum(self.per_unit.get(name, 0) for name in skipped_units(self.num_blocks, depth))
        return (self.total - skipped) / self.total


def count_unit_flops(unet: torch.nn.Module, args: tuple, kwargs: dict) -> BlockFlops:
    """Run a ``meta`` twin once on these (``meta``) arguments; attribute FLOPs to each unit."""
    twin = meta_twin(unet)
    layout = layout_of(twin)
    names = {id(site.module): unit_name(site.role, site.first) for site in layout.leaves()}
    per_unit: dict[str, int] = {}
    counter = FlopCounterMode(display=False)
    starts: dict[int, int] = {}

    def before(module, args):
        starts[id(module)] = _total(counter)

    def after(module, args, output):
        name = names[id(module)]
        per_unit[name] = per_unit.get(name, 0) + _total(counter) - starts.pop(id(module))

    handles = []
    for site in layout.leaves():
        handles.append(site.module.register_forward_pre_hook(before))
        handles.append(site.module.register_forward_hook(after))
    try:
        with torch.no_grad(), counter:
            twin(*args, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    return BlockFlops(total=_total(counter), per_unit=per_unit, num_blocks=layout.num_blocks)


def _total(counter: FlopCounterMode) -> int:
    return int(counter.get_total_flops())
