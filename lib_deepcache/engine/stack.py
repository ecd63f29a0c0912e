"""A diffusion transformer as DeepCache sees it: a stack of blocks run one after another.

Flux and Chroma run double-stream blocks (image and text tokens apart, joint attention) and then
single-stream blocks (one stream); SD3's MMDiT runs joint blocks. No skip connection links the
first blocks to the last ones, so DeepCache's deep feature becomes a *residual*: for depth ``d``
a cached pass runs the first ``d`` and the last ``d`` blocks live, and the blocks between add
what they added at the last full step. Depth 0 skips the whole stack (the embedders and the
output layer still run): unlike a UNet's outermost block pair, which carries the skip
connection that keeps the image's fine detail, a transformer's end blocks hold a few percent of
its work, and the equal-cost study (docs/quality.md) found them worth less than a refresh more
often. The residual is kept per *stage* (a run of blocks with
the same streams), since the host's loop may reshape the streams between stages (Forge joins the
text and image tokens before its single-stream blocks).

The family modules (``transformer_*``) list a model's blocks and say, per block class, how the
block takes its streams and hands them back (:class:`StreamIO`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .layout import UnsupportedUNetError


@dataclass(frozen=True)
class StreamIO:
    """How a kind of block takes its streams (the tensors it transforms) and returns them.

    ``names``: the streams' parameter names in positional order (a stream passed positionally
    sits at its index); ``returns``: for each stream, its index in the tuple the block returns,
    or None when the block returns its single stream as a tensor; ``main``: the image stream,
    whose shape keys the cache and whose change drives the adaptive schedule.
    """

    names: tuple[str, ...]
    returns: tuple[int, ...] | None = None
    main: int = 0

    def read(self, args: tuple, kwargs: dict) -> list[torch.Tensor]:
        """The stream tensors a block was called with."""
        streams = []
        for i, name in enumerate(self.names):
            value = args[i] if i < len(args) else kwargs.get(name)
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"DeepCache: a block was called without its {name} tensor")
            streams.append(value)
        return streams

    def outputs(self, out: Any) -> list[torch.Tensor]:
        """The stream tensors a block returned, in the order of ``names``."""
        if self.returns is None:
            return [out]
        return [out[i] for i in self.returns]

    def build(self, streams: Sequence[torch.Tensor]) -> Any:
        """What the block would return, given its output streams."""
        if self.returns is None:
            return streams[0]
        out: list[Any] = [None] * (max(self.returns) + 1)
        for stream, index in zip(streams, self.returns, strict=True):
            out[index] = stream
        return tuple(out)


@dataclass(frozen=True)
class StackBlock:
    """One block of the stack: its place, its stage and how it passes its streams."""

    name: str
    module: torch.nn.Module
    index: int
    stage: int
    io: StreamIO


def unit_name(index: int) -> str:
    return f"block.{index}"


@dataclass(frozen=True)
class StackLayout:
    family: str
    blocks: tuple[StackBlock, ...]

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def max_depth(self) -> int:
        """The deepest setting that still skips a block: ``2 * d`` blocks stay live."""
        return (self.num_blocks - 1) // 2

    def describe(self) -> str:
        return f"a {self.family} transformer with {self.num_blocks} blocks"

    def is_skipped(self, index: int, depth: int) -> bool:
        return depth <= index < self.num_blocks - depth

    def runs_no_block(self, depth: int) -> bool:
        """Whether a cached pass at this depth runs no block (depth 0: the whole stack skipped,
        only the embedders and the output layer run)."""
        return depth == 0

    def flop_units(self) -> list[tuple[str, torch.nn.Module]]:
        return [(unit_name(block.index), block.module) for block in self.blocks]

    def skipped_unit_names(self, depth: int) -> list[str]:
        return [unit_name(i) for i in range(self.num_blocks) if self.is_skipped(i, depth)]


def stack_layout(family: str, stages: Sequence[tuple[str, Any, StreamIO]]) -> StackLayout:
    """The layout of ``stages``, each ``(attribute name, ModuleList, its blocks' StreamIO)``."""
    blocks: list[StackBlock] = []
    for stage, (attribute, modules, io) in enumerate(stages):
        for k, module in enumerate(modules):
            blocks.append(StackBlock(f"{attribute}.{k}", module, len(blocks), stage, io))
    return StackLayout(family, tuple(blocks))


def class_names(module: torch.nn.Module) -> set[str]:
    """The names of a module's class and its bases: a host's subclass is still that block."""
    return {cls.__name__ for cls in type(module).__mro__}


def check_blocks(model: torch.nn.Module, blocks: object, expected: set[str]) -> None:
    """Refuse, by name, a stack whose blocks are not of the kind the family module describes:
    their streams would be read wrongly."""
    name = type(model).__name__
    if not isinstance(blocks, torch.nn.ModuleList):
        raise UnsupportedUNetError(f"{name}'s blocks are not a ModuleList")
    for block in blocks:
        if not class_names(block) & expected:
            raise UnsupportedUNetError(
                f"{name} has a {type(block).__name__} where DeepCache expects"
                f" {' or '.join(sorted(expected))}"
            )
