"""Seeded ldm ``UNetModel``s shaped like the Stable Diffusion families, for tests and the bench.

No weights can be downloaded here, so these are built from the published configs with seeded
random weights. ``width`` shrinks the channel count (keeping every block) for fast tests.

The SDXL stand-in uses the ldm class with SDXL's block structure: channel_mult [1, 2, 4],
attention only at the two deeper levels, 9 input / 9 output blocks, 64-channel heads, linear
projections. It differs from the real sgm SDXL UNet in: one transformer per attention block
instead of [0, 2, 10], no ``label_emb`` for the pooled-text/size vector (``y``), context width
taken from ``context_dim`` below. The hooked structure (blocks, skips, concatenations) is the same.

:func:`build_diffusers_unet` builds diffusers ``UNet2DConditionModel``s (SD.Next's UNet) from
the SD1.5 and SDXL configs, the SDXL one complete (transformer depths [1, 2, 10], text-time
added conditioning).

Building needs the ``ldm`` package (stable-diffusion-sdkit) or ``diffusers``; the engine does not.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

ARCHS: dict[str, dict[str, Any]] = {
    "sd15": dict(
        in_channels=4,
        out_channels=4,
        model_channels=320,
        attention_resolutions=[4, 2, 1],
        num_res_blocks=2,
        channel_mult=[1, 2, 4, 4],
        num_heads=8,
        context_dim=768,
    ),
    "sd15-inpaint": dict(
        in_channels=9,
        out_channels=4,
        model_channels=320,
        attention_resolutions=[4, 2, 1],
        num_res_blocks=2,
        channel_mult=[1, 2, 4, 4],
        num_heads=8,
        context_dim=768,
    ),
    "sd21": dict(
        in_channels=4,
        out_channels=4,
        model_channels=320,
        attention_resolutions=[4, 2, 1],
        num_res_blocks=2,
        channel_mult=[1, 2, 4, 4],
        num_head_channels=64,
        context_dim=1024,
        use_linear_in_transformer=True,
    ),
    "sdxl": dict(
        in_channels=4,
        out_channels=4,
        model_channels=320,
        attention_resolutions=[4, 2],
        num_res_blocks=2,
        channel_mult=[1, 2, 4],
        num_head_channels=64,
        context_dim=2048,
        use_linear_in_transformer=True,
    ),
}

# Which k-diffusion wrapper samples each family (SD2.1-768 predicts v, the rest epsilon).
PREDICTION = {"sd15": "eps", "sd15-inpaint": "eps", "sd21": "v", "sdxl": "eps"}


def unet_config(arch: str, width: int | None = None) -> dict[str, Any]:
    """The ldm config of ``arch``; ``width`` replaces 320 model channels (heads scale with it)."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose from {', '.join(ARCHS)}")
    config = dict(
        ARCHS[arch],
        image_size=32,
        use_spatial_transformer=True,
        transformer_depth=1,
        use_checkpoint=False,
        legacy=False,
    )
    if width is not None:
        scale = width / config["model_channels"]
        config["model_channels"] = width
        config["context_dim"] = max(8, int(config["context_dim"] * scale))
        if "num_head_channels" in config:
            config["num_head_channels"] = max(8, int(64 * scale))
        else:
            config["num_heads"] = 4
    return config


def build_unet(
    arch: str = "sd15",
    width: int | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.nn.Module:
    """A seeded UNet; on ``meta`` no memory is allocated (for FLOP counting at full size)."""
    from ldm.modules.diffusionmodules.openaimodel import UNetModel

    config = unet_config(arch, width)
    torch.manual_seed(seed)
    with torch.device(device):
        unet = UNetModel(**config)
    if torch.device(device).type != "meta":
        _reseed_zero_init(unet, seed)
    unet = unet.to(dtype).eval().requires_grad_(False)
    unet.dtype = dtype  # ldm casts its input to this; the WebUI sets it for half precision too
    return unet


DIFFUSERS_ARCHS: dict[str, dict[str, Any]] = {
    "sd15": dict(
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=768,
        attention_head_dim=8,
    ),
    "sdxl": dict(
        block_out_channels=(320, 640, 1280),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10),
        attention_head_dim=(5, 10, 20),
        cross_attention_dim=2048,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
    ),
}

# SDXL's added conditioning: pooled text embedding width, six size/crop numbers per image.
SDXL_TEXT_EMBEDS = 1280


def diffusers_unet_config(arch: str, width: int | None = None) -> dict[str, Any]:
    """The diffusers config of ``arch``; ``width`` replaces the 320 base channels and shrinks
    the context, heads (64-channel at full size) and SDXL's transformer depths with it."""
    if arch not in DIFFUSERS_ARCHS:
        raise ValueError(
            f"unknown diffusers arch {arch!r}; choose from {', '.join(DIFFUSERS_ARCHS)}"
        )
    config = dict(DIFFUSERS_ARCHS[arch], in_channels=4, out_channels=4, layers_per_block=2)
    if width is None:
        return config
    channels = tuple(c * width // 320 for c in config["block_out_channels"])
    config["block_out_channels"] = channels
    config["cross_attention_dim"] = max(8, config["cross_attention_dim"] * width // 320)
    if arch == "sdxl":
        config["attention_head_dim"] = tuple(max(1, c // 16) for c in channels)
        config["transformer_layers_per_block"] = (1, 1, 2)
        config["addition_time_embed_dim"] = 8
        config["projection_class_embeddings_input_dim"] = _sdxl_text_embeds(width) + 6 * 8
    else:
        config["attention_head_dim"] = 4
    return config


def _sdxl_text_embeds(width: int | None) -> int:
    return SDXL_TEXT_EMBEDS if width is None else max(8, SDXL_TEXT_EMBEDS * width // 320)


def build_diffusers_unet(
    arch: str = "sd15",
    width: int | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> torch.nn.Module:
    """A seeded diffusers ``UNet2DConditionModel``; on ``meta`` nothing is allocated."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    with torch.device(device):
        unet = UNet2DConditionModel(**diffusers_unet_config(arch, width))
    if torch.device(device).type != "meta":
        _reseed_zero_init(unet, seed)
    return unet.eval().requires_grad_(False)


def _reseed_zero_init(unet: torch.nn.Module, seed: int) -> None:
    """ldm zero-initialises every block's last conv; give them small seeded values instead.

    With zeros the residual branches contribute nothing and the deep feature would not matter,
    so a test could not tell a cached pass from a full one.
    """
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for module in unet.modules():
            layer = isinstance(module, (torch.nn.Conv2d, torch.nn.Linear, torch.nn.Conv1d))
            if layer and torch.count_nonzero(module.weight) == 0:
                fan_in = module.weight[0].numel()
                noise = torch.randn(module.weight.shape, generator=generator)
                module.weight.copy_(noise / fan_in**0.5)


@contextlib.contextmanager
def sdpa_attention() -> Iterator[None]:
    """Run ldm cross-attention through torch SDPA, as the WebUI's default optimisation does.

    ldm's own einsum path is about 5x slower on CPU and would distort timings.
    """
    from ldm.modules.attention import CrossAttention

    original = CrossAttention.forward

    def forward(self: Any, x: torch.Tensor, context: torch.Tensor | None = None, mask: Any = None):
        context = x if context is None else context
        q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
        batch, heads = x.shape[0], self.heads

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(batch, t.shape[1], heads, -1).transpose(1, 2)

        out = torch.nn.functional.scaled_dot_product_attention(split(q), split(k), split(v))
        out = out.transpose(1, 2).reshape(batch, x.shape[1], -1)
        return self.to_out(out)

    CrossAttention.forward = forward
    try:
        yield
    finally:
        CrossAttention.forward = original
