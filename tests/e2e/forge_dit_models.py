"""Forge's own diffusion transformers at a small config, wrapped as Forge's loader wraps them.

Forge's loader builds Flux and Chroma only at full size (its model detection fixes width 3072
and 19 + 38 blocks), so :mod:`tests.e2e.forge_dit_probe` builds the classes directly, with
seeded weights: ``IntegratedFluxTransformer2DModel`` (``backend/nn/flux.py``),
``IntegratedChromaTransformer2DModel`` (``backend/nn/chroma.py``) and ``MMDiTX``
(``backend/nn/mmditx.py``). Each is given the attributes Forge's loader sets
(``backend/loader.py``: storage and computation dtype, devices) and the predictor its diffusion
engine uses (``backend/diffusion_engine/{flux,chroma,sd35}.py``), and goes into Forge's
``UnetPatcher.from_model``, which wraps it in a ``KModel``. The conditionings have the shapes and
keys Forge's engines return (Flux: ``crossattn``, ``vector``, ``guidance``; Chroma: the T5 tensor;
SD3: ``crossattn``, ``vector``), one per prompt as Forge's prompt parser stores them.

Runs in the Forge host's venv, with Forge's ``backend`` importable.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from tests.e2e import forge_dit_reference as reference

TEXT_WIDTH = 48  # the text encoder's width (Flux/Chroma: T5; SD3: CLIP-L/G + T5, padded)
VECTOR_WIDTH = 32  # the pooled text vector (Flux: CLIP-L; SD3: CLIP-L + CLIP-G)
TEXT_TOKENS = 6
LATENT = (16, 8, 8)  # 16 latent channels, as Flux's and SD3's VAE; 4x4 patches of 2x2
# 3 double-stream + 5 single-stream blocks: depth 0 skips the whole stack (both stages), depth 3
# only single-stream ones (blocks 3 and 4; the double-stream stage then runs whole)
FLUX_SIZE = {
    "in_channels": 16, "vec_in_dim": VECTOR_WIDTH, "context_in_dim": TEXT_WIDTH,
    "hidden_size": 64, "mlp_ratio": 4.0, "num_heads": 4, "depth": 3,
    "depth_single_blocks": 5, "axes_dim": [4, 6, 6], "theta": 10000, "qkv_bias": True,
}  # fmt: skip
# MMDiTX fixes the width at 64 per block and one head per block: 5 blocks, width 320 (an MLP of
# twice the width, not four times, to keep the probe quick)
MMDIT_SIZE = {
    "patch_size": 2, "in_channels": 16, "depth": 5, "mlp_ratio": 2.0,
    "adm_in_channels": VECTOR_WIDTH,
    "context_embedder_config": {
        "target": "torch.nn.Linear", "params": {"in_features": TEXT_WIDTH, "out_features": 320},
    },
    "pos_embed_max_size": 8, "num_patches": 64, "qk_norm": "rms", "input_size": None,
}  # fmt: skip


@dataclass(frozen=True)
class Family:
    """One transformer family: how to build it small, its predictor, one prompt's conditioning,
    its block count, the depths the probe caches at, and its reference forward."""

    name: str
    build: Callable[[], torch.nn.Module]
    predictor: Callable[[], Any]
    cond: Callable[[torch.Generator], Any]
    blocks: int
    depths: tuple[int, int]
    forward: Callable[..., torch.Tensor]


def loaded_as_forge_does(model: torch.nn.Module) -> torch.nn.Module:
    """The attributes ``backend/loader.py`` sets on a model it built (fp32 on the CPU here)."""
    model.eval().requires_grad_(False)
    model.storage_dtype = model.computation_dtype = torch.float32
    model.load_device = model.initial_device = model.offload_device = torch.device("cpu")
    return model


def _seeded(seed: int, make: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = make()
    for name, buffer in sorted(model.named_buffers()):
        if name.endswith("pos_embed"):  # MMDiT's fixed positions: zeros until a checkpoint loads
            buffer.copy_(torch.randn(buffer.shape) * 0.5)
    for module in model.modules():
        # MMDiT's RMSNorm allocates its scale with torch.empty and leaves it to the checkpoint
        if type(module).__name__ == "RMSNorm" and module.weight is not None:
            module.weight.data = 1.0 + 0.05 * torch.randn(module.weight.shape)
    return loaded_as_forge_does(model)


def build_flux() -> torch.nn.Module:
    from backend.nn.flux import IntegratedFluxTransformer2DModel

    return _seeded(1, lambda: IntegratedFluxTransformer2DModel(**FLUX_SIZE, guidance_embed=True))


def build_chroma() -> torch.nn.Module:
    from backend.nn.chroma import IntegratedChromaTransformer2DModel

    size = dict(FLUX_SIZE, guidance_out_dim=64, guidance_hidden_dim=32, guidance_n_layers=2)
    return _seeded(2, lambda: IntegratedChromaTransformer2DModel(**size))


def build_mmdit() -> torch.nn.Module:
    from backend.nn.mmditx import MMDiTX

    return _seeded(3, lambda: MMDiTX(**MMDIT_SIZE))


def flux_dev_predictor() -> Any:
    from backend.modules.k_prediction import PredictionFlux

    return PredictionFlux(
        seq_len=4096, base_seq_len=256, max_seq_len=4096, base_shift=0.5, max_shift=1.15
    )


def chroma_predictor() -> Any:
    from backend.modules.k_prediction import PredictionFlux

    return PredictionFlux(mu=1.0)


def sd3_predictor() -> Any:
    from backend.modules.k_prediction import PredictionDiscreteFlow

    return PredictionDiscreteFlow(shift=3.0)


def _text(gen: torch.Generator) -> torch.Tensor:
    return torch.randn(TEXT_TOKENS, TEXT_WIDTH, generator=gen)


def flux_cond(gen: torch.Generator) -> dict[str, torch.Tensor]:
    vector = torch.randn(VECTOR_WIDTH, generator=gen)
    return {"crossattn": _text(gen), "vector": vector, "guidance": torch.tensor(3.5)}


def chroma_cond(gen: torch.Generator) -> torch.Tensor:
    return _text(gen)


def sd3_cond(gen: torch.Generator) -> dict[str, torch.Tensor]:
    return {"crossattn": _text(gen), "vector": torch.randn(VECTOR_WIDTH, generator=gen)}


FAMILIES = (
    Family(
        "flux", build_flux, flux_dev_predictor, flux_cond, 8, (0, 3),
        lambda m, rule, x, t, c: reference.flux(
            m, rule, x, t, c["c_crossattn"], c["y"], c["guidance"]
        ),
    ),
    Family(
        "chroma", build_chroma, chroma_predictor, chroma_cond, 8, (0, 3),
        lambda m, rule, x, t, c: reference.chroma(m, rule, x, t, c["c_crossattn"]),
    ),
    Family(
        "sd3", build_mmdit, sd3_predictor, sd3_cond, 5, (0, 1),
        lambda m, rule, x, t, c: reference.mmdit(m, rule, x, t, c["c_crossattn"], c["y"]),
    ),
)  # fmt: skip


def patcher_for(family: Family, model: torch.nn.Module) -> Any:
    """Forge's ``UnetPatcher`` (a ``KModel`` inside) around ``model``, as its engines make it."""
    from backend.patcher.unet import UnetPatcher

    return UnetPatcher.from_model(
        model=model, diffusers_scheduler=None, k_predictor=family.predictor(), config=None
    )
