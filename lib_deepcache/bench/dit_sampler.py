"""Sampling the transformer fixture, with the FLOPs each run really computed.

Every caching method on a transformer skips different work (whole blocks, attention modules,
whole steps), so a run's cost is measured, not derived from a formula: the run executes under
``torch.utils.flop_counter.FlopCounterMode``, which counts every matrix product that actually
ran. On the CPU, scaled-dot-product attention dispatches to a kernel the counter has no formula
for (it would count 0), so that kernel gets the formula torch uses for its GPU attention kernels
(``sdpa_flop_count``: two batched matmuls). Elementwise work (norms, the caches' own distance
checks) is not counted, as FLOP counts never do. A method's FLOP speedup is the uncached run's
count over its own, on the same seeds and steps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from . import dit_fixture
from .harness import SAMPLERS

# A method: called with the sampler just before a run, returns the context the run happens in.
Method = Callable[["DitSampler", int], AbstractContextManager]


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


FLOP_FORMULAS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops,
}


@dataclass(frozen=True)
class DitRun:
    images: torch.Tensor  # (N, 3, 32, 32) in [-1, 1]
    flops: int  # matrix-product FLOPs the whole run computed
    calls: int  # transformer calls the sampler made


class DitSampler:
    """The trained transformer fixture, sampled by k-diffusion samplers on Flux's schedule.

    ``timestep`` is the current call's timestep on the 0-1000 scale the diffusers pipelines
    report as ``current_timestep`` (what the diffusers hooks' callbacks read).
    """

    def __init__(self, model: torch.nn.Module | None = None) -> None:
        self.model = model if model is not None else dit_fixture.load()
        self.denoiser = dit_fixture.FlowDenoiser(self.model)
        self.timestep = 1000.0

    def sigmas(self, steps: int) -> torch.Tensor:
        return dit_fixture.flow_sigmas(steps)

    def timestep_grid(self, steps: int) -> list[float]:
        """The ``timestep`` values (sigma) the transformer receives at each step's start."""
        return [float(s) for s in self.sigmas(steps)[:-1]]

    def sample(
        self, seeds: Sequence[int], steps: int, sampler: str, method: Method | None = None
    ) -> DitRun:
        """One batched run over all seeds, under ``method`` (None: uncached)."""
        sigmas = self.sigmas(steps)
        size = dit_fixture.IMAGE_SIZE
        noise = torch.stack(
            [torch.randn(3, size, size, generator=torch.Generator().manual_seed(s)) for s in seeds]
        )
        calls = 0

        def model(x: torch.Tensor, sigma: torch.Tensor, **_: object) -> torch.Tensor:
            nonlocal calls
            calls += 1
            self.timestep = float(sigma.reshape(-1)[0]) * 1000
            return self.denoiser(x, sigma)

        context = method(self, steps) if method is not None else nullcontext()
        counter = FlopCounterMode(display=False, custom_mapping=FLOP_FORMULAS)
        torch.manual_seed(seeds[0])  # the SDE samplers draw their noise from the global RNG
        with torch.no_grad(), counter, context, self._cache_context():
            images = SAMPLERS[sampler](model, noise * sigmas[0], sigmas, disable=True)
        return DitRun(images.clamp(-1, 1), counter.get_total_flops(), calls)

    def _cache_context(self) -> AbstractContextManager:
        """diffusers' stateful cache hooks keep their state per named context, which pipelines
        open around each denoiser call; one context for the run (the fixture has no CFG)."""
        opener = getattr(self.model, "cache_context", None)
        return opener("cond") if opener is not None else nullcontext()
