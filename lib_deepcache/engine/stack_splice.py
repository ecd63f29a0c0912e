"""DeepCache on a transformer's block stack (see :mod:`.stack`): run the first and last
``depth`` blocks, and let the blocks between add what they added at the last full step.

On a full pass that stores, each skipped block's own contribution (its output minus its input,
per stream) is summed per stage; the sums are stored, as one flat feature, once the last skipped
block has run. On a cached pass the skipped blocks return their input unchanged, except the
first one of each stage, which adds its stage's stored sum (or its forecast). The adaptive
schedule's signal is what enters the first skipped block (the stack's input at depth 0).
Summing each block's own contribution, rather than taking the span's end minus its start,
leaves out what the host adds between blocks (a ControlNet's residuals): the host adds
those afresh on cached steps too, so they are counted once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from .cache import ResidualPart
from .patches import Forward
from .planner import Mode, PassState, StepPlanner
from .stack import StackBlock, StackLayout


class StackSplicer:
    def __init__(self, layout: StackLayout, depth: int, planner: StepPlanner) -> None:
        self.layout = layout
        self.depth = depth
        self.planner = planner
        self._last_skipped = layout.num_blocks - 1 - depth
        self._pass: PassState | None = None
        self._sums: dict[int, list[torch.Tensor]] = {}  # stage -> summed residual per stream
        self._added: set[int] = set()  # stages whose stored residual this cached pass added
        self._feature: torch.Tensor | None = None  # this cached pass's (forecast) feature

    def sites(self) -> Sequence[StackBlock]:
        return self.layout.blocks

    def reset(self) -> None:
        """A new model call (or the session detaching): no pass is under way."""
        self._pass, self._sums, self._added, self._feature = None, {}, set(), None

    def run(self, block: StackBlock, previous: Forward, args: tuple, kwargs: dict) -> Any:
        if block.index == 0:
            self.reset()
            streams = block.io.read(args, kwargs)
            self._pass = self.planner.begin_pass(streams[block.io.main], key=_key_of(streams))
        p = self._pass
        if p is None or p.mode is Mode.PASS_THROUGH:
            return previous(*args, **kwargs)
        if block.index == self.depth:
            self.planner.on_skip(p, block.io.read(args, kwargs)[block.io.main])
        if self.layout.is_skipped(block.index, self.depth):
            out = self._skipped(block, p, previous, args, kwargs)
            if block.index == self._last_skipped and p.mode is Mode.FULL and p.store:
                self._store(p)
        else:
            out = previous(*args, **kwargs)
        if block.index == self.layout.num_blocks - 1:
            self.reset()
        return out

    def _skipped(
        self, block: StackBlock, p: PassState, previous: Forward, args: tuple, kwargs: dict
    ) -> Any:
        if p.mode is Mode.UNDECIDED:
            raise RuntimeError("DeepCache: a skipped block ran before the adaptive decision")
        if p.mode is Mode.CACHED:
            streams = block.io.read(args, kwargs)
            if block.stage not in self._added:
                self._added.add(block.stage)
                streams = self._add_residual(p, block.stage, streams)
            return block.io.build(streams)
        out = previous(*args, **kwargs)
        if p.store:
            inputs, outputs = block.io.read(args, kwargs), block.io.outputs(out)
            # a stream the block hands back as None (SD3's last block ends the text stream)
            # is one nothing after it reads: it adds nothing
            deltas = [
                torch.zeros_like(i) if o is None else o - i
                for o, i in zip(outputs, inputs, strict=True)
            ]
            sums = self._sums.get(block.stage)
            if sums is None:
                self._sums[block.stage] = deltas
            else:
                for total, delta in zip(sums, deltas, strict=True):
                    total.add_(delta)
        return out

    def _store(self, p: PassState) -> None:
        parts = tuple(
            ResidualPart(stage, tuple(t.shape))
            for stage in sorted(self._sums)
            for t in self._sums[stage]
        )
        tensors = [t.reshape(-1) for stage in sorted(self._sums) for t in self._sums[stage]]
        self._sums = {}
        feature = torch.cat(tensors) if tensors else torch.zeros(0)
        self.planner.store(p, feature, parts)

    def _add_residual(
        self, p: PassState, stage: int, streams: list[torch.Tensor]
    ) -> list[torch.Tensor]:
        if self._feature is None:
            self._feature = self.planner.feature(p)
        residual, offset = [], 0
        for part in p.entry.parts:
            size = math.prod(part.shape)
            if part.stage == stage:
                residual.append(self._feature[offset : offset + size].view(part.shape))
            offset += size
        if not residual:
            return streams
        if [r.shape for r in residual] != [s.shape for s in streams]:
            raise RuntimeError(
                f"DeepCache: stored residual {[tuple(r.shape) for r in residual]} does not fit"
                f" the streams {[tuple(s.shape) for s in streams]}; another extension changed"
                " the transformer's shapes mid-pass"
            )
        return [s + r for s, r in zip(streams, residual, strict=True)]


def _key_of(streams: Sequence[torch.Tensor]) -> tuple:
    """The cache key of a pass: every stream's shape (a text stream of another length is
    another entry), the dtype and the device."""
    shapes = tuple(tuple(s.shape) for s in streams)
    return shapes, streams[0].dtype, streams[0].device
