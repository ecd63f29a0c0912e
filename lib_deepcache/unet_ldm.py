"""The ldm/sgm ``UNetModel`` in block terms: what runs, what is skipped, where the feature is cut.

``forward`` (the stock one, or a foreign one such as ControlNet's) runs ``input_blocks`` in order
while pushing their outputs on a stack, then ``middle_block``, then each ``output_blocks[j]`` on
``cat([h, stack.pop()])``. For depth (branch) ``d`` of an ``n``-block UNet a cached pass runs
``input_blocks[0..d]``, skips ``input_blocks[d+1..]``, the middle block and
``output_blocks[0..n-d-2]``, and feeds the stored deep ``h`` into ``output_blocks[n-d-1]`` (the
boundary) next to the fresh skip of ``input_blocks[d]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import torch


class Role(str, Enum):
    INPUT = "input_blocks"
    MIDDLE = "middle_block"
    OUTPUT = "output_blocks"


class UnsupportedUNetError(TypeError):
    """The module is not an ldm/sgm-style UNet this engine knows how to hook."""


@dataclass(frozen=True)
class LdmLayout:
    num_blocks: int

    @classmethod
    def of(cls, unet: torch.nn.Module) -> LdmLayout:
        inputs = getattr(unet, "input_blocks", None)
        outputs = getattr(unet, "output_blocks", None)
        middle = getattr(unet, "middle_block", None)
        if not isinstance(inputs, torch.nn.ModuleList) or not isinstance(
            outputs, torch.nn.ModuleList
        ):
            raise UnsupportedUNetError(
                f"{type(unet).__name__} has no input_blocks/output_blocks ModuleList:"
                " not an ldm/sgm UNetModel"
            )
        if not isinstance(middle, torch.nn.Module):
            raise UnsupportedUNetError(f"{type(unet).__name__} has no middle_block")
        if len(inputs) != len(outputs) or len(inputs) < 2:
            raise UnsupportedUNetError(
                f"{type(unet).__name__} has {len(inputs)} input and {len(outputs)} output blocks;"
                " DeepCache needs matching skip connections"
            )
        return cls(num_blocks=len(inputs))

    def boundary(self, depth: int) -> int:
        """Index of the output block that receives the cached feature at this depth."""
        return self.num_blocks - 1 - depth

    def is_skipped(self, role: Role, index: int, depth: int) -> bool:
        if role is Role.INPUT:
            return index > depth
        if role is Role.MIDDLE:
            return True
        return index < self.boundary(depth)

    def skipped_blocks(self, depth: int) -> list[tuple[Role, int]]:
        return (
            [(Role.INPUT, i) for i in range(depth + 1, self.num_blocks)]
            + [(Role.MIDDLE, 0)]
            + [(Role.OUTPUT, j) for j in range(self.boundary(depth))]
        )


def blocks(unet: torch.nn.Module) -> list[tuple[Role, int, torch.nn.Module]]:
    """Every block the engine wraps, in the order the UNet runs them."""
    return (
        [(Role.INPUT, i, m) for i, m in enumerate(unet.input_blocks)]
        + [(Role.MIDDLE, 0, unet.middle_block)]
        + [(Role.OUTPUT, j, m) for j, m in enumerate(unet.output_blocks)]
    )


def block_name(role: Role, index: int) -> str:
    return role.value if role is Role.MIDDLE else f"{role.value}.{index}"
