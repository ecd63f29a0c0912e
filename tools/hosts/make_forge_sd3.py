"""Write a small random-weight SD3.5-layout single-file checkpoint that Forge's loader takes.

    venv/bin/python make_forge_sd3.py WEBUI_DIR OUT.safetensors [--seed N] [--force]
        [--vae-approx-dir DATA_DIR/models/VAE-approx]

Run it with the Forge host's venv; nothing is downloaded. Used by tools/hosts/forge-extras.sh.

Why it can be small: Forge's loader (``backend/loader.py``) builds every part from the configs it
ships (``backend/huggingface/stabilityai/stable-diffusion-3-medium-diffusers``) except the MMDiT,
whose configuration its model detection (``huggingface_guess``) reads from the weights: the
number of joint blocks is the image embedder's width / 64 (``x_embedder.proj.weight``), the
position table's size from ``pos_embed``, the text and vector widths from ``context_embedder``
and ``y_embedder``, RMS q/k norms (SD3.5) from ``ln_q``. So the MMDiT here has 5 joint blocks of
width 320 (Forge fixes one head of 64 per block) and a 16 x 16 position table (latents up to
128 px); its text width stays 4096 and its vector 2048, since Forge's SD3 engine always hands it
CLIP-L + CLIP-G features padded to 4096 beside 256 T5 tokens, and both pooled vectors.

What must stay full size, and why:

* CLIP-L (123 M) and CLIP-G (695 M), each with its ``text_projection``: Forge builds them from
  its configs, the loader refuses a checkpoint without them ("You do not have CLIP state
  dict!"), and both run for every prompt;
* the VAE (84 M, 16 latent channels): built from Forge's config, refused when absent;
* T5-XXL: Forge also refuses a checkpoint without a T5 ("You do not have T5 state dict!", more
  than 16 tensors), but runs it only with the setting ``sd3_enable_t5`` (off by default; else it
  hands the MMDiT 256 zero tokens). Forge's layers allocate a weight only when the checkpoint
  holds it, so the file carries the T5's 49 LayerNorm scales alone (Forge prints the missing
  ones); with ``sd3_enable_t5`` on, this checkpoint would fail.

Weights are seeded and drawn in sorted key order (normal / sqrt(fan-in); norms near 1, biases
near 0), fp16, written with a sorted header: the same bytes on every build. The CLIP final
LayerNorm biases are about 0.5, as in the recipe's SD1.5 checkpoint (a zero-mean text embedding
makes the prompt emphasis divide ~0 by ~0). The written weights are checked against Forge's
detection: SD3, 5 blocks, and loaded strictly into the MMDiTX it would build.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_controlnet import write_safetensors

REPO = os.path.join("backend", "huggingface", "stabilityai", "stable-diffusion-3-medium-diffusers")
UNET = "model.diffusion_model."
BLOCKS = 5  # joint blocks; width 64 * BLOCKS
POSITIONS = 16  # pos_embed_max_size: 16 x 16 patches of 2 x 2 latents, 128 px images
MMDIT = {
    "patch_size": 2, "in_channels": 16, "depth": BLOCKS, "adm_in_channels": 2048,
    "context_embedder_config": {
        "target": "torch.nn.Linear", "params": {"in_features": 4096, "out_features": 64 * BLOCKS},
    },
    "pos_embed_max_size": POSITIONS, "num_patches": POSITIONS**2, "qk_norm": "rms",
    "input_size": None,
}  # fmt: skip
TEXT_ENCODERS = (("clip_l", "text_encoder"), ("clip_g", "text_encoder_2"))
VAE_APPROX = "vaeapprox-sd3.pt"
# Forge's (A1111's) modules/sd_vae_approx.VAEApprox: conv1..conv8 as (in, out, kernel), for SD3's
# 16 latent channels
VAE_APPROX_CONVS = ((16, 8, 7), (8, 16, 5), (16, 32, 3), (32, 64, 3), (64, 32, 3), (32, 16, 3),
                    (16, 8, 3), (8, 3, 3))  # fmt: skip


def forge_on_path(webui: str) -> None:
    """Forge's ``backend`` reads ``sys.argv`` when imported: give it only a CPU run's flag."""
    sys.argv = [sys.argv[0], "--always-cpu"]
    for sub in (os.path.join("repositories", "huggingface_guess"), "packages_3rdparty", ""):
        sys.path.insert(0, os.path.join(webui, sub))


def shapes_of(webui: str) -> dict[str, tuple[int, ...]]:
    """Every tensor of the checkpoint, named and shaped by Forge's own classes (on ``meta``)."""
    import torch
    from backend.nn.clip import IntegratedCLIP
    from backend.nn.mmditx import MMDiTX
    from backend.nn.t5 import IntegratedT5
    from backend.nn.vae import IntegratedAutoencoderKL
    from backend.utils import read_arbitrary_config
    from transformers import CLIPTextConfig, CLIPTextModel

    repo = os.path.join(webui, REPO)
    parts: list[tuple[str, torch.nn.Module]] = []
    with torch.device("meta"):
        parts.append((UNET, MMDiTX(**MMDIT)))
        vae_config = IntegratedAutoencoderKL.load_config(os.path.join(repo, "vae"))
        parts.append(("first_stage_model.", IntegratedAutoencoderKL.from_config(vae_config)))
        for name, folder in TEXT_ENCODERS:
            config = CLIPTextConfig.from_pretrained(os.path.join(repo, folder))
            clip = IntegratedCLIP(CLIPTextModel, config, add_text_projection=True)
            parts.append((f"text_encoders.{name}.", clip))
        t5 = IntegratedT5(read_arbitrary_config(os.path.join(repo, "text_encoder_3")))
    shapes = {
        prefix + key: tuple(value.shape)
        for prefix, module in parts
        for key, value in module.state_dict().items()
        if not key.endswith(("position_ids", "logit_scale"))
    }
    for key, value in t5.state_dict().items():
        if key.endswith("layer_norm.weight"):
            shapes["text_encoders.t5xxl." + key] = tuple(value.shape)
    return shapes


def draw(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, Any]:
    """Seeded fp16 weights in sorted key order."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key in sorted(shapes):
        shape = shapes[key]
        if key.endswith("final_layer_norm.bias"):
            t = 0.5 + 0.1 * torch.randn(shape, generator=gen)
        elif key.endswith("bias"):
            t = 0.02 * torch.randn(shape, generator=gen)
        elif len(shape) == 1:  # norm scales
            t = 1.0 + 0.05 * torch.randn(shape, generator=gen)
        else:  # weights, embeddings, the position table
            t = torch.randn(shape, generator=gen) / math.sqrt(math.prod(shape[1:]))
        out[key] = t.to(torch.float16)
    return out


def check_detection(tensors: dict[str, Any]) -> str:
    """Forge's detection sees SD3 with :data:`BLOCKS` blocks, and its MMDiTX takes the weights
    strictly."""
    import huggingface_guess
    import torch
    from backend.nn.mmditx import MMDiTX

    guess = huggingface_guess.guess(tensors)
    config = guess.unet_config
    if type(guess).__name__ != "SD3" or config.get("depth") != BLOCKS:
        raise SystemExit(f"Forge's detection sees {type(guess).__name__} {config}")
    with torch.device("meta"):
        model = MMDiTX(**config)
    unet = {k[len(UNET) :]: v for k, v in tensors.items() if k.startswith(UNET)}
    model.load_state_dict(unet, strict=True, assign=True)
    return f"detected SD3, depth {config['depth']}, pos_embed {config['pos_embed_max_size']}"


def write_vae_approx(folder: str, seed: int) -> str:
    """Seeded weights for the live preview's "Approx NN" of SD3 latents, which Forge loads before
    every SD3 generation (default settings) and otherwise downloads from GitHub: offline, the
    request fails with HTTP 500 (URLError) before sampling. It draws only the previews."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    weights = {}
    for i, (n_in, n_out, k) in enumerate(VAE_APPROX_CONVS, start=1):
        bound = 1.0 / math.sqrt(n_in * k * k)
        weights[f"conv{i}.weight"] = (torch.rand(n_out, n_in, k, k, generator=gen) * 2 - 1) * bound
        weights[f"conv{i}.bias"] = (torch.rand(n_out, generator=gen) * 2 - 1) * bound
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, VAE_APPROX)
    torch.save(weights, path)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("webui", help="the Forge tree (TARGET/webui)")
    ap.add_argument("out", help="the checkpoint to write (.safetensors)")
    ap.add_argument("--seed", type=int, default=35)
    ap.add_argument("--force", action="store_true", help="rewrite the file if it exists")
    ap.add_argument("--vae-approx-dir", help=f"also write {VAE_APPROX} there (models/VAE-approx)")
    args = ap.parse_args()
    if args.vae_approx_dir:
        print(f"wrote {write_vae_approx(args.vae_approx_dir, args.seed)}")
    if os.path.exists(args.out) and not args.force:
        print(f"exists, kept: {args.out}")
        return
    t0 = time.time()
    webui = os.path.abspath(args.webui)
    forge_on_path(webui)
    tensors = draw(shapes_of(webui), args.seed)
    detected = check_detection(tensors)
    metadata = {
        "format": "pt",
        "description": f"random weights, seed {args.seed}, SD3.5 layout, MMDiT of {BLOCKS} "
        "blocks, T5 norms only; for offline tests only",
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    write_safetensors(tensors, args.out, metadata)
    n = sum(t.numel() for t in tensors.values())
    print(
        f"wrote {args.out}: {n / 1e6:.0f} M params, {os.path.getsize(args.out) / 2**20:.0f} MiB, "
        f"{detected}, {time.time() - t0:.0f} s"
    )


if __name__ == "__main__":
    main()
