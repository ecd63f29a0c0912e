"""TeaCache (Liu et al., "Timestep Embedding Tells: It's Time to Cache for Video Diffusion
Model", 2024) for diffusers' ``FluxTransformer2DModel``, written here because no library ships it
for diffusers (the diffusers hooks have none; SD.Next and the Forge extensions carry their own
copies inside their hosts).

The rule, from the paper: on each transformer call, take the first double block's
timestep-modulated image input (its ``norm1`` output) and its relative L1 change since the
previous call; rescale it with a polynomial fitted on the model (how much the model's output
changes for a given input change) and add it to a running sum. While the sum stays under the
threshold the whole block stack is skipped and the residual it added at the last computed call
(per stream: image and text) is added to its input; otherwise every block runs, the residual is
stored and the sum restarts. The polynomial is fitted here on uncached runs of calibration seeds
(:func:`fit_coefficients`), as the paper fits it per model.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def relative_l1(current: torch.Tensor, previous: torch.Tensor) -> float:
    return float((current - previous).abs().mean() / previous.abs().mean())


class TeaCache:
    """While entered, the transformer's blocks follow the skip rule above."""

    def __init__(
        self, model: torch.nn.Module, threshold: float, coefficients: Sequence[float]
    ) -> None:
        self.model = model
        self.threshold = threshold
        self.rescale = np.poly1d(list(coefficients))
        self.full_calls = 0
        self.skipped_calls = 0
        self._blocks = list(model.transformer_blocks) + list(model.single_transformer_blocks)
        self._previous: torch.Tensor | None = None
        self._change = 0.0
        self._compute = True
        self._inputs: tuple[torch.Tensor, torch.Tensor] | None = None
        self._residual: tuple[torch.Tensor, torch.Tensor] | None = None

    def __enter__(self) -> TeaCache:
        for index, block in enumerate(self._blocks):
            block.forward = self._wrap(index, block.forward)
        return self

    def __exit__(self, *_: object) -> None:
        for block in self._blocks:
            del block.forward

    def _decide(self, hidden: torch.Tensor, temb: torch.Tensor) -> bool:
        """Whether this call computes the blocks; updates the running sum."""
        modulated = self._blocks[0].norm1(hidden, emb=temb)[0]
        previous, self._previous = self._previous, modulated
        if previous is None or self._residual is None or previous.shape != modulated.shape:
            return True
        self._change += float(self.rescale(relative_l1(modulated, previous)))
        return self._change >= self.threshold

    def _wrap(self, index: int, forward):
        last = len(self._blocks) - 1

        def run(hidden_states, encoder_hidden_states, temb, **kwargs):
            if index == 0:
                self._compute = self._decide(hidden_states, temb)
                if self._compute:
                    self._change = 0.0
                    self.full_calls += 1
                    self._inputs = (encoder_hidden_states, hidden_states)
                else:
                    self.skipped_calls += 1
                    text, image = self._residual
                    return encoder_hidden_states + text, hidden_states + image
            if not self._compute:
                return encoder_hidden_states, hidden_states
            out = forward(hidden_states, encoder_hidden_states, temb, **kwargs)
            if index == last:
                self._residual = (out[0] - self._inputs[0], out[1] - self._inputs[1])
            return out

        return run


def fit_coefficients(inputs: Sequence[float], outputs: Sequence[float], degree: int = 4):
    """The rescaling polynomial: output change as a function of modulated-input change,
    least squares over consecutive calls of uncached runs (highest power first)."""
    return [float(c) for c in np.polyfit(np.asarray(inputs), np.asarray(outputs), degree)]


class ChangeRecorder:
    """While entered (on an uncached run), records per call the modulated-input and the output
    relative L1 changes that :func:`fit_coefficients` fits."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.inputs: list[float] = []
        self.outputs: list[float] = []
        self._previous: tuple[torch.Tensor, torch.Tensor] | None = None

    def __enter__(self) -> ChangeRecorder:
        first = self.model.transformer_blocks[0]
        self._handles = [
            first.register_forward_pre_hook(self._see_input, with_kwargs=True),
            self.model.register_forward_hook(self._see_output),
        ]
        return self

    def __exit__(self, *_: object) -> None:
        for handle in self._handles:
            handle.remove()

    def _see_input(self, block, args, kwargs) -> None:
        self._modulated = block.norm1(kwargs["hidden_states"], emb=kwargs["temb"])[0]

    def _see_output(self, module, args, output) -> None:
        current = (self._modulated, output[0])
        if self._previous is not None:
            self.inputs.append(relative_l1(current[0], self._previous[0]))
            self.outputs.append(relative_l1(current[1], self._previous[1]))
        self._previous = current
