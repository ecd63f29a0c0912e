"""The interval ``auto`` runs with, per layout family: one table, read by the parameters when
they meet the model (:meth:`.params.DeepCacheParams.resolved`)."""

from __future__ import annotations

# SDXL's UNet has 9 input blocks (SD1.x/2.x and the SDXL refiner: 12).
SDXL_BLOCKS = 9
# Layout families of the diffusion transformers (see engine/stack.py) and their auto interval:
# the equal-cost study for transformers (docs/quality.md, "Transformers") found interval 2 at
# depth 0 (the whole stack skipped, 1.99x) closer to the uncached image than classic DeepCache
# at interval 3 (2.01x) with both samplers; interval 3 drifts below that bar without forecast.
TRANSFORMER_FAMILIES = ("flux", "chroma", "sd3")
TRANSFORMER_INTERVAL = 2


def auto_interval(family: str, num_blocks: int) -> int:
    """The interval ``auto`` runs with on a model of this layout family with ``num_blocks``
    blocks (UNets: input blocks): the fastest setting that keeps the fidelity of SD1.x at
    interval 3 (docs/quality.md "Per-model defaults"): 3 for SD1.x/2.x, 2 for SDXL, whose
    shallow path is a smaller share of the UNet and whose cached steps drift about 2.3 dB
    further at interval 3. Transformers (Flux, Chroma, SD3): see :data:`TRANSFORMER_INTERVAL`."""
    if family in TRANSFORMER_FAMILIES:
        return TRANSFORMER_INTERVAL
    return 2 if num_blocks == SDXL_BLOCKS else 3
