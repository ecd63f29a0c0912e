"""The store of deep features: one entry per call slot, matched on batch shape, dtype and device.

A call slot is the position of a UNet pass within its denoising step (cond and uncond sent as
separate calls, the two evaluations of a second-order sampler). Keying by slot keeps the uncond
pass from reading the cond pass's feature; keying by shape/dtype/device turns any change of the
batch (uncond rows dropped mid-run, a new resolution) into a miss, which runs the UNet fully.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

# A guard against hosts that call the UNet an unbounded number of times per step: past this
# many slots nothing more is stored, so memory stays bounded (those calls simply run fully).
MAX_SLOTS = 32

CacheKey = tuple[tuple[int, ...], torch.dtype, torch.device]


def key_of(tensor: torch.Tensor) -> CacheKey:
    return tuple(tensor.shape), tensor.dtype, tensor.device


@dataclass
class CacheEntry:
    """The deep feature of one full pass and the output shapes of the blocks it skips later.

    The shapes let a cached pass hand correctly shaped placeholders to a foreign UNet loop that
    still concatenates and adds residuals on the skipped levels.
    """

    key: CacheKey
    feature: torch.Tensor
    step: int
    skipped_shapes: dict[tuple[str, int], torch.Size] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return self.feature.numel() * self.feature.element_size()


class FeatureCache:
    def __init__(self) -> None:
        self._entries: dict[int, CacheEntry] = {}

    def get(self, slot: int, key: CacheKey, stored_since: int) -> CacheEntry | None:
        """The slot's entry if it matches ``key`` and was stored at step ``stored_since`` or
        later (the last full step), so a slot that skipped a refresh never serves a stale one."""
        entry = self._entries.get(slot)
        if entry is None or entry.key != key or entry.step < stored_since:
            return None
        return entry

    def put(self, slot: int, entry: CacheEntry) -> bool:
        """Store, replacing the slot's previous entry; False when the slot is past the bound."""
        if slot >= MAX_SLOTS:
            return False
        self._entries[slot] = entry
        return True

    def clear(self) -> None:
        self._entries.clear()

    @property
    def nbytes(self) -> int:
        return sum(entry.nbytes for entry in self._entries.values())

    def tensors(self) -> list[torch.Tensor]:
        return [entry.feature for entry in self._entries.values()]
