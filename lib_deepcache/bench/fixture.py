"""A small, really trained ldm UNet for fidelity measurements.

Random weights have no temporal redundancy, so they say nothing about what caching costs in
quality. This UNet has SD's block structure (12 input / 12 output blocks, spatial transformers
with cross-attention, channel_mult of length 4) at 32 channels, and was trained by
``tools/train_fixture.py`` as a pixel-space epsilon-prediction model with SD's discrete noise
schedule, on random 32x32 crops of the photographs that ship inside scikit-image
(``skimage.data``). Its context is a constant (an unconditional model); sampling uses the same
k-diffusion CompVis wrapper as SD.

A second fixture has SDXL's block structure instead (``layout="sdxl"``: 9 input / 9 output
blocks, channel_mult of length 3, no attention at the first level, linear projections in the
transformers), trained the same way, for choosing SDXL's defaults on SDXL's skip layout.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

WEIGHTS = Path(__file__).with_name("fixtures") / "photo_unet_32px.safetensors"
SDXL_WEIGHTS = WEIGHTS.with_name("photo_unet_sdxl_32px.safetensors")
IMAGE_SIZE = 32
CONTEXT_TOKENS = 1

CONFIG: dict[str, Any] = dict(
    image_size=IMAGE_SIZE,
    in_channels=3,
    out_channels=3,
    model_channels=32,
    attention_resolutions=[4, 2],
    num_res_blocks=2,
    channel_mult=[1, 1, 2, 2],
    num_heads=4,
    use_spatial_transformer=True,
    transformer_depth=1,
    context_dim=32,
    use_checkpoint=False,
    legacy=False,
)


SDXL_CONFIG: dict[str, Any] = dict(
    CONFIG,
    attention_resolutions=[4, 2],
    channel_mult=[1, 2, 2],
    num_heads=-1,
    num_head_channels=16,
    use_linear_in_transformer=True,
)
LAYOUTS = {"sd15": (CONFIG, WEIGHTS), "sdxl": (SDXL_CONFIG, SDXL_WEIGHTS)}


def build(layout: str = "sd15") -> torch.nn.Module:
    """The fixture's architecture with fresh (untrained) weights."""
    from ldm.modules.diffusionmodules.openaimodel import UNetModel

    return UNetModel(**LAYOUTS[layout][0])


def load(path: Path | None = None, layout: str = "sd15") -> torch.nn.Module:
    """The trained fixture of a layout in float32, eval mode, no gradients."""
    from safetensors.torch import load_file

    path = path or LAYOUTS[layout][1]
    unet = build(layout)
    state = {k: v.float() for k, v in load_file(str(path)).items()}
    unet.load_state_dict(state)
    return unet.eval().requires_grad_(False)


def context(batch: int) -> torch.Tensor:
    """The constant conditioning the fixture was trained with."""
    return torch.zeros(batch, CONTEXT_TOKENS, CONFIG["context_dim"])
