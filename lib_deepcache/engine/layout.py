"""A UNet as DeepCache sees it: ``n`` input units that each push one skip, a middle, and ``n``
output units that each take one skip back, plus the modules that carry them out.

Every UNet family this engine supports runs the same algorithm in these terms. For depth ``d`` a
cached pass runs input units ``0..d``, skips input units ``d+1..``, the middle and output units
``0..n-d-2``, and feeds the stored deep feature into output unit ``n-d-1`` (the boundary) next to
the fresh skip of input unit ``d``. The boundary unit's first module receives
``cat([h, skip])``; that is where the feature is stored on full passes and spliced in on cached
ones.

Modules are wrapped at two grains. *Leaves* are the modules every host's forward reaches (a
block's layers): one leaf opens each unit (``head``) and one closes it (``tail``). *Groups* are
containers of whole units (an ldm block, a diffusers down/up block); when a host calls a group
whose units are all skipped, the group returns placeholders at once and its leaves never run.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import torch


class Role(str, Enum):
    INPUT = "input"
    MIDDLE = "middle"
    OUTPUT = "output"


class UnsupportedUNetError(TypeError):
    """The module is not a UNet this engine knows how to hook."""


@dataclass(frozen=True)
class Site:
    """One wrapped module and the units (``first..last`` of ``role``) it belongs to."""

    name: str
    module: torch.nn.Module
    role: Role
    first: int
    last: int
    group: bool = False
    head: bool = False
    tail: bool = False


def unit_name(role: Role, index: int) -> str:
    return role.value if role is Role.MIDDLE else f"{role.value}.{index}"


@dataclass(frozen=True)
class UNetLayout:
    family: str
    num_blocks: int
    sites: tuple[Site, ...]

    def boundary(self, depth: int) -> int:
        """Index of the output unit that receives the cached feature at this depth."""
        return self.num_blocks - 1 - depth

    def is_skipped(self, role: Role, index: int, depth: int) -> bool:
        if role is Role.INPUT:
            return index > depth
        if role is Role.MIDDLE:
            return True
        return index < self.boundary(depth)

    def site_skipped(self, site: Site, depth: int) -> bool:
        """A site is skipped when every unit it carries is."""
        return all(self.is_skipped(site.role, i, depth) for i in range(site.first, site.last + 1))

    def leaves(self) -> list[Site]:
        return [site for site in self.sites if not site.group]

    @property
    def max_depth(self) -> int:
        """The deepest skip branch (SD1.x: 11, SDXL: 8)."""
        return self.num_blocks - 1

    def describe(self) -> str:
        return f"a UNet with {self.num_blocks} skip connections"

    def runs_no_block(self, depth: int) -> bool:
        """Whether a cached pass at this depth runs no block: never on a UNet, whose shallow
        branch (input unit 0 on, output unit n-1) always runs."""
        return False

    def flop_units(self) -> list[tuple[str, torch.nn.Module]]:
        """Each leaf and the unit its FLOPs count for."""
        return [(unit_name(site.role, site.first), site.module) for site in self.leaves()]

    def skipped_unit_names(self, depth: int) -> list[str]:
        return skipped_units(self.num_blocks, depth)


def skipped_units(num_blocks: int, depth: int) -> list[str]:
    """Names of the units a cached pass at this depth skips."""
    return (
        [unit_name(Role.INPUT, i) for i in range(depth + 1, num_blocks)]
        + [unit_name(Role.MIDDLE, 0)]
        + [unit_name(Role.OUTPUT, j) for j in range(num_blocks - 1 - depth)]
    )
