"""Which layout a denoiser has: the one place that knows every model family the engine supports.

Kept apart from the layout models (:mod:`.layout` for UNets, :mod:`.stack` for transformers) so
that the family modules import the models and this module imports the families, never the other
way round.
"""

from __future__ import annotations

import torch

from .layout import UNetLayout, UnsupportedUNetError
from .stack import StackLayout
from .transformer_flux import flux_layout
from .transformer_mmdit import mmdit_layout
from .unet_diffusers import diffusers_layout
from .unet_ldm import ldm_layout

Layout = UNetLayout | StackLayout


def layout_of(model: torch.nn.Module) -> Layout:
    """The layout of a UNet (ldm/sgm ``UNetModel`` of A1111, Forge and ComfyUI; diffusers
    ``UNet2DConditionModel``) or a diffusion transformer (Flux, Chroma, SD3: diffusers' classes
    as SD.Next runs them, Forge's own)."""
    if isinstance(getattr(model, "_orig_mod", None), torch.nn.Module):
        raise UnsupportedUNetError(
            "the model is compiled with torch.compile: its graph never calls the Python blocks"
            " DeepCache wraps; turn model compilation off to use DeepCache"
        )
    for build in (ldm_layout, diffusers_layout, flux_layout, mmdit_layout):
        layout = build(model)
        if layout is not None:
            if layout.max_depth < 0:
                raise UnsupportedUNetError(
                    f"{type(model).__name__} has too few blocks ({layout.num_blocks}) to skip any"
                )
            return layout
    raise UnsupportedUNetError(
        f"{type(model).__name__} is none of the models DeepCache knows: an ldm/sgm UNetModel"
        " (input_blocks/middle_block/output_blocks), a diffusers UNet2DConditionModel"
        " (down_blocks/mid_block/up_blocks), a Flux or Chroma transformer (double- then"
        " single-stream blocks) or an SD3 MMDiT (joint blocks)"
    )
