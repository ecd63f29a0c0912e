"""Shared test machinery: real ldm UNets driven by real k-diffusion samplers, and references.

The references re-derive DeepCache from the paper's rule with plain loops over the UNet's
blocks, independently of the engine's wrappers, so a test compares two separate codes.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from ldm.modules.diffusionmodules import openaimodel
from ldm.modules.diffusionmodules.util import timestep_embedding

from lib_deepcache.bench.harness import SAMPLERS, CFGDenoiser, Rig, make_rig

__all__ = ["SAMPLERS", "CFGDenoiser", "Rig", "make_rig"]

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
    t_emb = timestep_embedding(t, unet.model_channels, repeat_only=False)
    emb = unet.time_embed(t_emb.to(unet.time_embed[0].weight.dtype))
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


def block_residuals(
    unet: torch.nn.Module, x: torch.Tensor, context: torch.Tensor, seed: int
) -> Residuals:
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
            unet(x, t, context=context)
    finally:
        for hook in hooks:
            hook.remove()
    g = torch.Generator().manual_seed(seed)
    return {name: 0.1 * torch.randn(shape, generator=g) for name, shape in shapes.items()}


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
        "forwards": {name: module.__dict__.get("forward") for name, module in unet.named_modules()},
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
