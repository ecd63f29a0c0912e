"""Write a seeded random single-file SDXL checkpoint that Forge's loader detects, offline.

    VENV/bin/python make_forge_sdxl.py FORGE_WEBUI_DIR OUT.safetensors [--seed N]

Why: DeepCache's SDXL path (9 input / 9 output blocks, ``interval 2 (auto)``) must run in the real
Forge too, and the real SDXL base (6.9 GB) is neither offline nor usable on two CPU cores.

What Forge needs, read from its loader (``backend/loader.py``) and its model detection
(``huggingface_guess``): the UNet's config is *detected from the weights* and matched against
SDXL's ``model_channels`` 320, ``transformer_depth`` [0, 0, 2, 2, 10, 10], ``context_dim`` 2048,
``adm_in_channels`` 2816 and linear transformer projections, with nothing said about the widths
of the deeper levels; so the UNet here keeps SDXL's blocks, depths and attention but stays at
320 channels on all 3 levels (``channel_mult`` [1, 1, 1]: 256 M parameters instead of 2.6 G).
The two text encoders and the VAE are built from the configs Forge ships for SDXL and must be
full size (CLIP ViT-L 123 M, OpenCLIP bigG 695 M, VAE 84 M). Keys are the sgm single-file ones
(``model.diffusion_model.``, ``conditioner.embedders.0.transformer.text_model.``,
``conditioner.embedders.1.model.``, ``first_stage_model.``); the second text encoder is written
in the transformers layout under its sgm prefix, which Forge's key conversion leaves as it is.
Key names and shapes come from Forge's own classes, built on the meta device.

Weights: N(0, 1/fan_in), biases small, norms near 1, every layer random (the layers real models
start at zero too, so that every block changes the output), the text encoders' final LayerNorm
bias clearly non-zero (a zero-mean embedding makes the emphasis rescale divide 0 by 0), fp16.
The file is written with a sorted header and sorted data, so every build gives the same bytes.
A file that exists is kept. 2.3 GB, about a minute on two cores.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
from typing import Any

UNET = dict(
    in_channels=4,
    out_channels=4,
    model_channels=320,
    num_res_blocks=[2, 2, 2],
    channel_mult=[1, 1, 1],
    transformer_depth=[0, 0, 2, 2, 10, 10],
    transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10],
    transformer_depth_middle=10,
    use_spatial_transformer=True,
    context_dim=2048,
    num_head_channels=64,
    use_linear_in_transformer=True,
    adm_in_channels=2816,
    num_classes="sequential",
)
REPO = ("backend", "huggingface", "stabilityai", "stable-diffusion-xl-base-1.0")
TEXT_PREFIXES = {
    "text_encoder": "conditioner.embedders.0.",
    "text_encoder_2": "conditioner.embedders.1.model.",
}


def shapes_from_forge(forge: str) -> dict[str, tuple[int, ...]]:
    """Every checkpoint key and its shape, from Forge's UNet, VAE and CLIP classes on meta."""
    import torch
    from backend.nn.clip import IntegratedCLIP
    from backend.nn.unet import IntegratedUNet2DConditionModel
    from backend.nn.vae import IntegratedAutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel

    repo = os.path.join(forge, *REPO)
    shapes: dict[str, tuple[int, ...]] = {}
    with torch.device("meta"):
        unet = IntegratedUNet2DConditionModel(**UNET)
        unet_state = unet.state_dict().items()
        shapes.update({"model.diffusion_model." + k: tuple(v.shape) for k, v in unet_state})
        vae = IntegratedAutoencoderKL.from_config(
            IntegratedAutoencoderKL.load_config(os.path.join(repo, "vae"))
        )
        vae_state = vae.state_dict().items()
        shapes.update({"first_stage_model." + k: tuple(v.shape) for k, v in vae_state})
        for folder, prefix in TEXT_PREFIXES.items():
            config = CLIPTextConfig.from_pretrained(os.path.join(repo, folder))
            projected = folder == "text_encoder_2"
            clip = IntegratedCLIP(CLIPTextModel, config, add_text_projection=projected)
            for key, value in clip.state_dict().items():
                if key.startswith("transformer.") and not key.endswith("position_ids"):
                    shapes[prefix + key] = tuple(value.shape)
    return shapes


def draw(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, Any]:
    import torch

    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for key in sorted(shapes):
        shape = shapes[key]
        if key.endswith("final_layer_norm.bias"):
            value = 0.5 + 0.1 * torch.randn(shape, generator=gen)
        elif key.endswith("bias"):
            value = 0.02 * torch.randn(shape, generator=gen)
        elif len(shape) == 1:  # norm weights
            value = 1.0 + 0.05 * torch.randn(shape, generator=gen)
        else:
            fan_in = 1
            for size in shape[1:]:
                fan_in *= size
            value = torch.randn(shape, generator=gen) / fan_in**0.5
        tensors[key] = value.to(torch.float16).contiguous()
    return tensors


def save_sorted(tensors: dict[str, Any], path: str, metadata: dict[str, str]) -> None:
    """safetensors with a sorted header and sorted data: the same bytes on every build (the
    library's writer orders its header differently from run to run, changing Forge's hash)."""
    import torch

    names = {torch.float16: "F16", torch.float32: "F32"}
    header: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    for key, value in sorted(tensors.items()):
        size = value.numel() * value.element_size()
        header[key] = {"dtype": names[value.dtype], "shape": list(value.shape),
                       "data_offsets": [offset, offset + size]}  # fmt: skip
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(raw)))
        handle.write(raw)
        for _, value in sorted(tensors.items()):
            handle.write(value.view(torch.uint8).numpy().tobytes())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("forge", help="Forge's webui folder")
    parser.add_argument("out", help="the .safetensors file to write")
    parser.add_argument("--seed", type=int, default=20240102)
    args = parser.parse_args()
    if os.path.exists(args.out):
        print(f"exists, kept: {args.out}")
        return
    forge = os.path.abspath(args.forge)
    sys.argv = [sys.argv[0], "--always-cpu"]  # backend.args parses the command line on import
    guess = os.path.join(forge, "repositories", "huggingface_guess")
    for i, path in enumerate((forge, os.path.join(forge, "packages_3rdparty"), guess)):
        sys.path.insert(i, path)
    import huggingface_guess

    tensors = draw(shapes_from_forge(forge), args.seed)
    guess = huggingface_guess.guess(tensors)
    if type(guess).__name__ != "SDXL" or list(guess.unet_config["channel_mult"]) != [1, 1, 1]:
        raise SystemExit(f"Forge's detection does not see this SDXL UNet: {guess!r}")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    meta = {"format": "pt", "description": f"random weights, SDXL layout, seed {args.seed}"}
    save_sorted(tensors, args.out + ".partial", meta)
    os.replace(args.out + ".partial", args.out)
    unet = sum(v.numel() for k, v in tensors.items() if k.startswith("model.diffusion_model."))
    total = sum(v.numel() for v in tensors.values())
    print(f"wrote {args.out}: {total / 1e6:.0f} M params (UNet {unet / 1e6:.0f} M), detected SDXL")


if __name__ == "__main__":
    main()
