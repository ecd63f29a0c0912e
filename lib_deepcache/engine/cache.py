"""The store of deep features: per call slot, one entry per batch shape, dtype and device.

A call slot is the position of a UNet pass within its denoising step (cond and uncond sent as
separate calls, the two evaluations of a second-order sampler). Keying by slot keeps the uncond
pass from reading the cond pass's feature. Within a slot, entries are keyed by shape, dtype and
device: a pass whose batch has no entry misses and runs the UNet fully. Several shapes are kept
per slot because hosts alternate batch shapes from step to step: A1111's negative guidance
minimum sigma drops the uncond rows on every other step, so the batch goes 2B, B, 2B, B...; with
one entry per slot each shape would evict the other and every cached step would miss.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch

# A guard against hosts that call the UNet an unbounded number of times per step: past this
# many slots nothing more is stored, so memory stays bounded (those calls simply run fully).
MAX_SLOTS = 32
# Batch shapes kept per slot (the least recently stored is dropped first): 2B and B under
# A1111's NGMS / skip-early-CFG, with room for a resolution change mid-generation.
SHAPES_PER_SLOT = 4

# (shape or shapes, dtype, device): a UNet keys by its input's shape, a transformer by the
# shapes of all its streams
CacheKey = tuple[Any, torch.dtype, torch.device]


def key_of(tensor: torch.Tensor) -> CacheKey:
    return tuple(tensor.shape), tensor.dtype, tensor.device


@dataclass(frozen=True)
class ResidualPart:
    """Where one stream's residual lies in a transformer's flat stored feature: the stage it
    belongs to and its shape (the parts follow each other in order)."""

    stage: int
    shape: tuple[int, ...]


@dataclass
class CacheEntry:
    """The deep feature of one full pass and the output shapes of the blocks it skips later.

    The shapes let a cached pass hand correctly shaped placeholders to a foreign UNet loop that
    still concatenates and adds residuals on the skipped levels. A transformer's feature is its
    stages' residuals laid end to end, and ``parts`` says where each lies.
    """

    key: CacheKey
    feature: torch.Tensor
    step: int
    skipped_shapes: dict[str, Any] = field(default_factory=dict)
    timestep: float | None = None  # the UNet timestep of the call that stored it, if readable
    # the slot's entry of the same key from the full step before, kept for forecasting
    previous: CacheEntry | None = None
    parts: tuple[ResidualPart, ...] = ()

    @property
    def nbytes(self) -> int:
        own = self.feature.numel() * self.feature.element_size()
        return own + (self.previous.nbytes if self.previous is not None else 0)


class FeatureCache:
    def __init__(self) -> None:
        # slot -> key -> entry; each inner dict is in storing order, oldest first
        self._slots: dict[int, dict[CacheKey, CacheEntry]] = {}

    def get(self, slot: int, key: CacheKey, stored_since: int) -> CacheEntry | None:
        """The slot's entry for ``key`` if it was stored at step ``stored_since`` or later (the
        last full step), so a shape that skipped a refresh never serves a stale feature."""
        entry = self._slots.get(slot, {}).get(key)
        if entry is None or entry.step < stored_since:
            return None
        return entry

    def put(self, slot: int, entry: CacheEntry, keep_previous: bool = False) -> bool:
        """Store, replacing the slot's entry of the same key and dropping the slot's oldest
        shape past :data:`SHAPES_PER_SLOT`; False when the slot is past the bound.

        ``keep_previous``: the replaced entry, if stored at an earlier step, stays attached as
        ``entry.previous`` (one extra feature per slot and shape, never more)."""
        if slot >= MAX_SLOTS:
            return False
        entries = self._slots.setdefault(slot, {})
        replaced = entries.pop(entry.key, None)
        if keep_previous and replaced is not None and replaced.step < entry.step:
            entry.previous = replace(replaced, previous=None)
        entries[entry.key] = entry
        while len(entries) > SHAPES_PER_SLOT:
            del entries[next(iter(entries))]
        return True

    def clear(self) -> None:
        self._slots.clear()

    @property
    def nbytes(self) -> int:
        return sum(entry.nbytes for entry in self._entries())

    def tensors(self) -> list[torch.Tensor]:
        tensors = []
        for entry in self._entries():
            tensors.append(entry.feature)
            if entry.previous is not None:
                tensors.append(entry.previous.feature)
        return tensors

    def _entries(self) -> list[CacheEntry]:
        return [entry for entries in self._slots.values() for entry in entries.values()]
