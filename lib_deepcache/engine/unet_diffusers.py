"""The diffusers ``UNet2DConditionModel`` (SD.Next, any diffusers pipeline) as units.

``forward`` runs ``conv_in`` (the first skip), then each down block, whose resnet(+attention)
layers and downsampler each add one skip; then ``mid_block``; then each up block, whose layers
each take the newest skip, ``cat([h, skip])`` in the block, and run resnet(+attention), the last
layer followed by the upsampler. So unit ``k`` of the input side is the ``k``-th skip producer
and unit ``j`` of the output side is the ``j``-th up layer, exactly the ldm block numbering
(SD1.5: 12 + 12, SDXL: 9 + 9), and depth ``d`` is the authors' ``cache_branch_id``.
Down and up blocks are groups; their layers are leaves.
"""

from __future__ import annotations

import torch

from .layout import Role, Site, UNetLayout, UnsupportedUNetError


def diffusers_layout(unet: torch.nn.Module) -> UNetLayout | None:
    downs = getattr(unet, "down_blocks", None)
    ups = getattr(unet, "up_blocks", None)
    if downs is None and ups is None:
        return None
    name = type(unet).__name__
    conv_in, middle = getattr(unet, "conv_in", None), getattr(unet, "mid_block", None)
    if not isinstance(downs, torch.nn.ModuleList) or not isinstance(ups, torch.nn.ModuleList):
        raise UnsupportedUNetError(f"{name} has no down_blocks/up_blocks ModuleList")
    if not isinstance(conv_in, torch.nn.Module) or not isinstance(middle, torch.nn.Module):
        raise UnsupportedUNetError(f"{name} has no conv_in or mid_block")

    sites = [Site("conv_in", conv_in, Role.INPUT, 0, 0, head=True, tail=True)]
    unit = 1
    for b, block in enumerate(downs):
        first = unit
        layers = _layers(block, "downsamplers")
        sites.append(
            Site(f"down_blocks.{b}", block, Role.INPUT, first, first + len(layers) - 1, True)
        )
        for layer_modules in layers:
            sites += _leaves(f"down_blocks.{b}", block, layer_modules, Role.INPUT, unit)
            unit += 1
    num_blocks = unit

    sites.append(Site("mid_block", middle, Role.MIDDLE, 0, 0))
    unit = 0
    for u, block in enumerate(ups):
        first = unit
        layers = _layers(block, "upsamplers")
        if layers and len(layers) > len(block.resnets):
            upsampler_names = layers.pop()
            layers[-1] = layers[-1] + upsampler_names
        sites.append(
            Site(f"up_blocks.{u}", block, Role.OUTPUT, first, first + len(layers) - 1, True)
        )
        for layer_modules in layers:
            sites += _leaves(f"up_blocks.{u}", block, layer_modules, Role.OUTPUT, unit)
            unit += 1
    if unit != num_blocks or num_blocks < 2:
        raise UnsupportedUNetError(
            f"{name} pushes {num_blocks} skips but its up blocks take {unit};"
            " DeepCache needs matching skip connections"
        )
    return UNetLayout("diffusers", num_blocks, tuple(sites))


def _layers(block: torch.nn.Module, sampler_attr: str) -> list[list[str]]:
    """Attribute paths (inside ``block``) of the modules of each layer, in running order; the
    samplers form one more layer."""
    resnets = getattr(block, "resnets", None)
    if not isinstance(resnets, torch.nn.ModuleList) or not resnets:
        raise UnsupportedUNetError(f"{type(block).__name__} has no resnets")
    attentions = getattr(block, "attentions", None) or []
    if attentions and len(attentions) != len(resnets):
        raise UnsupportedUNetError(
            f"{type(block).__name__} has {len(resnets)} resnets but {len(attentions)} attentions"
        )
    layers = [
        [f"resnets.{i}"] + ([f"attentions.{i}"] if attentions else []) for i in range(len(resnets))
    ]
    samplers = getattr(block, sampler_attr, None) or []
    if samplers:
        layers.append([f"{sampler_attr}.{k}" for k in range(len(samplers))])
    return layers


def _leaves(
    prefix: str, block: torch.nn.Module, paths: list[str], role: Role, unit: int
) -> list[Site]:
    last = len(paths) - 1
    return [
        Site(
            f"{prefix}.{path}",
            block.get_submodule(path),
            role,
            unit,
            unit,
            head=k == 0,
            tail=k == last,
        )
        for k, path in enumerate(paths)
    ]
