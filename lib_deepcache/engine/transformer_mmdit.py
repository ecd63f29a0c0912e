"""SD3 / SD3.5 (MMDiT) as a block stack: one stage of joint blocks.

* diffusers (SD.Next): ``SD3Transformer2DModel.transformer_blocks`` of ``JointTransformerBlock``,
  called with ``hidden_states`` (image) and ``encoder_hidden_states`` (text), returning
  ``(encoder_hidden_states, hidden_states)``;
* Forge's ``MMDiTX`` (and AUTOMATIC1111's SD3 ``MMDiT``, from the same reference code):
  ``joint_blocks`` of ``JointBlock``, called as ``block(context, x, c=...)``, returning
  ``(context, x)``.

The last block keeps only the image stream (its text output is None, which nothing after it
reads): skipped at depth 0, it adds nothing to the text stream.
"""

from __future__ import annotations

import torch

from .stack import StackLayout, StreamIO, check_blocks, class_names, stack_layout

_DIFFUSERS_JOINT = StreamIO(("hidden_states", "encoder_hidden_states"), returns=(1, 0))
_REFERENCE_JOINT = StreamIO(("context", "x"), returns=(0, 1), main=1)


def mmdit_layout(model: torch.nn.Module) -> StackLayout | None:
    """The layout of a diffusers SD3 or a Forge / AUTOMATIC1111 MMDiT; None for other models."""
    joint = getattr(model, "joint_blocks", None)
    if joint is not None:
        check_blocks(model, joint, {"JointBlock"})
        return stack_layout("sd3", [("joint_blocks", joint, _REFERENCE_JOINT)])
    blocks = getattr(model, "transformer_blocks", None)
    if (
        isinstance(blocks, torch.nn.ModuleList)
        and blocks
        and "JointTransformerBlock" in (class_names(blocks[0]))
    ):
        check_blocks(model, blocks, {"JointTransformerBlock"})
        return stack_layout("sd3", [("transformer_blocks", blocks, _DIFFUSERS_JOINT)])
    return None
