"""A small, really trained Flux-like transformer for fidelity measurements on transformers.

The UNet fixture's counterpart (``fixture.py``): random weights have no temporal redundancy, so
they say nothing about what caching costs in quality. This is a diffusers
``FluxTransformer2DModel`` (double-stream blocks, then single-stream blocks, joint attention,
rotary positions, adaLN modulation by the timestep) at width 128, trained by
``tools/train_dit_fixture.py`` with Flux's objective (rectified flow: ``x_s = (1 - s) x0 + s
noise``, the model predicts the velocity ``noise - x0``) on the same data as the UNet fixture:
32x32 crops of the photographs inside scikit-image. Pixel space, packed into 4x4 patches the way
Flux packs its latents into 2x2 ones (64 image tokens of 48 channels). Unconditional: the text
stream is a constant (zeros, a few tokens), so the double blocks still run joint attention.

Sampling follows what the hosts do with Flux: k-diffusion samplers on the "const" flow
parametrisation (denoised = x - sigma v, sigma from 1 down to 0) over Flux's shifted sigma
schedule (``flow_sigmas``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

WEIGHTS = Path(__file__).with_name("fixtures") / "photo_flux_32px.safetensors"
IMAGE_SIZE = 32
PATCH = 4
CHANNELS = 3
TEXT_TOKENS = 4
TEXT_DIM = 32
POOLED_DIM = 32

CONFIG: dict[str, Any] = dict(
    patch_size=1,
    in_channels=CHANNELS * PATCH * PATCH,
    num_layers=3,
    num_single_layers=6,
    attention_head_dim=32,
    num_attention_heads=4,
    joint_attention_dim=TEXT_DIM,
    pooled_projection_dim=POOLED_DIM,
    guidance_embeds=False,
    axes_dims_rope=(8, 12, 12),
)


def build(seed: int = 0) -> torch.nn.Module:
    """The fixture's architecture with fresh seeded (untrained) weights."""
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    return FluxTransformer2DModel(**CONFIG)


def load(path: Path | None = None) -> torch.nn.Module:
    """The trained fixture in float32, eval mode, no gradients."""
    from safetensors.torch import load_file

    model = build()
    state = {k: v.float() for k, v in load_file(str(path or WEIGHTS)).items()}
    model.load_state_dict(state)
    return model.eval().requires_grad_(False)


def pack(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, 32, 32) pixels -> (B, 64, 48) tokens, row-major over the 8x8 patch grid."""
    b, c, h, w = images.shape
    grid = images.reshape(b, c, h // PATCH, PATCH, w // PATCH, PATCH)
    return grid.permute(0, 2, 4, 1, 3, 5).reshape(b, (h // PATCH) * (w // PATCH), c * PATCH**2)


def unpack(tokens: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`pack`."""
    b, side = tokens.shape[0], IMAGE_SIZE // PATCH
    grid = tokens.reshape(b, side, side, CHANNELS, PATCH, PATCH)
    return grid.permute(0, 3, 1, 4, 2, 5).reshape(b, CHANNELS, IMAGE_SIZE, IMAGE_SIZE)


def conditioning(batch: int, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """The constant text stream, pooled vector and position ids the fixture was trained with."""
    side = IMAGE_SIZE // PATCH
    img_ids = torch.zeros(side, side, 3)
    img_ids[..., 1] = torch.arange(side)[:, None]
    img_ids[..., 2] = torch.arange(side)[None, :]
    return {
        "encoder_hidden_states": torch.zeros(batch, TEXT_TOKENS, TEXT_DIM, device=device),
        "pooled_projections": torch.zeros(batch, POOLED_DIM, device=device),
        "img_ids": img_ids.reshape(-1, 3).to(device),
        "txt_ids": torch.zeros(TEXT_TOKENS, 3, device=device),
    }


def velocity(model: torch.nn.Module, images: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The model's velocity prediction for noisy images at flow time ``sigma`` (per image),
    called the way diffusers' Flux pipeline calls the transformer (``timestep`` = sigma)."""
    out = model(
        hidden_states=pack(images),
        timestep=sigma.to(images.dtype).expand(images.shape[0]),
        return_dict=False,
        **conditioning(images.shape[0], images.device),
    )[0]
    return unpack(out)


def flow_shift(tokens: int) -> float:
    """Flux's resolution-dependent shift mu: linear in the image token count, 0.5 at 256 tokens
    and 1.15 at 4096 (the Flux pipeline's defaults)."""
    return 0.5 + (tokens - 256) * (1.15 - 0.5) / (4096 - 256)


def flow_sigmas(steps: int) -> torch.Tensor:
    """Flux's sampling sigmas for ``steps`` steps, then a final 0: ``linspace(1, 1/steps)``
    shifted by ``exp(mu)`` (``s' = e^mu / (e^mu + 1/s - 1)``)."""
    mu = flow_shift((IMAGE_SIZE // PATCH) ** 2)
    base = torch.linspace(1.0, 1.0 / steps, steps, dtype=torch.float64)
    shifted = math.exp(mu) / (math.exp(mu) + (1 / base - 1))
    return torch.cat([shifted, torch.zeros(1, dtype=torch.float64)]).float()


class FlowDenoiser(torch.nn.Module):
    """What a k-diffusion sampler calls: ``denoised = x - sigma * v`` (the "const" flow
    parametrisation Forge and ComfyUI sample Flux with)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, **_: object) -> torch.Tensor:
        sigma = sigma.reshape(-1)
        return x - sigma.view(-1, 1, 1, 1) * velocity(self.model, x, sigma)
