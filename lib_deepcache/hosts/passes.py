"""The pass about to sample, as the WebUIs describe it: its name and parameters (every host), and
for the ldm-lineage hosts (AUTOMATIC1111, Forge) its executed steps and timestep grid.

Read from the host's processing object ``p`` and sampler, with the host's own step arithmetic,
so the engine's schedule covers exactly the steps the sampler will execute.
"""

from __future__ import annotations

import logging
from typing import Any

from ..engine.generation import PassPlan
from ..engine.params import DeepCacheParams
from . import webui
from .script_args import FIRST_PASS, HIRES_PASS, ScriptArgs

logger = logging.getLogger("deepcache")

# A1111's samplers that walk a list of integer UNet timesteps (sd_samplers_timesteps)
_TIMESTEPS_SAMPLERS = ("ddim", "ddim_cfgpp", "plms")


def pass_identity(p: Any, args: ScriptArgs) -> tuple[str, DeepCacheParams]:
    """The pass about to sample: its name in the infotext and its parameters."""
    if getattr(p, "is_hr_pass", False):
        return HIRES_PASS, args.hires_pass()
    return FIRST_PASS, args.first


def requested_steps(p: Any) -> int:
    """The step count the user set for the pass about to sample (hires: its own, if set)."""
    if getattr(p, "is_hr_pass", False):
        return int(p.hr_second_pass_steps or p.steps)
    return int(p.steps)


def ldm_pass_plan(p: Any, args: ScriptArgs) -> PassPlan:
    """Parameters, executed steps and timestep grid of the pass about to sample."""
    name, params = pass_identity(p, args)
    hires = bool(getattr(p, "is_hr_pass", False))
    if hires or hasattr(p, "init_images"):  # an img2img-like pass
        requested = (p.hr_second_pass_steps or p.steps) if hires else None
        steps, t_enc = webui.setup_img2img_steps(p, requested)
        executed = t_enc + 1
    else:
        steps, t_enc, executed = p.steps, None, p.steps
    asked = requested_steps(p)
    timesteps_plan = _timesteps_sampler_plan(p, steps, t_enc)
    if timesteps_plan is not None:
        return PassPlan(name, params, max(1, len(timesteps_plan)), timesteps_plan, asked)
    return PassPlan(name, params, max(1, executed), _timestep_grid(p, steps, t_enc), asked)


def _timesteps_sampler_plan(p: Any, steps: int, t_enc: int | None) -> list[float] | None:
    """DDIM / PLMS: the timesteps their steps call the UNet at, or None for other samplers.

    They walk ``get_timesteps(p, steps)`` (cut to its first ``t_enc`` entries for img2img) from
    the last entry down to the second, one step per entry: ``t_enc - 1`` steps in img2img (5 of
    12 at denoise 0.5), and one fewer than ``steps`` in txt2img where 1000 is a multiple of
    ``steps``. PLMS's first step also evaluates the next step's timestep; on the grid, that call
    belongs to the next step.
    """
    sampler = getattr(p, "sampler", None)
    funcname = getattr(sampler, "funcname", None)  # the sampling function itself, or its name
    if getattr(funcname, "__name__", funcname) not in _TIMESTEPS_SAMPLERS:
        return None
    try:
        timesteps = [float(t) for t in sampler.get_timesteps(p, steps)]
    except Exception as error:  # an unusual sampler: fall back to the step clock alone
        logger.debug("DeepCache: no timesteps from this sampler: %s", error)
        return None
    if t_enc is not None:
        timesteps = timesteps[:t_enc]
    return timesteps[1:][::-1]


def _timestep_grid(p: Any, steps: int, t_enc: int | None) -> list[float] | None:
    """The UNet timesteps at which the k-diffusion sampler's steps start, or None if unknown.

    Computed with the sampler's own sigma schedule and sigma-to-timestep conversion (A1111's
    k-diffusion wrapper has ``sigma_to_t``; Forge's predictor, like ComfyUI's model sampling,
    has ``timestep``), so the midpoint evaluations of DPM2 / DPM++ 2S / DPM++ SDE are recognised
    inside their step.
    """
    sampler = getattr(p, "sampler", None)
    if not hasattr(sampler, "get_sigmas"):
        return None
    to_timestep = _sigma_to_timestep(p, sampler)
    if to_timestep is None:
        return None
    try:
        sigmas = sampler.get_sigmas(p, steps)
        if t_enc is not None:
            sigmas = sigmas[steps - t_enc - 1 :]
        return [float(t) for t in to_timestep(sigmas[:-1])]
    except Exception as error:  # an unusual scheduler: fall back to timestep-only detection
        logger.debug("DeepCache: no timestep grid for this sampler: %s", error)
        return None


def _sigma_to_timestep(p: Any, sampler: Any) -> Any:
    wrap = getattr(getattr(sampler, "model_wrap_cfg", None), "inner_model", None)
    wrap = wrap or getattr(sampler, "model_wrap", None)
    if hasattr(wrap, "sigma_to_t"):
        return lambda sigmas: wrap.sigma_to_t(sigmas.to(wrap.sigmas.device))
    forge_objects = getattr(p.sd_model, "forge_objects", None)
    predictor = getattr(
        getattr(getattr(forge_objects, "unet", None), "model", None), "predictor", None
    )
    if hasattr(predictor, "timestep"):
        return predictor.timestep
    return None
