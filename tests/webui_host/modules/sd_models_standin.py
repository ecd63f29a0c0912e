"""The loaded checkpoint as the WebUI holds it: LatentDiffusion -> DiffusionWrapper -> UNet.

``apply_model(x, t, cond)`` takes the WebUI's condition dict: ``c_crossattn`` (text) and, for
inpainting models, ``c_concat`` (mask and masked image latent) concatenated onto the input.
"""

import torch

from lib_deepcache.bench.archs import build_unet, unet_config
from lib_deepcache.bench.harness import sd_alphas_cumprod


class DiffusionWrapper(torch.nn.Module):
    def __init__(self, unet):
        super().__init__()
        self.diffusion_model = unet

    def forward(self, x, t, c_concat=None, c_crossattn=None):
        if c_concat is not None:
            x = torch.cat([x, *c_concat], dim=1)
        return self.diffusion_model(x, t, context=torch.cat(c_crossattn, 1))


class LatentDiffusion(torch.nn.Module):
    parameterization = "eps"

    def __init__(self, arch="sd15", width=32, seed=0, name="model"):
        super().__init__()
        self.model = DiffusionWrapper(build_unet(arch, width=width, seed=seed))
        self.register_buffer("alphas_cumprod", sd_alphas_cumprod())
        self.context_dim = unet_config(arch, width)["context_dim"]
        self.in_channels = unet_config(arch, width)["in_channels"]
        self.name = name

    def apply_model(self, x, t, cond):
        return self.model(x, t, **cond)
