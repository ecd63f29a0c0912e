"""Flux and Chroma (Flux-like, modulated by a distilled vector) as block stacks.

Both run a stage of double-stream blocks (image and text tokens kept apart, one joint attention)
and then a stage of single-stream blocks. The hosts run them as:

* diffusers (SD.Next): ``FluxTransformer2DModel`` / ``ChromaTransformer2DModel`` with
  ``transformer_blocks`` then ``single_transformer_blocks``; double blocks take
  ``hidden_states`` (image) and ``encoder_hidden_states`` (text) and return
  ``(encoder_hidden_states, hidden_states)``. Flux's single blocks do the same since diffusers
  joined the streams inside them (older releases, and Chroma's, take and return the joined stream
  alone);
* Forge: ``IntegratedFluxTransformer2DModel`` / ``IntegratedChromaTransformer2DModel`` with
  ``double_blocks`` (``img``, ``txt`` in, ``(img, txt)`` out) then ``single_blocks`` on the joined
  stream ``x``.
"""

from __future__ import annotations

import inspect

import torch

from .stack import StackLayout, StreamIO, check_blocks, class_names, stack_layout

_DIFFUSERS_PAIR = StreamIO(("hidden_states", "encoder_hidden_states"), returns=(1, 0))
_DIFFUSERS_JOINED = StreamIO(("hidden_states",))
_FORGE_DOUBLE = StreamIO(("img", "txt"), returns=(0, 1))
_FORGE_SINGLE = StreamIO(("x",))

_DIFFUSERS_DOUBLE = {"FluxTransformerBlock", "ChromaTransformerBlock"}
_DIFFUSERS_SINGLE = {"FluxSingleTransformerBlock", "ChromaSingleTransformerBlock"}


def flux_layout(model: torch.nn.Module) -> StackLayout | None:
    """The layout of a diffusers or Forge Flux / Chroma transformer; None for other models."""
    family = "chroma" if any("Chroma" in name for name in class_names(model)) else "flux"
    doubles = getattr(model, "transformer_blocks", None)
    singles = getattr(model, "single_transformer_blocks", None)
    if doubles is not None and singles is not None:
        check_blocks(model, doubles, _DIFFUSERS_DOUBLE)
        check_blocks(model, singles, _DIFFUSERS_SINGLE)
        single_io = _diffusers_single_io(singles)
        return stack_layout(
            family,
            [
                ("transformer_blocks", doubles, _DIFFUSERS_PAIR),
                ("single_transformer_blocks", singles, single_io),
            ],
        )
    doubles = getattr(model, "double_blocks", None)
    singles = getattr(model, "single_blocks", None)
    if doubles is not None and singles is not None:
        check_blocks(model, doubles, {"DoubleStreamBlock"})
        check_blocks(model, singles, {"SingleStreamBlock"})
        return stack_layout(
            family,
            [("double_blocks", doubles, _FORGE_DOUBLE), ("single_blocks", singles, _FORGE_SINGLE)],
        )
    return None


def _diffusers_single_io(singles: torch.nn.ModuleList) -> StreamIO:
    """Single blocks that take the text stream apart return both streams; those that take the
    joined stream return it alone."""
    if not singles:
        return _DIFFUSERS_JOINED
    parameters = inspect.signature(type(singles[0]).forward).parameters
    return _DIFFUSERS_PAIR if "encoder_hidden_states" in parameters else _DIFFUSERS_JOINED
