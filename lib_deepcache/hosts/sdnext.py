"""SD.Next: a diffusers pipeline whose denoiser runs every pass of a batch in one call.

The denoiser is the pipeline's ``unet`` (SD 1.x/2.x, SDXL) or its ``transformer`` (Flux, SD3,
Chroma). SD.Next calls its scripts once per batch around ``process_diffusers``, which runs the
base pass, the hires pass and the refiner one after another: a :class:`PassWatcher` installed at
``process_batch`` opens a session where each pass begins. The executed steps and the timestep
grid come from the pipeline's scheduler, which the pipeline has set up before its first
denoiser call, read from the timestep the pass starts at (an img2img pass starts part-way down
the schedule, and not every scheduler records where), in the units the denoiser receives.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..engine.clock import same_timestep
from ..engine.denoisers import layout_of
from ..engine.generation import GenerationRun, PassPlan
from ..engine.layout import UnsupportedUNetError
from ..engine.watcher import PassWatcher
from . import webui
from .base import HostAdapter
from .passes import pass_identity, requested_steps

# diffusers' Flux and Chroma pipelines (txt2img, img2img, inpaint, Kontext, control) call their
# transformer with ``timestep / 1000`` after casting the scheduler's timestep to the latents'
# dtype: sigma in [0, 1]. The SD3 pipelines and the UNet ones pass the scheduler's value as is.
_SIGMA_TRANSFORMERS = frozenset({"FluxTransformer2DModel", "ChromaTransformer2DModel"})
_FLOW_SCALE = 1000
_DENOISERS = ("unet", "transformer")

TimestepUnits = Callable[[float], float]


class SdNext(HostAdapter):
    def __init__(self) -> None:
        self._watcher: PassWatcher | None = None

    def on_batch(self, run: GenerationRun, p: Any) -> None:
        pipeline = webui.sd_model()
        denoiser = denoiser_of(pipeline)
        try:
            layout_of(denoiser)  # an unsupported model is reported before anything is installed
        except UnsupportedUNetError as error:
            raise UnsupportedUNetError(f"{type(pipeline).__name__}: {error}") from None
        units = timestep_units(denoiser)
        self._watcher = PassWatcher(run, denoiser, lambda t: plan_for_pass(p, t, units))

    def close(self) -> None:
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.remove()


def is_diffusers_pipeline(model: Any) -> bool:
    """A model object SD.Next samples with: a diffusers pipeline, told by its denoiser module or
    by the ``components`` every ``DiffusionPipeline`` has."""
    if any(isinstance(getattr(model, name, None), torch.nn.Module) for name in _DENOISERS):
        return True
    return isinstance(getattr(model, "components", None), dict)


def denoiser_of(pipeline: Any) -> torch.nn.Module:
    """The module a diffusers pipeline denoises with: its ``unet``, else its ``transformer``."""
    for name in _DENOISERS:
        module = getattr(pipeline, name, None)
        if isinstance(module, torch.nn.Module):
            return module
    raise UnsupportedUNetError(
        f"{type(pipeline).__name__} has neither a unet nor a transformer module to cache"
    )


def timestep_units(denoiser: torch.nn.Module) -> TimestepUnits:
    """How the pipeline turns a scheduler timestep into the ``timestep`` its denoiser receives,
    rounding included: a Flux pipeline in bfloat16 hands its transformer 0.918 for the
    scheduler's 916.67, and the step clock matches the grid to within a few thousandths."""
    if _SIGMA_TRANSFORMERS.isdisjoint(cls.__name__ for cls in type(denoiser).__mro__):
        return float
    dtype = next((p.dtype for p in denoiser.parameters()), torch.float32)

    def to_sigma(timestep: float) -> float:
        value = torch.tensor(timestep, dtype=torch.float32).to(dtype) / _FLOW_SCALE
        return float(value)

    return to_sigma


def plan_for_pass(p: Any, first_timestep: float, units: TimestepUnits = float) -> PassPlan | None:
    """The plan of the pipeline pass starting now (None for the refiner pass, whose denoiser is
    another model and runs uncached); ``first_timestep`` is in the denoiser's units."""
    if getattr(p, "is_refiner_pass", False):
        return None
    name, params = pass_identity(p, p.deepcache_args)
    steps, grid = scheduler_steps(webui.sd_model().scheduler, first_timestep, units)
    return PassPlan(name, params, steps, grid, requested_steps(p))


def scheduler_steps(
    scheduler: Any, first_timestep: float, units: TimestepUnits = float
) -> tuple[int, list[float]]:
    """Steps a diffusers scheduler executes from ``first_timestep`` on, and the timesteps they
    start at, both in the denoiser's units (``units`` converts a scheduler timestep).

    Schedulers of order 2 (Heun, KDPM2, DPM SDE) list every step ``order`` times in
    ``timesteps``: the step's start, then its second evaluation (at the next step's timestep
    for Heun, at an interpolated one for KDPM2), the last step alone. A pass starts on a step
    start (img2img pipelines slice at ``t_start * order``), so every ``order``-th timestep from
    there is a step start.

    PNDM says order 1 but lists more evaluations than steps: its PLMS start evaluates the
    second step's timestep twice, and its Runge-Kutta warm-up (PRK) evaluates each of its first
    three steps four times, twice at a midpoint. Its step grid is the one it was set up on
    (``_timesteps``, one per step); the extra evaluations join a step (12 steps: 12, not 13 or
    15 as the distinct timesteps would count).
    """
    timesteps = [units(float(t)) for t in getattr(scheduler, "timesteps", [])]
    order = max(1, int(getattr(scheduler, "order", 1) or 1))
    # a step start first: Heun repeats each timestep, as a second evaluation and a start
    candidates = [*range(0, len(timesteps), order), *range(len(timesteps))]
    begin = next((i for i in candidates if same_timestep(timesteps[i], first_timestep)), None)
    if begin is None:
        raise ValueError(
            f"{type(scheduler).__name__} has no timestep {first_timestep:g} in its schedule"
        )
    starts = _pndm_step_starts(scheduler)
    if starts is not None:
        grid = [t for t in starts if t < first_timestep or same_timestep(t, first_timestep)]
        return len(grid), grid
    grid = timesteps[begin::order]
    return len(grid), grid


def _pndm_step_starts(scheduler: Any) -> list[float] | None:
    """A PNDM scheduler's step grid, high noise first (None for any other scheduler)."""
    if not hasattr(scheduler, "plms_timesteps"):
        return None
    return sorted((float(t) for t in getattr(scheduler, "_timesteps", [])), reverse=True)


def offer_in_control_tab(title: str) -> None:
    """SD.Next runs extension scripts in its Control tab only if their title is on its list."""
    try:
        import installer
    except ImportError:
        return
    allowed = getattr(installer, "control_extensions", None)
    if isinstance(allowed, list) and title not in allowed:
        allowed.append(title)


CONTROL_API_MESSAGE = (
    "SD.Next's /sdapi/v1/control runs no extension scripts (it drops alwayson_scripts), so"
    " this generation runs without DeepCache; use /sdapi/v1/txt2img or the Control tab"
)
# SD.Next's processing class for every run of its control pipeline
_CONTROL_PROCESSING = "StableDiffusionProcessingControl"


class ControlApiNotice:
    """DeepCache asked for on SD.Next's control API, where no script can run: said once in the
    console and, for each image made while such a request runs, in its infotext (SD.Next's
    global before-process callback still sees the processing object there). The API guard
    calls :meth:`begin` and :meth:`end` around the request."""

    def __init__(self, say_once: Callable[[str], None], error_key: str) -> None:
        self._say_once = say_once
        self._error_key = error_key
        self._running = 0

    def begin(self) -> None:
        self._running += 1
        self._say_once(f"DeepCache: {CONTROL_API_MESSAGE}")

    def end(self) -> None:
        self._running = max(0, self._running - 1)

    def before_process(self, p: Any) -> None:
        if self._running and type(p).__name__ == _CONTROL_PROCESSING:
            p.extra_generation_params[self._error_key] = CONTROL_API_MESSAGE
