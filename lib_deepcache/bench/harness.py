"""A seeded UNet sampled by real k-diffusion samplers, wired the way the WebUI wires them.

Used by the benchmark and the tests. Needs ``k-diffusion`` and ``ldm`` (stable-diffusion-sdkit),
or ``diffusers`` for the ``diffusers-*`` archs (SD.Next's UNet class); the engine needs neither.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .archs import (
    DIFFUSERS_ARCHS,
    PREDICTION,
    build_diffusers_unet,
    build_unet,
    unet_config,
)

with warnings.catch_warnings():
    # k_diffusion's __init__ imports its FID/CLIP evaluation module, whose ``import clip`` runs
    # ``from pkg_resources import packaging``, and setuptools warns on every run that
    # pkg_resources is deprecated. Nothing here uses clip, and no import of k_diffusion.sampling
    # avoids the package's __init__: silence that one warning, for this import only.
    warnings.filterwarnings("ignore", "pkg_resources is deprecated", UserWarning)
    import k_diffusion

DIFFUSERS_PREFIX = "diffusers-"
# Every arch a rig can be made of: the ldm ones and the diffusers ones.
RIG_ARCHS = sorted(PREDICTION) + [DIFFUSERS_PREFIX + name for name in DIFFUSERS_ARCHS]

SAMPLERS: dict[str, Callable] = {
    "euler": k_diffusion.sampling.sample_euler,
    "euler_ancestral": k_diffusion.sampling.sample_euler_ancestral,
    "dpmpp_2m": k_diffusion.sampling.sample_dpmpp_2m,
    "heun": k_diffusion.sampling.sample_heun,
    "dpmpp_sde": k_diffusion.sampling.sample_dpmpp_sde,
    "dpm_2": k_diffusion.sampling.sample_dpm_2,
}


def sd_alphas_cumprod() -> torch.Tensor:
    """The SD1/SD2 training schedule (scaled-linear betas, 1000 steps)."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0).float()


class LatentModel(torch.nn.Module):
    """The slice of ldm's LatentDiffusion that k-diffusion's CompVis wrappers call; a diffusers
    UNet is called its own way (``encoder_hidden_states``, SDXL's added conditioning)."""

    def __init__(self, unet: torch.nn.Module, image_cond: torch.Tensor | None = None) -> None:
        super().__init__()
        self.diffusion_model = unet
        self.image_cond = image_cond
        self.register_buffer("alphas_cumprod", sd_alphas_cumprod())

    def apply_model(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        if self.image_cond is not None:
            x = torch.cat([x, self.image_cond[: x.shape[0]]], dim=1)
        if not is_diffusers(self.diffusion_model):
            return self.diffusion_model(x, t, context=cond)
        kwargs = diffusers_kwargs(self.diffusion_model, cond)
        return self.diffusion_model(x, t, **kwargs, return_dict=False)[0]


def is_diffusers(unet: torch.nn.Module) -> bool:
    return hasattr(unet, "down_blocks")


def diffusers_kwargs(unet: torch.nn.Module, cond: torch.Tensor) -> dict[str, object]:
    """A diffusers UNet's conditioning for this text batch; SDXL's pooled-text and size
    conditioning are fixed seeded values (the UNet's cost does not depend on them)."""
    kwargs: dict[str, object] = {"encoder_hidden_states": cond}
    if unet.config.addition_embed_type == "text_time":
        batch, width = cond.shape[0], unet.config.projection_class_embeddings_input_dim
        time_dim = unet.config.addition_time_embed_dim
        g = torch.Generator().manual_seed(11)
        text = torch.randn(batch, width - 6 * time_dim, generator=g)
        kwargs["added_cond_kwargs"] = {
            "text_embeds": text.to(device=cond.device, dtype=cond.dtype),
            "time_ids": torch.tensor([[1024.0, 1024.0, 0.0, 0.0, 1024.0, 1024.0]] * batch).to(
                device=cond.device, dtype=cond.dtype
            ),
        }
    return kwargs


def denoiser_for(arch: str, model: LatentModel) -> torch.nn.Module:
    if PREDICTION[arch] == "v":
        return k_diffusion.external.CompVisVDenoiser(model)
    return k_diffusion.external.CompVisDenoiser(model)


@dataclass
class CFGDenoiser:
    """Classifier-free guidance the way the WebUI batches it.

    ``split``: cond and uncond as separate UNet calls (different token lengths, or
    batch_cond_uncond off). ``uncond_below``: drop the uncond rows once sigma falls under this
    value, so the batch shrinks mid-run. ``uncond_every_other``: drop them on every other call
    instead, the way A1111's "negative guidance minimum sigma" (NGMS) does once sigma is under
    it, so the batch alternates 2B, B, 2B, B...
    """

    denoiser: torch.nn.Module
    cond: torch.Tensor
    uncond: torch.Tensor
    scale: float = 7.0
    split: bool = False
    uncond_below: float | None = None
    uncond_every_other: bool = False
    sigmas_seen: list[float] = field(default_factory=list)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **_: object) -> torch.Tensor:
        self.sigmas_seen.append(float(sigma[0]))
        odd_call = len(self.sigmas_seen) % 2 == 0
        if (self.uncond_below is not None and float(sigma[0]) < self.uncond_below) or (
            self.uncond_every_other and odd_call
        ):
            return self.denoiser(x, sigma, cond=self.cond)
        if self.split:
            c = self.denoiser(x, sigma, cond=self.cond)
            u = self.denoiser(x, sigma, cond=self.uncond)
        else:
            both = self.denoiser(
                torch.cat([x, x]),
                torch.cat([sigma, sigma]),
                cond=torch.cat([self.cond, self.uncond]),
            )
            c, u = both.chunk(2)
        return u + (c - u) * self.scale


@dataclass
class Rig:
    """A seeded UNet with everything needed to sample from it."""

    arch: str
    unet: torch.nn.Module
    model: LatentModel
    denoiser: torch.nn.Module
    context_dim: int

    def text(self, batch: int, seed: int, tokens: int = 77) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return torch.randn(batch, tokens, self.context_dim, generator=g)

    def meta_call(self, batch: int, size: int) -> tuple[tuple, dict]:
        """UNet arguments of this shape on ``meta``, for FLOP counting."""
        x = torch.empty(batch, 4, size, size, device="meta")
        t = torch.empty(batch, device="meta")
        cond = torch.empty(batch, 77, self.context_dim, device="meta")
        if not is_diffusers(self.unet):
            return (x, t), {"context": cond}
        return (x, t), diffusers_kwargs(self.unet, cond)

    def sigmas(self, steps: int) -> torch.Tensor:
        return self.denoiser.get_sigmas(steps)

    def timestep_grid(self, sigmas: torch.Tensor) -> list[float]:
        """The timesteps at which the sampler's steps start, as the UNet will receive them."""
        return [float(t) for t in self.denoiser.sigma_to_t(sigmas[:-1])]

    def sample(
        self,
        sampler: str,
        steps: int,
        batch: int = 1,
        size: int = 16,
        seed: int = 0,
        sigmas: torch.Tensor | None = None,
        device: torch.device | str = "cpu",
        **cfg: object,
    ) -> tuple[torch.Tensor, CFGDenoiser]:
        """Seeded on the CPU, run on ``device`` (where the model must already be)."""
        sigmas = (self.sigmas(steps) if sigmas is None else sigmas).to(device)
        g = torch.Generator().manual_seed(seed)
        x = (torch.randn(batch, 4, size, size, generator=g) * sigmas[0].cpu()).to(device)
        cond, uncond = self.text(batch, seed + 1), self.text(batch, seed + 2)
        guide = CFGDenoiser(self.denoiser, cond.to(device), uncond.to(device))
        for name, value in cfg.items():
            setattr(guide, name, value)
        torch.manual_seed(seed + 3)  # the SDE samplers draw their noise from the global RNG
        with torch.no_grad():
            out = SAMPLERS[sampler](guide, x, sigmas, disable=True)
        return out, guide


def make_rig(arch: str = "sd15", width: int | None = 32, seed: int = 0, size: int = 16) -> Rig:
    if arch.startswith(DIFFUSERS_PREFIX):
        unet = build_diffusers_unet(arch[len(DIFFUSERS_PREFIX) :], width=width, seed=seed)
        model = LatentModel(unet)
        denoiser = k_diffusion.external.CompVisDenoiser(model)
        return Rig(arch, unet, model, denoiser, unet.config.cross_attention_dim)
    unet = build_unet(arch, width=width, seed=seed)
    image_cond = None
    if unet_config(arch, width)["in_channels"] == 9:
        g = torch.Generator().manual_seed(seed + 7)
        image_cond = torch.randn(8, 5, size, size, generator=g)
    model = LatentModel(unet, image_cond)
    return Rig(
        arch, unet, model, denoiser_for(arch, model), unet_config(arch, width)["context_dim"]
    )
