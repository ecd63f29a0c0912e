"""DeepCache for AUTOMATIC1111, Forge and SD.Next: the accordion, infotext, API guard and X/Y/Z
axes, and how each host's passes reach the engine.

A thin adapter: it turns the host's controls, API args and processing object into
:class:`ScriptArgs` and :class:`PassPlan`s and hands them to :class:`GenerationRun`
(``lib_deepcache``), which owns every hook on the UNet. The WebUI puts this extension's folder on
``sys.path`` while it imports this file, so ``lib_deepcache`` is imported at the top.

Hosts, told apart by the model object they sample with:

* AUTOMATIC1111 (ldm/sgm ``UNetModel`` at ``sd_model.model.diffusion_model``): the UNet is hooked
  per pass in ``process_before_every_sampling`` (1.10+) or ``process_batch``/``before_hr``.
* Forge (``sd_model.forge_objects.unet``, a UNet patcher): per pass, the patcher is cloned with
  DeepCache's model-function wrapper in ``process_before_every_sampling``.
* SD.Next (a diffusers pipeline with ``unet``): no hook between passes, so a watcher installed in
  ``process_batch`` opens a session at the start of each pipeline pass.
* Anything else: said once in the console and in every image's infotext; generation runs
  uncached.
"""

from __future__ import annotations

import importlib.util
import logging
from enum import Enum
from typing import Any

import gradio as gr
import torch
from modules import script_callbacks, scripts, sd_samplers_common, shared

from lib_deepcache import api_guard, console, title_clash, xyz_axes
from lib_deepcache.generation import GenerationRun, PassPlan
from lib_deepcache.layout import UnsupportedUNetError, layout_of
from lib_deepcache.params import MAX_DEPTH, SCHEDULES, DeepCacheParamError, DeepCacheParams
from lib_deepcache.pipeline import PassWatcher, scheduler_steps
from lib_deepcache.script_args import (
    ARG_NAMES,
    INFOTEXT_HIRES_KEY,
    INFOTEXT_KEY,
    INFOTEXT_STEPS_KEY,
    ScriptArgs,
)
from lib_deepcache.session import SessionConflictError
from lib_deepcache.unet_patcher import diffusion_model_of, patch_unet_patcher

logger = logging.getLogger("deepcache")

ERROR_KEY = "DeepCache error"

# The WebUI runs one generation at a time; this is it (None when idle).
_run: GenerationRun | None = None
_watcher: PassWatcher | None = None
# Unsupported-model messages already printed to the console (each is printed once).
_reported: set[str] = set()
_xyz_done = False  # the X/Y/Z axes are added once, before the first UI component


class Host(Enum):
    A1111 = "AUTOMATIC1111"
    FORGE = "Forge"
    SDNEXT = "SD.Next"
    UNKNOWN = "unknown"


def detect_host(model: Any) -> Host:
    """Which WebUI's model object this is; the same extension runs on all three."""
    if getattr(model, "forge_objects", None) is not None:
        return Host.FORGE
    if hasattr(getattr(model, "model", None), "diffusion_model"):
        return Host.A1111
    if isinstance(getattr(model, "unet", None), torch.nn.Module):
        return Host.SDNEXT
    return Host.UNKNOWN


def _close_run() -> GenerationRun | None:
    global _run, _watcher
    run, _run = _run, None
    watcher, _watcher = _watcher, None
    if watcher is not None:
        watcher.remove()
    if run is not None:
        run.close()
    return run


def _host_has_per_pass_hook() -> bool:
    """A1111 >= 1.10 calls this hook before every sampler call (first, hires pass, img2img)."""
    return "process_before_every_sampling" in vars(scripts.Script)


def _current_unet() -> Any:
    """The UNet of the model sampling right now (the refiner replaces ``shared.sd_model``)."""
    try:
        return shared.sd_model.model.diffusion_model
    except AttributeError:
        raise UnsupportedUNetError(
            f"{type(shared.sd_model).__name__} has no model.diffusion_model"
        ) from None


def _checkpoint_id() -> str | None:
    """The checkpoint the model holds now: A1111 loads a refiner of the base's config into the
    same model object, so only this tells the refiner's weights from the base's."""
    info = getattr(shared.sd_model, "sd_checkpoint_info", None)
    return getattr(info, "filename", None)


def _is_img2img_pass(p: Any) -> bool:
    return bool(getattr(p, "is_hr_pass", False)) or hasattr(p, "init_images")


def _pass_identity(p: Any, args: ScriptArgs) -> tuple[str, bool, DeepCacheParams]:
    """The pass about to sample: its name, whether it is the hires pass, its parameters."""
    if getattr(p, "is_hr_pass", False):
        return "hires", True, args.hires_pass()
    return "first pass", False, args.first


def _pass_plan(p: Any, args: ScriptArgs) -> PassPlan:
    """Parameters, executed steps and timestep grid of the pass about to sample."""
    name, hires, params = _pass_identity(p, args)
    if _is_img2img_pass(p):
        requested = (p.hr_second_pass_steps or p.steps) if hires else None
        steps, t_enc = sd_samplers_common.setup_img2img_steps(p, requested)
        executed = t_enc + 1
    else:
        steps, t_enc, executed = p.steps, None, p.steps
    timesteps_plan = _timesteps_sampler_plan(p, steps, t_enc)
    if timesteps_plan is not None:
        return PassPlan(name, params, max(1, len(timesteps_plan)), timesteps_plan)
    return PassPlan(name, params, max(1, executed), _timestep_grid(p, steps, t_enc))


# A1111's samplers that walk a list of integer UNet timesteps (sd_samplers_timesteps)
_TIMESTEPS_SAMPLERS = ("ddim", "ddim_cfgpp", "plms")


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


def _diffusers_pass_plan(p: Any, args: ScriptArgs, first_timestep: float) -> PassPlan | None:
    """SD.Next: the plan of the pipeline pass starting now (None for its refiner pass, whose
    UNet is another model)."""
    if getattr(p, "is_refiner_pass", False):
        return None
    name, _, params = _pass_identity(p, args)
    steps, grid = scheduler_steps(shared.sd_model.scheduler, first_timestep)
    return PassPlan(name, params, steps, grid)


class DeepCacheScript(scripts.Script):
    def title(self) -> str:
        return "DeepCache"

    def show(self, is_img2img: bool) -> Any:
        return scripts.AlwaysVisible

    # ----------------------------------------------------------------- UI
    def ui(self, is_img2img: bool) -> list[Any]:
        defaults = ScriptArgs.defaults()
        first, hires = defaults.first, defaults.hires
        slider = self._slider
        with _accordion(self.elem_id) as enabled:
            with gr.Row():
                interval = slider("interval", "Cache interval", 1, 10, 1, first.interval)
                depth = slider("depth", "Cache depth", 0, MAX_DEPTH, 1, first.depth)
            with gr.Row():
                start = slider("start", "Cache start", 0.0, 1.0, 0.01, first.start)
                end = slider("end", "Cache end", 0.0, 1.0, 0.01, first.end)
            schedule = gr.Radio(
                list(SCHEDULES),
                value=first.schedule,
                label="Refresh schedule",
                elem_id=self.elem_id("schedule"),
            )
            with gr.Row():
                threshold = slider(
                    "threshold", "Adaptive threshold", 0.0, 1.0, 0.01, first.threshold
                )
                max_cached = slider("max_cached", "Max cached steps", 1, 10, 1, first.max_cached)
            with gr.Group(visible=not is_img2img, elem_id=self.elem_id("hires_group")):
                hires_enabled = gr.Checkbox(
                    value=hires.enabled,
                    label="Cache the hires fix pass",
                    elem_id=self.elem_id("hires_enabled"),
                )
                with gr.Row():
                    hires_interval = slider(
                        "hires_interval", "Hires cache interval", 1, 10, 1, hires.interval
                    )
                    hires_depth = slider(
                        "hires_depth", "Hires cache depth", 0, MAX_DEPTH, 1, hires.depth
                    )
        controls = [
            enabled,
            interval,
            depth,
            start,
            end,
            schedule,
            hires_enabled,
            hires_interval,
            hires_depth,
            threshold,
            max_cached,
        ]
        self.infotext_fields = [
            (control, _paste_value(name)) for control, name in zip(controls, ARG_NAMES, strict=True)
        ]
        self.paste_field_names = [INFOTEXT_KEY, INFOTEXT_HIRES_KEY]
        return controls

    def _slider(
        self, name: str, label: str, low: float, high: float, step: float, value: float
    ) -> Any:
        return gr.Slider(low, high, value=value, step=step, label=label, elem_id=self.elem_id(name))

    # ----------------------------------------------------------------- generation
    def process(self, p: Any, *args: Any) -> None:
        """Parse once per generation (and per X/Y/Z cell, which re-runs ``process``)."""
        _close_run()  # a generation that died without postprocess must not stay hooked
        # X/Y/Z cells are shallow copies sharing one dict: drop what an earlier cell wrote.
        for key in (INFOTEXT_KEY, INFOTEXT_HIRES_KEY, INFOTEXT_STEPS_KEY, ERROR_KEY):
            p.extra_generation_params.pop(key, None)
        try:
            overrides = getattr(p, xyz_axes.OVERRIDES_ATTR, {})
            parsed = ScriptArgs.from_args(args).with_overrides(overrides)
        except DeepCacheParamError as error:
            p.extra_generation_params[ERROR_KEY] = str(error)
            logger.error("%s; this generation runs without DeepCache", error)
            parsed = ScriptArgs.defaults()
        p.deepcache_args = parsed
        p.extra_generation_params.update(parsed.infotext(bool(getattr(p, "enable_hr", False))))
        if parsed.enabled:
            _unhook_on_close(p)

    def before_process_batch(self, p: Any, *args: Any, **kwargs: Any) -> None:
        global _run
        _close_run()
        if getattr(p, "deepcache_args", ScriptArgs.defaults()).enabled:
            _run = GenerationRun()

    def process_batch(self, p: Any, *args: Any, **kwargs: Any) -> None:
        if _run is not None and detect_host(shared.sd_model) is Host.SDNEXT:
            self._watch_pipeline(p)
        elif not _host_has_per_pass_hook():
            self._begin_pass(p)

    def process_before_every_sampling(self, p: Any, *args: Any, **kwargs: Any) -> None:
        self._begin_pass(p)

    def before_hr(self, p: Any, *args: Any) -> None:
        if not _host_has_per_pass_hook():
            self._begin_pass(p)

    def postprocess_batch(self, p: Any, *args: Any, **kwargs: Any) -> None:
        run = _close_run()
        if run is not None and run.passes:
            p.extra_generation_params[INFOTEXT_STEPS_KEY] = run.counts_infotext()

    def postprocess(self, p: Any, processed: Any, *args: Any) -> None:
        _close_run()

    def _begin_pass(self, p: Any) -> None:
        run = _run
        if run is None:
            return
        try:
            host = detect_host(shared.sd_model)
            if host is Host.FORGE:
                _begin_forge_pass(run, p)
            elif host is Host.A1111:
                plan = _pass_plan(p, p.deepcache_args)
                run.begin_pass(_current_unet(), plan, model_id=_checkpoint_id())
            elif host is not Host.SDNEXT:  # SD.Next's passes are handled by the watcher
                name = type(shared.sd_model).__name__
                raise UnsupportedUNetError(
                    f"{name} is not a model of AUTOMATIC1111, Forge or SD.Next"
                )
        except SessionConflictError:
            _close_run()
            p.extra_generation_params[ERROR_KEY] = "another DeepCache copy is already active"
            logger.warning(
                "DeepCache: another copy of the extension hooks this UNet; this one stays off"
            )
        except UnsupportedUNetError as error:
            _report_unsupported(p, error)

    def _watch_pipeline(self, p: Any) -> None:
        global _watcher
        unet = shared.sd_model.unet
        try:
            layout_of(unet)
        except UnsupportedUNetError as error:
            _report_unsupported(p, error)
            return
        _watcher = PassWatcher(_run, unet, lambda t: _diffusers_pass_plan(p, p.deepcache_args, t))


def _begin_forge_pass(run: GenerationRun, p: Any) -> None:
    """Forge: a fresh patcher clone per pass carries the session; Forge drops it afterwards."""
    forge_objects = p.sd_model.forge_objects
    patcher = forge_objects.unet
    session = run.begin_pass(
        diffusion_model_of(patcher), _pass_plan(p, p.deepcache_args), attach=False
    )
    if session is not None:
        forge_objects.unet = patch_unet_patcher(patcher, session)


def _report_unsupported(p: Any, error: Exception) -> None:
    """Unknown host or model: once in the console, in every image's infotext, no caching."""
    _close_run()
    message = f"unsupported model ({error})"
    p.extra_generation_params[ERROR_KEY] = message
    if message not in _reported:
        _reported.add(message)
        logger.warning("DeepCache: %s; generating without DeepCache", message)


def _unhook_on_close(p: Any) -> None:
    """The WebUI closes ``p`` in a ``finally`` even when sampling raised (out of memory, say),
    while ``postprocess`` only runs on success: unhook there too."""
    host_close = getattr(p, "close", None)
    if host_close is None:
        return

    def close() -> None:
        _close_run()
        host_close()

    p.close = close


def _accordion(elem_id: Any) -> Any:
    """An accordion with the enable checkbox in its header where the WebUI has one (A1111 and
    Forge >= 1.7). SD.Next keeps an ``InputAccordion`` class for old extensions but marks it
    unused; its checkbox is hidden and waits for A1111's page script to move it into the
    header, so there the plain accordion with a visible checkbox is used."""
    try:
        from modules.ui_components import InputAccordion
    except ImportError:
        return _FallbackAccordion(elem_id)
    if _is_sdnext():
        return _FallbackAccordion(elem_id)
    return InputAccordion(False, label="DeepCache", elem_id=elem_id("enabled"))


def _is_sdnext() -> bool:
    """SD.Next has a diffusers processing module that AUTOMATIC1111 and Forge do not."""
    try:
        return importlib.util.find_spec("modules.processing_diffusers") is not None
    except (ImportError, ValueError):
        return False


class _FallbackAccordion:
    """Older WebUIs: a closed accordion whose first control is the enable checkbox."""

    def __init__(self, elem_id: Any) -> None:
        self.accordion = gr.Accordion("DeepCache", open=False, elem_id=elem_id("accordion"))
        self.elem_id = elem_id

    def __enter__(self) -> Any:
        self.accordion.__enter__()
        return gr.Checkbox(value=False, label="Enable DeepCache", elem_id=self.elem_id("enabled"))

    def __exit__(self, *exc: Any) -> None:
        self.accordion.__exit__(*exc)


def _paste_value(name: str) -> Any:
    """Infotext → one control's value; a missing ``DeepCache`` key pastes 'disabled'."""

    def value(fields: dict[str, Any]) -> Any:
        try:
            return ScriptArgs.from_infotext(fields).to_dict()[name]
        except DeepCacheParamError as error:
            logger.warning("DeepCache: cannot paste %s: %s", name, error)
            return gr.update()

    return value


# ----------------------------------------------------------------- host callbacks
def _follow_refiner(params: Any) -> None:
    """Runs before every CFG denoiser call: if the refiner swapped the model, move the hooks.

    A1111 only: Forge fires this callback too, but its passes live on patcher clones."""
    run = _run
    if run is not None and run.session is not None and detect_host(shared.sd_model) is Host.A1111:
        run.follow_unet(_current_unet(), _checkpoint_id())


def _on_app_started(demo: Any, app: Any) -> None:
    """Scripts are all loaded by now: say once which script titled "DeepCache" (the first
    loaded) receives the API's args, and guard the API only where they are this extension's."""
    owner = title_clash.find_owner(title_clash.scripts_of(scripts.scripts_data), __file__)
    message = owner.console_message(__file__)
    if message is not None and message not in _reported:
        _reported.add(message)
        logger.warning(message)
    api_guard.install(app, owns_title=lambda: owner.ours)


def _add_xyz_axes(*_: Any, **__: Any) -> None:
    """Add the axes before the X/Y/Z plot builds its axis list in its ``ui()``.

    That happens inside the host's UI building, whose first component raises
    ``on_before_component``: in the UI mode, and in the API-only mode too, where the API builds
    the UI once at start-up, before ``on_before_ui`` and ``on_app_started`` run."""
    global _xyz_done
    if _xyz_done:
        return
    module = next(
        (
            d.module
            for d in scripts.scripts_data
            if hasattr(d.module, "axis_options") and hasattr(d.module, "AxisOption")
        ),
        None,
    )
    if module is not None:
        xyz_axes.add_axes(module)
    _xyz_done = True


def _offer_in_control_tab() -> None:
    """SD.Next runs extension scripts in its Control tab only if their title is on its list."""
    try:
        import installer
    except ImportError:
        return
    allowed = getattr(installer, "control_extensions", None)
    if isinstance(allowed, list) and DeepCacheScript.title(None) not in allowed:
        allowed.append(DeepCacheScript.title(None))


console.route_to_host_console(getattr(shared, "log", None))
if _is_sdnext():
    _offer_in_control_tab()
script_callbacks.on_cfg_denoiser(_follow_refiner)
script_callbacks.on_app_started(_on_app_started)
script_callbacks.on_before_component(_add_xyz_axes)
