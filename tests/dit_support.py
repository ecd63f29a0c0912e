"""Small seeded diffusers transformers (Flux, SD3, Chroma), a flow-matching Euler loop that calls
them the way their pipelines do, and an independent re-implementation of DeepCache's residual
rule for block stacks, written here from the rule's statement alone (not from the engine):

for depth ``d``, a cached call runs the first and the last ``d`` blocks; every block between
returns its input, except the first one of each stage (double / single), which adds the sum, over
that stage's skipped blocks, of what each added (output minus input) at the slot's last full call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from diffusers import ChromaTransformer2DModel, FluxTransformer2DModel, SD3Transformer2DModel

TOKENS, TEXT, WIDTH = 16, 8, 16  # image tokens (4x4), text tokens, text embedding width


def small_flux(seed: int = 0, doubles: int = 2, singles: int = 4) -> FluxTransformer2DModel:
    torch.manual_seed(seed)
    return FluxTransformer2DModel(
        in_channels=16,
        num_layers=doubles,
        num_single_layers=singles,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=WIDTH,
        pooled_projection_dim=WIDTH,
        axes_dims_rope=(4, 6, 6),
    ).eval()


def small_chroma(seed: int = 0) -> ChromaTransformer2DModel:
    torch.manual_seed(seed)
    return ChromaTransformer2DModel(
        in_channels=16,
        num_layers=2,
        num_single_layers=4,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=WIDTH,
        axes_dims_rope=(4, 6, 6),
        approximator_hidden_dim=32,
        approximator_layers=1,
    ).eval()


def small_sd3(seed: int = 0, layers: int = 6) -> SD3Transformer2DModel:
    torch.manual_seed(seed)
    return SD3Transformer2DModel(
        sample_size=8,
        patch_size=2,
        in_channels=4,
        num_layers=layers,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=WIDTH,
        caption_projection_dim=32,
        pooled_projection_dim=WIDTH,
        out_channels=4,
        pos_embed_max_size=16,
    ).eval()


@dataclass
class Prompt:
    """One conditioning (a cond or an uncond call of the pipeline)."""

    text: torch.Tensor
    pooled: torch.Tensor


def prompts(count: int, batch: int = 1, seed: int = 1) -> list[Prompt]:
    generator = torch.Generator().manual_seed(seed)
    return [
        Prompt(
            torch.randn(batch, TEXT, WIDTH, generator=generator),
            torch.randn(batch, WIDTH, generator=generator),
        )
        for _ in range(count)
    ]


def latent(model: torch.nn.Module, batch: int = 1, seed: int = 2) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    if isinstance(model, SD3Transformer2DModel):
        return torch.randn(batch, 4, 8, 8, generator=generator)
    return torch.randn(batch, TOKENS, 16, generator=generator)


def call(model: torch.nn.Module, x: torch.Tensor, sigma: float, prompt: Prompt) -> torch.Tensor:
    """One call as the model's pipeline makes it: Flux and Chroma get the timestep as a sigma in
    [0, 1] (the pipeline divides by 1000), SD3 gets the scheduler's 0..1000."""
    batch = x.shape[0]
    if isinstance(model, SD3Transformer2DModel):
        return model(
            hidden_states=x,
            encoder_hidden_states=prompt.text,
            pooled_projections=prompt.pooled,
            timestep=torch.full((batch,), sigma * 1000.0),
            return_dict=False,
        )[0]
    ids = {
        "img_ids": torch.stack(
            [torch.zeros(TOKENS), torch.arange(TOKENS) // 4, torch.arange(TOKENS) % 4], -1
        ).float(),
        "txt_ids": torch.zeros(prompt.text.shape[1], 3),
    }
    chroma = isinstance(model, ChromaTransformer2DModel)
    extra = {} if chroma else {"pooled_projections": prompt.pooled}
    return model(
        hidden_states=x,
        encoder_hidden_states=prompt.text,
        timestep=torch.full((batch,), sigma),
        return_dict=False,
        **ids,
        **extra,
    )[0]


Denoise = Callable[[int, torch.Tensor, float, Prompt, int], torch.Tensor]


def euler(
    model: torch.nn.Module,
    steps: int,
    conds: list[Prompt],
    denoise: Denoise | None = None,
    batch: int = 1,
) -> list[torch.Tensor]:
    """Flow-matching Euler from sigma 1 to 0; each step calls the model once per prompt (cond and
    uncond as separate calls, as ChromaPipeline does) and averages the velocities. Returns every
    call's output, in order."""
    denoise = denoise or (lambda step, x, sigma, prompt, slot: call(model, x, sigma, prompt))
    x = latent(model, batch)
    sigmas = torch.linspace(1.0, 0.0, steps + 1).tolist()
    outputs = []
    with torch.no_grad():
        for step in range(steps):
            velocities = [
                denoise(step, x, sigmas[step], prompt, slot) for slot, prompt in enumerate(conds)
            ]
            outputs += velocities
            x = x + (sigmas[step + 1] - sigmas[step]) * torch.stack(velocities).mean(0)
    return outputs


def _streams_in(kwargs: dict, args: tuple) -> list[torch.Tensor]:
    hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
    text = kwargs.get("encoder_hidden_states")
    return [hidden] if text is None else [hidden, text]


def _streams_out(output: object) -> list[torch.Tensor]:
    # diffusers blocks return (encoder_hidden_states, hidden_states), or the joined stream
    return [output[1], output[0]] if isinstance(output, tuple) else [output]


class ReferenceRule:
    """The residual rule, by hand, on a diffusers Flux / SD3 / Chroma model."""

    def __init__(self, model: torch.nn.Module, depth: int) -> None:
        stages = [model.transformer_blocks]
        if hasattr(model, "single_transformer_blocks"):
            stages.append(model.single_transformer_blocks)
        self.blocks = [(stage, block) for stage, blocks in enumerate(stages) for block in blocks]
        count = len(self.blocks)
        self.skipped = list(range(depth, count - depth))
        self.model = model

    def full(self, run: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, dict]:
        """Run the model whole; return its output and the per-stage residual sums."""
        sums: dict[int, list[torch.Tensor]] = {}

        def record(stage: int) -> Callable:
            def hook(module, args, kwargs, output):
                pairs = zip(_streams_out(output), _streams_in(kwargs, args), strict=True)
                # SD3's last block ends the text stream (None): it added nothing to it
                deltas = [torch.zeros_like(i) if o is None else o - i for o, i in pairs]
                if stage in sums:
                    sums[stage] = [s + d for s, d in zip(sums[stage], deltas, strict=True)]
                else:
                    sums[stage] = deltas

            return hook

        handles = [
            self.blocks[i][1].register_forward_hook(record(self.blocks[i][0]), with_kwargs=True)
            for i in self.skipped
        ]
        try:
            return run(), sums
        finally:
            for handle in handles:
                handle.remove()

    def cached(self, run: Callable[[], torch.Tensor], sums: dict) -> torch.Tensor:
        """Run the model with the skipped blocks replaced as the rule says."""
        first_of_stage: set[int] = set()
        for i in self.skipped:
            stage, block = self.blocks[i]
            add = sums.get(stage) if stage not in first_of_stage else None
            first_of_stage.add(stage)
            block.forward = _replacement(add)
        try:
            return run()
        finally:
            for i in self.skipped:
                del self.blocks[i][1].forward


def _replacement(add: list[torch.Tensor] | None) -> Callable:
    def skipped_block(hidden_states=None, encoder_hidden_states=None, *args, **kwargs):
        text = [] if encoder_hidden_states is None else [encoder_hidden_states]
        streams = [hidden_states, *text]
        if add is not None:
            streams = [s + a for s, a in zip(streams, add, strict=True)]
        return streams[0] if len(streams) == 1 else (streams[1], streams[0])

    return skipped_block
