"""Small seeded diffusers Flux, SD3 and Chroma pipelines, the classes SD.Next runs, for the
SD.Next adapter's tests.

No text encoders (the tests hand the pipelines their prompt embeddings, as SD.Next does after
encoding the prompt itself), a two-level VAE, transformers of width 32 with 2 + 4 (Flux, Chroma)
or 6 (SD3) blocks, and the flow-matching Euler scheduler SD.Next's "Euler" sampler becomes for
these models (shift 3). ``run`` records the ``timestep`` each transformer call receives: the
pipelines' own account of the units and rounding they use, the oracle of the tests.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    ChromaImg2ImgPipeline,
    ChromaPipeline,
    ChromaTransformer2DModel,
    FlowMatchEulerDiscreteScheduler,
    FluxImg2ImgPipeline,
    FluxPipeline,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Img2ImgPipeline,
    StableDiffusion3Pipeline,
)

SIZE = 16  # pixels: an 8x8x16 latent, 16 tokens for every family
TEXT = 32  # text width the transformers read
FAMILIES = ("flux", "sd3", "chroma")
_FLUX_LIKE = dict(
    num_layers=2,
    num_single_layers=4,
    attention_head_dim=16,
    num_attention_heads=2,
    joint_attention_dim=TEXT,
    axes_dims_rope=(4, 6, 6),
)


def _vae() -> AutoencoderKL:
    return AutoencoderKL(
        latent_channels=16,
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=8,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.1159,
        scaling_factor=0.3611,
    )


def _transformer(family: str) -> torch.nn.Module:
    if family == "flux":
        return FluxTransformer2DModel(pooled_projection_dim=TEXT, **_FLUX_LIKE)
    if family == "chroma":
        return ChromaTransformer2DModel(
            approximator_hidden_dim=32, approximator_layers=2, **_FLUX_LIKE
        )
    return SD3Transformer2DModel(
        sample_size=SIZE // 2,
        num_layers=6,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=TEXT,
        caption_projection_dim=32,
        pooled_projection_dim=TEXT,
        pos_embed_max_size=16,
    )


_CLASSES = {
    "flux": (FluxPipeline, FluxImg2ImgPipeline),
    "sd3": (StableDiffusion3Pipeline, StableDiffusion3Img2ImgPipeline),
    "chroma": (ChromaPipeline, ChromaImg2ImgPipeline),
}


def pipeline(family: str, img2img: bool = False, seed: int = 0) -> Any:
    """A seeded pipeline of ``family`` (txt2img, or img2img on the same components)."""
    torch.manual_seed(seed)
    components: dict[str, Any] = {
        "transformer": _transformer(family).eval(),
        "vae": _vae().eval(),
        "scheduler": FlowMatchEulerDiscreteScheduler(shift=3.0),
    }
    encoders = {"flux": 2, "sd3": 3, "chroma": 1}[family]
    for i in range(1, encoders + 1):
        suffix = "" if i == 1 else f"_{i}"
        components[f"text_encoder{suffix}"] = None
        components[f"tokenizer{suffix}"] = None
    return _CLASSES[family][int(img2img)](**components)


def conditioning(family: str, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """Prompt embeddings as each pipeline takes them; SD3 and Chroma get a negative prompt
    too (classifier-free guidance: SD3 batches it with the prompt, Chroma calls twice)."""
    generator = torch.Generator().manual_seed(1)

    def draw(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator).to(dtype)

    if family == "flux":
        return {"prompt_embeds": draw(1, 8, TEXT), "pooled_prompt_embeds": draw(1, TEXT)}
    if family == "sd3":
        return {
            "prompt_embeds": draw(1, 8, TEXT),
            "pooled_prompt_embeds": draw(1, TEXT),
            "negative_prompt_embeds": draw(1, 8, TEXT),
            "negative_pooled_prompt_embeds": draw(1, TEXT),
        }
    mask = torch.ones(1, 8, dtype=torch.bool)
    return {
        "prompt_embeds": draw(1, 8, TEXT),
        "prompt_attention_mask": mask,
        "negative_prompt_embeds": draw(1, 8, TEXT),
        "negative_prompt_attention_mask": mask,
    }


def run(pipe: Any, family: str, steps: int = 12, strength: float | None = None) -> torch.Tensor:
    """Sample ``steps`` steps (img2img at ``strength`` from a fixed picture); the latents."""
    dtype = pipe.transformer.dtype
    kwargs: dict[str, Any] = dict(conditioning(family, dtype), guidance_scale=4.0)
    if strength is not None:
        picture = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
        kwargs.update(image=picture.to(dtype), strength=strength)
    with torch.no_grad():
        return pipe(
            num_inference_steps=steps,
            height=SIZE,
            width=SIZE,
            generator=torch.Generator().manual_seed(3),
            output_type="latent",
            **kwargs,
        ).images
