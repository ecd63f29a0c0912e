"""The transformer caches users can pick instead of DeepCache, run as their libraries ship them.

Each is a :data:`~.dit_sampler.Method` factory taking one knob (a threshold, or an integer
interval) that the study turns to match a FLOP speedup:

* diffusers 0.42's ``hooks``, applied with ``FluxTransformer2DModel.enable_cache`` and removed with
  ``disable_cache`` after each run (so every run starts with fresh state):
  ``pab`` (``PyramidAttentionBroadcastConfig``: every attention module recomputed every ``knob``
  calls, reused between; all timesteps), ``fastercache`` (``FasterCacheConfig``: the same
  attention reuse with its weighted extrapolation; ``is_guidance_distilled`` since the fixture
  has no CFG batch to drop; its shipped timestep window (-1, 681), since a window holding the
  first call fails in diffusers 0.42: the hook skips its first call, with nothing cached),
  ``fbcache`` (``FirstBlockCacheConfig``, threshold),
  ``taylorseer`` (``TaylorSeerCacheConfig`` lite mode, first order, float32 factors: blocks
  skipped and the output projection extrapolated on cached steps; the knob is its
  ``cache_interval``, warm-up 3 steps as shipped) and ``magcache`` (``MagCacheConfig``, threshold;
  its magnitude ratios calibrated per sampler on seeds outside the study's, with the library's
  own ``calibrate=True`` run, as its documentation asks);
* cache-dit (``cache_dit.enable_cache`` with ``DBCacheConfig`` and the
  ``TaylorSeerCalibratorConfig`` calibrator): ``cache-dit``, threshold = its
  ``residual_diff_threshold``, first and last block always computed (``Fn = Bn = 1``, the
  analogue of DeepCache's depth 0 on a 9-block model), warm-up 4 steps;
* TeaCache, which no library ships for diffusers' Flux: :mod:`.teacache`, written here.
"""

from __future__ import annotations

import ast
import contextlib
import copy
import io
from collections.abc import Callable, Iterator, Sequence

import torch

from .dit_sampler import DitSampler, Method
from .teacache import TeaCache

MAGCACHE_SEEDS = (1000, 1001, 1002, 1003)  # calibration seeds, never among the study's
FULL_RANGE = (-1, 1001)  # every timestep (diffusers' 0-1000 scale) inside the reuse window
WARMUP = 3  # TaylorSeer's shipped disable_cache_before_step


@contextlib.contextmanager
def _diffusers_cache(sampler: DitSampler, config: object) -> Iterator[None]:
    sampler.model.enable_cache(config)
    try:
        yield
    finally:
        sampler.model.disable_cache()


def pab(block_skip: float) -> Method:
    from diffusers import PyramidAttentionBroadcastConfig

    def method(sampler: DitSampler, steps: int) -> contextlib.AbstractContextManager:
        config = PyramidAttentionBroadcastConfig(
            spatial_attention_block_skip_range=int(block_skip),
            spatial_attention_timestep_skip_range=FULL_RANGE,
            current_timestep_callback=lambda: sampler.timestep,
        )
        return _diffusers_cache(sampler, config)

    return method


def fastercache(block_skip: float) -> Method:
    from diffusers import FasterCacheConfig

    def method(sampler: DitSampler, steps: int) -> contextlib.AbstractContextManager:
        config = FasterCacheConfig(
            spatial_attention_block_skip_range=int(block_skip),
            current_timestep_callback=lambda: sampler.timestep,
            attention_weight_callback=lambda _: 0.5,
            tensor_format="BCHW",
            is_guidance_distilled=True,
        )
        return _diffusers_cache(sampler, config)

    return method


def fbcache(threshold: float) -> Method:
    from diffusers import FirstBlockCacheConfig

    def method(sampler: DitSampler, steps: int) -> contextlib.AbstractContextManager:
        return _diffusers_cache(sampler, FirstBlockCacheConfig(threshold=threshold))

    return method


def taylorseer(interval: float) -> Method:
    from diffusers import TaylorSeerCacheConfig

    def method(sampler: DitSampler, steps: int) -> contextlib.AbstractContextManager:
        config = TaylorSeerCacheConfig(
            cache_interval=int(interval),
            disable_cache_before_step=WARMUP,
            max_order=1,
            taylor_factors_dtype=torch.float32,
            use_lite_mode=True,
        )
        return _diffusers_cache(sampler, config)

    return method


def magcache(ratios: Sequence[float], max_skip: int) -> Callable[[float], Method]:
    """MagCache with ``ratios`` from :func:`mag_ratios`, at a threshold."""
    from diffusers import MagCacheConfig

    def at(threshold: float) -> Method:
        def method(sampler: DitSampler, steps: int) -> contextlib.AbstractContextManager:
            config = MagCacheConfig(
                threshold=threshold,
                max_skip_steps=max_skip,
                num_inference_steps=steps,
                mag_ratios=list(ratios),
            )
            return _diffusers_cache(sampler, config)

        return method

    return at


def mag_ratios(sampler: DitSampler, steps: int, name: str) -> list[float]:
    """MagCache's calibration run on :data:`MAGCACHE_SEEDS`; the library prints the ratios
    ("copy these values"), which are read back from what it printed."""
    from diffusers import MagCacheConfig

    config = MagCacheConfig(calibrate=True, num_inference_steps=steps)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        sampler.sample(list(MAGCACHE_SEEDS), steps, name, lambda s, _: _diffusers_cache(s, config))
    lines = [line for line in printed.getvalue().splitlines() if line.startswith("[")]
    return [float(r) for r in ast.literal_eval(lines[-1])]


def cache_dit(threshold: float) -> Method:
    @contextlib.contextmanager
    def enabled(sampler: DitSampler, steps: int) -> Iterator[None]:
        """On a copy of the model: cache-dit patches the transformer's forward for good
        (``disable_cache`` leaves it patched, and a later diffusers hook then fails)."""
        import cache_dit as library

        original = sampler.denoiser.model
        model = copy.deepcopy(original)
        config = library.DBCacheConfig(
            Fn_compute_blocks=1,
            Bn_compute_blocks=1,
            residual_diff_threshold=threshold,
            max_warmup_steps=4,
            num_inference_steps=steps,
        )
        library.enable_cache(
            model,
            cache_config=config,
            calibrator_config=library.TaylorSeerCalibratorConfig(taylorseer_order=1),
        )
        sampler.denoiser.model = model
        try:
            yield
        finally:
            sampler.denoiser.model = original

    return enabled


def teacache(coefficients: Sequence[float]) -> Callable[[float], Method]:
    def at(threshold: float) -> Method:
        return lambda sampler, steps: TeaCache(sampler.model, threshold, coefficients)

    return at


def cache_dit_available() -> bool:
    try:
        import cache_dit  # noqa: F401
    except ImportError:
        return False
    return True
