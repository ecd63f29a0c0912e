"""The ldm/sgm ``UNetModel`` (A1111's SD1.x/2.x/SDXL, Forge's and ComfyUI's copies) as units.

``forward`` (the stock one, or a foreign one such as ControlNet's) runs ``input_blocks`` in order
while pushing their outputs on a stack, then ``middle_block``, then each ``output_blocks[j]`` on
``cat([h, stack.pop()])``: block ``i`` is unit ``i``. Some forwards call a block (A1111, Forge),
others iterate over its layers themselves (ComfyUI's ``forward_timestep_embed``), so blocks are
groups and their layers are leaves.
"""

from __future__ import annotations

import torch

from .layout import Role, Site, UNetLayout, UnsupportedUNetError


def ldm_layout(unet: torch.nn.Module) -> UNetLayout | None:
    inputs = getattr(unet, "input_blocks", None)
    outputs = getattr(unet, "output_blocks", None)
    middle = getattr(unet, "middle_block", None)
    if inputs is None and outputs is None:
        return None
    if not isinstance(inputs, torch.nn.ModuleList) or not isinstance(outputs, torch.nn.ModuleList):
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
    sites: list[Site] = []
    for i, block in enumerate(inputs):
        sites += _block_sites(f"input_blocks.{i}", block, Role.INPUT, i)
    sites += _block_sites("middle_block", middle, Role.MIDDLE, 0)
    for j, block in enumerate(outputs):
        sites += _block_sites(f"output_blocks.{j}", block, Role.OUTPUT, j)
    return UNetLayout("ldm", len(inputs), tuple(sites))


def _block_sites(name: str, block: torch.nn.Module, role: Role, index: int) -> list[Site]:
    layers = list(block) if isinstance(block, torch.nn.Sequential) else []
    if not layers:
        return [Site(name, block, role, index, index, head=True, tail=True)]
    group = Site(name, block, role, index, index, group=True)
    last = len(layers) - 1
    return [group] + [
        Site(f"{name}.{k}", layer, role, index, index, head=k == 0, tail=k == last)
        for k, layer in enumerate(layers)
    ]
