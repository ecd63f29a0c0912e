"""Write a seeded random diffusers ControlNet that fits SD.Next's e2e model, offline.

    VENV/bin/python make_diffusers_controlnet.py MODEL_DIR OUT_DIR [--std 0.05] [--seed 0]

``MODEL_DIR`` is a diffusers pipeline folder (its ``unet/`` is read); ``OUT_DIR`` receives
``config.json`` and ``diffusion_pytorch_model.safetensors``, the folder form SD.Next lists under
``models/control/controlnet/<name>`` and loads with ``from_pretrained(local_files_only=True)``
(a single .safetensors file would need a config from the Hub).

The encoder is the UNet's own (``ControlNetModel.from_unet``); the layers a ControlNet starts
with at zero (the per-level output convolutions, the middle one and the hint encoder's last
convolution) are drawn from N(0, std) with a fixed seed, biases zero, so the control changes
the image; the hint encoder's other layers take torch's default initialisation under the same
seed. Same seed, same bytes.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import torch
from diffusers import ControlNetModel, UNet2DConditionModel


def random_controlnet(model_dir: Path, std: float, seed: int) -> ControlNetModel:
    unet = UNet2DConditionModel.from_pretrained(model_dir, subfolder="unet", local_files_only=True)
    torch.manual_seed(seed)  # the hint encoder's other layers take torch's default init
    controlnet = ControlNetModel.from_unet(unet)
    zero_started = [
        *controlnet.controlnet_down_blocks,
        controlnet.controlnet_mid_block,
        controlnet.controlnet_cond_embedding.conv_out,
    ]
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for conv in zero_started:
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * std)
            conv.bias.zero_()
    return controlnet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--std", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    # SD.Next gives model names containing these words other meanings
    if any(word in args.out_dir.name.lower() for word in ("tile", "lora", "union", "promax")):
        parser.error(f"{args.out_dir.name}: SD.Next would treat this name specially")
    controlnet = random_controlnet(args.model_dir, args.std, args.seed)
    controlnet.save_pretrained(args.out_dir, safe_serialization=True)
    weights = args.out_dir / "diffusion_pytorch_model.safetensors"
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:16]
    count = sum(p.numel() for p in controlnet.parameters())
    print(f"wrote {args.out_dir}: {count / 1e6:.2f} M parameters, sha256 {digest}")


if __name__ == "__main__":
    main()
