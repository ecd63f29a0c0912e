"""Whole-step skipping decided by the first block (the FBCache / TeaCache kind): a reference
method for the equal-FLOPs study, not a mode of the extension.

On every UNet call the first input block runs; the relative L1 change of its output since the
previous call is added to a running sum. While the sum stays under the threshold the call
returns the output of the last full call whole (the noise prediction is reused, nothing of the
UNet past the first block runs); otherwise the full UNet runs and the sum restarts at zero. The
first call always runs in full. A skipped call costs the first block's share of the FLOPs, so
the method's speed is set by the threshold, which the study calibrates to uniform DeepCache's.
"""

from __future__ import annotations

import torch

from ..engine.flops import BlockFlops
from ..engine.layout import Role, unit_name


def first_block_share(flops: BlockFlops) -> float:
    """FLOPs of the first input block over those of the whole UNet call."""
    return flops.per_unit[unit_name(Role.INPUT, 0)] / flops.total


class StepSkip:
    """While entered, the ldm UNet's calls go through the skip decision above."""

    def __init__(self, unet: torch.nn.Module, threshold: float) -> None:
        self.unet = unet
        self.threshold = threshold
        self.full_calls = 0
        self.skipped_calls = 0
        self._previous_first: torch.Tensor | None = None
        self._output: torch.Tensor | None = None
        self._change = 0.0

    def __enter__(self) -> StepSkip:
        self._original = self.unet.forward
        self.unet.forward = self._forward
        return self

    def __exit__(self, *_: object) -> None:
        del self.unet.forward

    def speedup(self, first_share: float) -> float:
        """UNet FLOPs without skipping over FLOPs with it, for the calls made so far."""
        calls = self.full_calls + self.skipped_calls
        return calls / (self.full_calls + self.skipped_calls * first_share)

    def _forward(self, x: torch.Tensor, timesteps: torch.Tensor, context=None, **kwargs):
        first = self.unet.input_blocks[0](x, None, context)
        previous, self._previous_first = self._previous_first, first
        if previous is not None and previous.shape == first.shape:
            self._change += float((first - previous).abs().mean() / previous.abs().mean())
            if self._change < self.threshold and self._output is not None:
                self.skipped_calls += 1
                return self._output
        self._change = 0.0
        self.full_calls += 1
        self._output = self._original(x, timesteps, context=context, **kwargs)
        return self._output
