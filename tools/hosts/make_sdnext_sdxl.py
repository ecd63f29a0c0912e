"""Write a seeded random, tiny SDXL diffusers pipeline folder that SD.Next loads offline.

    VENV/bin/python make_sdnext_sdxl.py OUT_DIR --tokenizer DIR [--seed N]

Why: DeepCache's SDXL path (a UNet of 3 levels, 9 input / 9 output skip units, so ``interval 2
(auto)`` and depth clamped to 8) must run in the real SD.Next too; the real SDXL base (6.9 GB) is
neither offline nor usable on two CPU cores. SD.Next reads a diffusers folder's own configs, so
everything can be small: it tells the model by ``model_index.json`` (``StableDiffusionXLPipeline``)
and runs diffusers' SDXL pipeline with its two text encoders, pooled text embedding and size/crop
time ids.

Layout (SDXL's, at small widths): UNet ``block_out_channels`` (32, 64, 64), 2 layers per block,
``DownBlock2D`` then two ``CrossAttnDownBlock2D`` (no attention on level 0, as in SDXL), linear
transformer projections, ``addition_embed_type`` text_time; text encoder 1 a 2-layer CLIP text
model of width 32; text encoder 2 a 2-layer CLIP text model with projection of width 800 and a
32-wide projection (its pooled output). Its width must pass 768: SD.Next computes the pooled
embedding only when the last text encoder's hidden states are wider than that (SDXL's are 1280),
and without one diffusers' SDXL pipeline refuses the prompt. So ``cross_attention_dim`` is
32 + 800 = 832 and the added embedding takes 32 + 6 * 8 = 80 numbers; a 4-level VAE with SDXL's
scaling factor (64 px give an 8x8 latent); Euler discrete scheduler with SDXL's config; the real
CLIP BPE tokenizer files (``--tokenizer``, SD.Next ships them in ``configs/sd15/tokenizer``). The
text encoders' final LayerNorm bias is non-zero: with a zero bias every token has mean 0 and
SD.Next's emphasis rescale divides 0 by 0. Seeded: the same weights on every build. About 50 M
parameters (40 M of them text encoder 2's token embedding), 190 MB.
"""

from __future__ import annotations

import argparse
import os
import shutil

import torch
from diffusers import (
    AutoencoderKL,
    EulerDiscreteScheduler,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
)

TEXT_WIDTH = 32
TEXT2_WIDTH = 800  # past 768, see the module docstring
POOLED_WIDTH = 32
TIME_EMBED = 8  # per size/crop number; six of them
SCHEDULER = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
    steps_offset=1, prediction_type="epsilon", timestep_spacing="leading",
)  # fmt: skip


def text_encoders(vocab: int, seed: int) -> tuple[CLIPTextModel, CLIPTextModelWithProjection]:
    def config(width: int, heads: int) -> CLIPTextConfig:
        return CLIPTextConfig(
            vocab_size=vocab, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407,
            pad_token_id=49407, hidden_size=width, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=heads, hidden_act="gelu", projection_dim=POOLED_WIDTH,
        )  # fmt: skip

    torch.manual_seed(seed)
    first = CLIPTextModel(config(TEXT_WIDTH, 4)).eval()
    second = CLIPTextModelWithProjection(config(TEXT2_WIDTH, 8)).eval()
    with torch.no_grad():  # a non-zero final LayerNorm bias (see the module docstring)
        for model in (first, second):
            norm = getattr(model, "text_model", model).final_layer_norm
            norm.bias.copy_(0.1 + 0.05 * torch.randn_like(norm.bias))
    return first, second


def unet(seed: int) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(32, 64, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4, 4), transformer_layers_per_block=(1, 1, 1),
        cross_attention_dim=TEXT_WIDTH + TEXT2_WIDTH, use_linear_projection=True,
        norm_num_groups=32,
        addition_embed_type="text_time", addition_time_embed_dim=TIME_EMBED,
        projection_class_embeddings_input_dim=POOLED_WIDTH + 6 * TIME_EMBED,
    ).eval()  # fmt: skip


def vae(seed: int) -> AutoencoderKL:
    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=32,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(32, 32, 64, 64), layers_per_block=1, sample_size=64,
        scaling_factor=0.13025, force_upcast=False,
    ).eval()  # fmt: skip


def build(tokenizer_dir: str, seed: int) -> StableDiffusionXLPipeline:
    tokenizer = CLIPTokenizer(
        os.path.join(tokenizer_dir, "vocab.json"),
        os.path.join(tokenizer_dir, "merges.txt"),
        model_max_length=77,
        pad_token="<|endoftext|>",
    )
    first, second = text_encoders(tokenizer.vocab_size, seed)
    return StableDiffusionXLPipeline(
        vae=vae(seed + 2),
        text_encoder=first,
        text_encoder_2=second,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet(seed + 1),
        scheduler=EulerDiscreteScheduler(**SCHEDULER),
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out")
    parser.add_argument("--tokenizer", required=True, help="folder with vocab.json, merges.txt")
    parser.add_argument("--seed", type=int, default=20240103)
    args = parser.parse_args()
    pipe = build(args.tokenizer, args.seed)
    tmp = args.out.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(tmp, safe_serialization=True)
    shutil.rmtree(args.out, ignore_errors=True)
    os.replace(tmp, args.out)
    blocks = len(pipe.unet.down_blocks)
    params = sum(p.numel() for part in (pipe.unet, pipe.text_encoder, pipe.text_encoder_2, pipe.vae)
                 for p in part.parameters())  # fmt: skip
    print(f"wrote {args.out}: SDXL layout, {blocks} levels, {params / 1e6:.1f} M params")


if __name__ == "__main__":
    main()
