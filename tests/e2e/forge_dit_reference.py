"""The oracle of :mod:`tests.e2e.forge_dit_probe`: DeepCache's residual rule for diffusion
transformers (the lead's ENGINE_CONTRACT), written over Forge's own transformer blocks without
the engine.

For ``depth`` d and a stack of n blocks (Flux and Chroma: the double-stream blocks, then the
single-stream ones; SD3's MMDiT: its joint blocks) a cached call runs blocks ``0..d-1`` and
``n-d..n-1`` (none at depth 0). The blocks between are skipped, and the first skipped block of
each stage adds what that stage's skipped blocks added (their output minus their input, per
stream) at the last full call of the same call slot. A full call runs every block and keeps
those residuals.

Everything around the blocks (patchifying, positions, the timestep and text embeddings, the last
layer) is redone here from the model's own sub-modules, the way Forge's ``forward`` does it; a
full call of this loop must give the model's own output, which the probe checks first.
Runs in the Forge host's venv, with Forge's ``backend`` importable.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

Streams = list[torch.Tensor]
BlockCall = Callable[[torch.nn.Module, Streams], Streams]


@dataclass
class Rule:
    """One call's plan: which blocks are skipped, and the residuals of its slot (kept by a full
    call, added back by a cached one), per stage."""

    skipped: frozenset[int]
    full: bool
    residuals: dict[int, Streams] = field(default_factory=dict)

    @classmethod
    def of(cls, blocks: int, depth: int, full: bool, residuals: dict[int, Streams]) -> Rule:
        return cls(frozenset(range(depth, blocks - depth)), full, residuals)


def run_stage(
    rule: Rule,
    stage: int,
    first: int,
    blocks: torch.nn.ModuleList,
    streams: Streams,
    call: BlockCall,
) -> Streams:
    """Blocks ``first..first + len(blocks) - 1`` of the stack, under ``rule``."""
    span = [first + k for k in range(len(blocks)) if first + k in rule.skipped]
    before: Streams = []
    for k, block in enumerate(blocks):
        index = first + k
        if span and index == span[0]:
            if rule.full:
                before = [s.clone() for s in streams]
            else:
                streams = [s + r for s, r in zip(streams, rule.residuals[stage], strict=True)]
        if index in rule.skipped and not rule.full:
            continue
        streams = call(block, streams)
        if rule.full and span and index == span[-1]:
            # a stream ended by the span's last block (SD3's context: None) gained nothing
            rule.residuals[stage] = [
                torch.zeros_like(b) if s is None else s - b
                for s, b in zip(streams, before, strict=True)
            ]
    return streams


def patchify(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) into (B, H/2 * W/2, C * 4) tokens, each a 2x2 patch, channel-major."""
    b, c, h, w = x.shape
    return x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, -1, c * 4)


def unpatchify(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    b, _, d = tokens.shape
    c = d // 4
    grid = tokens.view(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return grid.reshape(b, c, h, w)


def positions(model: torch.nn.Module, x: torch.Tensor, text_tokens: int) -> torch.Tensor:
    """Flux's rotary embedding of the text tokens (all at 0) then the image rows and columns."""
    b, _, h, w = x.shape
    rows, cols = torch.meshgrid(
        torch.arange(h // 2, dtype=x.dtype), torch.arange(w // 2, dtype=x.dtype), indexing="ij"
    )
    image = torch.stack([torch.zeros_like(rows), rows, cols], dim=-1).reshape(1, -1, 3)
    ids = torch.cat([torch.zeros(1, text_tokens, 3, dtype=x.dtype), image], dim=1)
    return model.pe_embedder(ids.repeat(b, 1, 1))


def two_stages(
    model: torch.nn.Module,
    rule: Rule,
    img: torch.Tensor,
    txt: torch.Tensor,
    double: BlockCall,
    single: BlockCall,
) -> torch.Tensor:
    """Flux's and Chroma's stack: double-stream blocks, the text tokens joined in front of the
    image ones, single-stream blocks; the image tokens come out."""
    n_double = len(model.double_blocks)
    img, txt = run_stage(rule, 0, 0, model.double_blocks, [img, txt], double)
    (joined,) = run_stage(
        rule, 1, n_double, model.single_blocks, [torch.cat([txt, img], dim=1)], single
    )
    return joined[:, txt.shape[1] :]


def flux(model, rule: Rule, x, t, context, y, guidance) -> torch.Tensor:
    """Forge's ``IntegratedFluxTransformer2DModel`` under ``rule``."""
    from backend.nn.flux import timestep_embedding

    h, w = x.shape[-2:]
    img = model.img_in(patchify(x))
    vec = model.time_in(timestep_embedding(t, 256).to(img.dtype))
    if model.guidance_embed:
        vec = vec + model.guidance_in(timestep_embedding(guidance, 256).to(img.dtype))
    vec = vec + model.vector_in(y)
    pe = positions(model, x, context.shape[1])

    def double(block, s):
        return list(block(img=s[0], txt=s[1], vec=vec, pe=pe))

    def single(block, s):
        return [block(s[0], vec=vec, pe=pe)]

    img = two_stages(model, rule, img, model.txt_in(context), double, single)
    return unpatchify(model.final_layer(img, vec), h, w)


def chroma(model, rule: Rule, x, t, context) -> torch.Tensor:
    """Forge's ``IntegratedChromaTransformer2DModel`` under ``rule``: its modulations come from
    the distilled guidance layer, one set per block, instead of one vector."""
    from backend.nn.flux import timestep_embedding

    h, w = x.shape[-2:]
    img = model.img_in(patchify(x))
    n_double, n_single = len(model.double_blocks), len(model.single_blocks)
    length = n_double * 12 + n_single * 3 + 2
    timing = torch.cat(
        [timestep_embedding(t, 16), timestep_embedding(torch.zeros_like(t), 16)], dim=1
    )
    index = timestep_embedding(torch.arange(length), 32).unsqueeze(0).repeat(x.shape[0], 1, 1)
    vectors = torch.cat([timing.unsqueeze(1).repeat(1, length, 1), index], dim=-1)
    mods = model.distribute_modulations(
        model.distilled_guidance_layer(vectors.to(img.dtype)), n_single, n_double
    )
    pe = positions(model, x, context.shape[1])
    place = {
        id(b): i
        for blocks in (model.double_blocks, model.single_blocks)
        for i, b in enumerate(blocks)
    }

    def double(block, s):
        i = place[id(block)]
        pair = [mods[f"double_blocks.{i}.img_mod.lin"], mods[f"double_blocks.{i}.txt_mod.lin"]]
        return list(block(img=s[0], txt=s[1], mod=pair, pe=pe))

    def single(block, s):
        i = place[id(block)]
        return [block(s[0], mod=mods[f"single_blocks.{i}.modulation.lin"], pe=pe)]

    img = two_stages(model, rule, img, model.txt_in(context), double, single)
    return unpatchify(model.final_layer(img, mods["final_layer.adaLN_modulation.1"]), h, w)


def mmdit(model, rule: Rule, x, t, context, y) -> torch.Tensor:
    """Forge's ``MMDiTX`` (SD3/3.5) under ``rule``: one stage of joint blocks, streams context
    and image; the last block returns no context (None, which nothing reads)."""
    hw = x.shape[-2:]
    img = model.x_embedder(x) + model.cropped_pos_embed(hw).to(x.dtype)
    c = model.t_embedder(t, dtype=img.dtype) + model.y_embedder(y)

    def joint(block, s):
        return list(block(s[0], s[1], c=c))

    _, img = run_stage(
        rule, 0, 0, model.joint_blocks, [model.context_embedder(context), img], joint
    )
    return model.unpatchify(model.final_layer(img, c), hw=hw)


def replay(
    forward: Callable[..., torch.Tensor],
    model: torch.nn.Module,
    predictor: object,
    calls: list[dict],
    sigmas: list[float],
    depth: int,
    interval: int,
) -> tuple[float, float]:
    """The largest difference between a pass's recorded model calls and the rule's outputs for
    them, and the largest output (its scale).

    The calls are grouped into steps by their noise level (the step's own sigma; a Heun
    correction, evaluated at the next step's sigma, joins that step as the contract's step clock
    has it; a DPM2 midpoint, on no step's sigma, stays in its step) and into slots by their order
    within the step. Uniform schedule over the whole pass:
    a step is full when its index is a multiple of ``interval``, and so is a slot that holds no
    residual yet. Each call goes through ``KModel.apply_model``'s arithmetic around the model.
    """
    step_of = {sigma: i for i, sigma in enumerate(sigmas[:-1])}
    blocks = sum(len(m) for m in _stacks(model))
    memory: dict[int, dict[int, Streams]] = {}
    step, slot, worst, scale = -1, 0, 0.0, 0.0
    for call in calls:
        sigma = call["sigma"]
        now = step_of.get(float(sigma[0]), step)
        slot = slot + 1 if now == step else 0
        step = now
        full = step % interval == 0 or slot not in memory
        residuals = {} if full else memory[slot]
        if full:
            memory[slot] = residuals
        rule = Rule.of(blocks, depth, full, residuals)
        t = predictor.timestep(sigma).float()
        out = forward(model, rule, predictor.calculate_input(sigma, call["x"]), t, call["c"])
        expected = predictor.calculate_denoised(sigma, out.float(), call["x"])
        worst = max(worst, float((expected - call["out"]).abs().max()))
        scale = max(scale, float(call["out"].abs().max()))
    return worst, scale


def _stacks(model: torch.nn.Module) -> list[torch.nn.ModuleList]:
    if hasattr(model, "joint_blocks"):
        return [model.joint_blocks]
    return [model.double_blocks, model.single_blocks]
