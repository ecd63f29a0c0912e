"""Shared test machinery: real ldm UNets driven by real k-diffusion samplers, and references.

The references re-derive DeepCache from the paper's rule with plain loops over the UNet's
blocks, independently of the engine's wrappers, so a test compares two separate codes.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import k_diffusion
import torch
from ldm.modules.diffusionmodules import openaimodel
from ldm.modules.diffusionmodules.util import timestep_embedding

from lib_deepcache.archs import PREDICTION, build_unet, unet_config

SAMPLERS: dict[str, Callable] = {
    "euler": k_diffusion.sampling.sample_euler,
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
    """The slice of ldm's LatentDiffusion that k-diffusion's CompVis wrappers call."""

    def __init__(self, unet: torch.nn.Module, image_cond: torch.Tensor | None = None) -> None:
        super().__init__()
        self.diffusion_model = unet
        self.image_cond = image_cond
        self.register_buffer("alphas_cumprod", sd_alphas_cumprod())

    def apply_model(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        if self.image_cond is not None:
            x = torch.cat([x, self.image_cond[: x.shape[0]]], dim=1)
        return self.diffusion_model(x, t, context=cond)


def denoiser_for(arch: str, model: LatentModel) -> torch.nn.Module:
    if PREDICTION[arch] == "v":
        return k_diffusion.external.CompVisVDenoiser(model)
    return k_diffusion.external.CompVisDenoiser(model)


@dataclass
class CFGDenoiser:
    """Classifier-free guidance the way the WebUI batches it.

    ``split``: cond and uncond as separate UNet calls (different token lengths, or
    batch_cond_uncond off). ``uncond_below``: drop the uncond rows once sigma falls under this
    value (the WebUI's "negative guidance minimum sigma"), so the batch shrinks mid-run.
    """

    denoiser: torch.nn.Module
    cond: torch.Tensor
    uncond: torch.Tensor
    scale: float = 7.0
    split: bool = False
    uncond_below: float | None = None
    sigmas_seen: list[float] = field(default_factory=list)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **_: object) -> torch.Tensor:
        self.sigmas_seen.append(float(sigma[0]))
        if self.uncond_below is not None and float(sigma[0]) < self.uncond_below:
            return self.denoiser(x, sigma, cond=self.cond)
        if self.split:
            c = self.denoiser(x, sigma, cond=self.cond)
            u = self.denoiser(x, sigma, cond=self.uncond)
        else:
            both = self.denoiser(
                torch.cat([x, x]), torch.cat([sigma, sigma]), cond=torch.cat([self.cond, self.uncond])
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
        **cfg: object,
    ) -> tuple[torch.Tensor, CFGDenoiser]:
        sigmas = self.sigmas(steps) if sigmas is None else sigmas
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(batch, 4, size, size, generator=g) * sigmas[0]
        guide = CFGDenoiser(self.denoiser, self.text(batch, seed + 1), self.text(batch, seed + 2))
        for name, value in cfg.items():
            setattr(guide, name, value)
        torch.manual_seed(seed + 3)  # the SDE samplers draw their noise from the global RNG
        with torch.no_grad():
            out = SAMPLERS[sampler](guide, x, sigmas, disable=True)
        return out, guide


def make_rig(arch: str = "sd15", width: int | None = 32, seed: int = 0, size: int = 16) -> Rig:
    unet = build_unet(arch, width=width, seed=seed)
    image_cond = None
    if unet_config(arch, width)["in_channels"] == 9:
        g = torch.Generator().manual_seed(seed + 7)
        image_cond = torch.randn(8, 5, size, size, generator=g)
    model = LatentModel(unet, image_cond)
    return Rig(arch, unet, model, denoiser_for(arch, model), unet_config(arch, width)["context_dim"])


# ----------------------------------------------------------------------------- references
Residuals = dict[str, torch.Tensor]


def reference_pass(
    unet: torch.nn.Module,
    x: torch.Tensor,
    t: torch.Tensor,
    context: torch.Tensor,
    depth: int,
    feature: torch.Tensor | None = None,
    residuals: Residuals | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The paper's rule as a plain loop; returns (output, deep feature at the boundary).

    ``feature`` None: a full pass. Otherwise a cached pass: input blocks 0..depth, then the
    stored feature joins the skip of block ``depth`` at output block n-1-depth. ``residuals``
    ("in.i", "mid", "out.j") are added where a ControlNet-style forward adds them.
    """
    res = residuals or {}
    n = len(unet.input_blocks)
    boundary = n - 1 - depth
    emb = unet.time_embed(timestep_embedding(t, unet.model_channels, repeat_only=False))
    h = x.type(unet.dtype)
    hs = []
    last_input = n - 1 if feature is None else depth
    for i in range(last_input + 1):
        h = _call_block(unet.input_blocks[i], h, emb, context)
        hs.append(h)
    if feature is None:
        h = _call_block(unet.middle_block, h, emb, context) + res.get("mid", 0)
        first_output = 0
    else:
        h, first_output = feature, boundary
        hs = hs[: depth + 1]
    cut = None
    for j in range(first_output, n):
        skip_level = n - 1 - j
        skip = hs.pop() + res.get(f"in.{skip_level}", 0)
        if j == boundary:
            cut = h
        h = _call_block(unet.output_blocks[j], openaimodel.th.cat([h, skip], dim=1), emb, context)
    return unet.out(h.type(x.dtype)), cut


def _call_block(block: torch.nn.Module, h, emb, context):
    """Run a block through its class forward, bypassing any instance-level wrapper."""
    return type(block).forward(block, h, emb, context)


def controlnet_like_forward(residuals: Residuals) -> Callable:
    """A foreign ``forward`` for the UNet instance in the way sd-webui-controlnet writes one.

    It never calls the original forward: it loops over the blocks itself and adds residuals to
    the skips and the middle output. Written from ControlNet's structure, not its code.
    """

    def forward(self, x, timesteps=None, context=None, **kwargs):
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels, repeat_only=False))
        h = x.type(self.dtype)
        hs = []
        for block in self.input_blocks:
            h = block(h, emb, context)
            hs.append(h)
        h = self.middle_block(h, emb, context) + residuals.get("mid", 0)
        for j, block in enumerate(self.output_blocks):
            level = len(self.output_blocks) - 1 - j
            skip = hs.pop() + residuals.get(f"in.{level}", 0)
            h = block(openaimodel.th.cat([h, skip], dim=1), emb, context)
        return self.out(h.type(x.dtype))

    return forward


def block_residuals(unet: torch.nn.Module, x: torch.Tensor, seed: int) -> Residuals:
    """Seeded residuals shaped like each skip (as a ControlNet produces) and the middle output."""
    shapes: dict[str, torch.Size] = {}
    hooks = [
        m.register_forward_hook(lambda mod, a, out, i=i: shapes.__setitem__(f"in.{i}", out.shape))
        for i, m in enumerate(unet.input_blocks)
    ]
    hooks.append(
        unet.middle_block.register_forward_hook(
            lambda mod, a, out: shapes.__setitem__("mid", out.shape)
        )
    )
    try:
        with torch.no_grad():
            t = torch.full((x.shape[0],), 500.0)
            unet(x, t, context=torch.zeros(x.shape[0], 77, _context_dim(unet)))
    finally:
        for hook in hooks:
            hook.remove()
    g = torch.Generator().manual_seed(seed)
    return {name: 0.1 * torch.randn(shape, generator=g) for name, shape in shapes.items()}


def _context_dim(unet: torch.nn.Module) -> int:
    for module in unet.modules():
        if hasattr(module, "to_k") and hasattr(module, "to_q"):
            if module.to_k.in_features != module.to_q.in_features:
                return module.to_k.in_features
    raise ValueError("no cross-attention")


@contextlib.contextmanager
def a1111_cat_resize() -> Iterator[None]:
    """The WebUI lets latents be multiples of 1 (not 8) by giving ldm's UNet a ``cat`` that
    resizes the deep tensor to the skip's size with nearest interpolation; reproduce that."""

    def cat(tensors, *args, **kwargs):
        if len(tensors) == 2 and tensors[0].shape[-2:] != tensors[1].shape[-2:]:
            a = torch.nn.functional.interpolate(tensors[0], tensors[1].shape[-2:], mode="nearest")
            tensors = (a, tensors[1])
        return torch.cat(tensors, *args, **kwargs)

    original = openaimodel.th
    openaimodel.th = types.SimpleNamespace(**{**vars(torch), "cat": cat})
    try:
        yield
    finally:
        openaimodel.th = original


@dataclass
class Recorded:
    x: torch.Tensor
    t: torch.Tensor
    context: torch.Tensor
    out: torch.Tensor


def record_unet_calls(unet: torch.nn.Module) -> tuple[list[Recorded], Callable[[], None]]:
    """Record every UNet call's inputs and output (clones); returns the list and a remover."""
    calls: list[Recorded] = []

    def hook(module, args, kwargs, output):
        context = args[2] if len(args) > 2 else kwargs.get("context")
        calls.append(Recorded(args[0].clone(), args[1].clone(), context.clone(), output.clone()))

    handle = unet.register_forward_hook(hook, with_kwargs=True)
    return calls, handle.remove


def unet_fingerprint(unet: torch.nn.Module) -> dict[str, object]:
    """Everything a session may touch: instance forwards, hooks, and the weights' bytes."""
    return {
        "forwards": {
            name: module.__dict__.get("forward") for name, module in unet.named_modules()
        },
        "hooks": {
            name: (
                len(module._forward_pre_hooks),
                len(module._forward_hooks),
            )
            for name, module in unet.named_modules()
        },
        "attrs": {name: sorted(vars(module)) for name, module in unet.named_modules()},
        "weights": {k: v.clone() for k, v in unet.state_dict().items()},
    }


def assert_same_fingerprint(before: dict, after: dict) -> None:
    assert before["forwards"] == after["forwards"]
    assert before["hooks"] == after["hooks"]
    assert before["attrs"] == after["attrs"]
    assert before["weights"].keys() == after["weights"].keys()
    for key, value in before["weights"].items():
        assert torch.equal(value, after["weights"][key]), key
