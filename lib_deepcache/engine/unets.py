"""Which layout a UNet has: the one place that knows every UNet family the engine supports.

Kept apart from :mod:`.layout` (the shared unit/site model) so that the family modules import the
model and this module imports the families, never the other way round.
"""

from __future__ import annotations

import torch

from .layout import UNetLayout, UnsupportedUNetError
from .unet_diffusers import diffusers_layout
from .unet_ldm import ldm_layout


def layout_of(unet: torch.nn.Module) -> UNetLayout:
    """The layout of an ldm/sgm ``UNetModel`` (A1111, Forge, ComfyUI lineage) or a diffusers
    ``UNet2DConditionModel`` (SD.Next)."""
    if isinstance(getattr(unet, "_orig_mod", None), torch.nn.Module):
        raise UnsupportedUNetError(
            "the UNet is compiled with torch.compile: its graph never calls the Python blocks"
            " DeepCache wraps; turn model compilation off to use DeepCache"
        )
    for build in (ldm_layout, diffusers_layout):
        layout = build(unet)
        if layout is not None:
            return layout
    raise UnsupportedUNetError(
        f"{type(unet).__name__} is neither an ldm/sgm UNetModel (input_blocks/middle_block/"
        "output_blocks) nor a diffusers UNet2DConditionModel (down_blocks/mid_block/up_blocks)"
    )
