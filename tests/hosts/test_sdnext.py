"""SD.Next's adapter: executed steps and grid of a pass from the pipeline's scheduler, and the
passes it leaves uncached."""

from __future__ import annotations

import types

import pytest
import torch
from diffusers import (
    DDIMScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    KDPM2DiscreteScheduler,
    PNDMScheduler,
)

from lib_deepcache.bench.archs import build_diffusers_unet
from lib_deepcache.engine.clock import StepClock
from lib_deepcache.engine.generation import GenerationRun
from lib_deepcache.engine.layout import UnsupportedUNetError
from lib_deepcache.hosts import webui
from lib_deepcache.hosts.registry import adapter_for
from lib_deepcache.hosts.script_args import ScriptArgs
from lib_deepcache.hosts.sdnext import SdNext, scheduler_steps, timestep_units
from tests.hosts import sdnext_pipelines


@pytest.mark.parametrize("scheduler_class", [DDIMScheduler, EulerDiscreteScheduler])
def test_img2img_pass_counts_only_the_steps_from_its_first_timestep(scheduler_class):
    scheduler = scheduler_class(num_train_timesteps=1000)
    scheduler.set_timesteps(10)
    timesteps = [float(t) for t in scheduler.timesteps]
    assert scheduler_steps(scheduler, timesteps[0]) == (10, timesteps)
    steps, grid = scheduler_steps(scheduler, timesteps[6])
    assert steps == 4 and grid == timesteps[6:]


def _step_starts(scheduler, begin: int = 0) -> list[float]:
    """The oracle: drive the real scheduler through its timesteps from ``begin`` and note the
    timesteps at which it is in its first-order state (the start of a step)."""
    scheduler.set_begin_index(begin)
    sample = torch.zeros(1, 1, 2, 2)
    starts = []
    for t in scheduler.timesteps[begin:]:
        if getattr(scheduler, "state_in_first_order", True):
            starts.append(float(t))
        sample = scheduler.step(torch.zeros_like(sample), t, sample).prev_sample
    return starts


@pytest.mark.parametrize("scheduler_class", [HeunDiscreteScheduler, KDPM2DiscreteScheduler])
@pytest.mark.parametrize("t_start", [0, 5])
def test_second_order_scheduler_counts_steps_not_evaluations(scheduler_class, t_start):
    """SD.Next's KDPM2 reported 15 full / 8 cached for 12 steps: each step is listed twice."""
    scheduler = scheduler_class(num_train_timesteps=1000)
    scheduler.set_timesteps(12)
    begin = t_start * scheduler.order  # where diffusers' img2img pipelines slice
    want = _step_starts(scheduler, begin)
    assert len(want) == 12 - t_start
    assert scheduler_steps(scheduler, float(scheduler.timesteps[begin])) == (len(want), want)


# PNDM at 12 steps (diffusers, num_train_timesteps 1000, steps_offset 1), written out by hand
# from its schedule: one start per step, 83 apart
PNDM_STARTS_12 = [914.0, 831.0, 748.0, 665.0, 582.0, 499.0, 416.0, 333.0, 250.0, 167.0, 84.0, 1.0]


@pytest.mark.parametrize("skip_prk_steps", [True, False], ids=["plms", "prk-warm-up"])
@pytest.mark.parametrize("t_start", [0, 5])
def test_pndm_counts_its_steps_not_its_evaluations(skip_prk_steps, t_start):
    """SD.Next's PNDM runs reported 6 full / 6 cached (PLMS: 13 evaluations, the second
    timestep twice) and 6 full / 9 cached (the PRK warm-up: 21 evaluations at 15 timesteps) for
    12 steps at interval 3: every step start is on its grid, every extra evaluation joins one."""
    scheduler = PNDMScheduler(
        num_train_timesteps=1000, steps_offset=1, skip_prk_steps=skip_prk_steps
    )
    scheduler.set_timesteps(12)
    start = PNDM_STARTS_12[t_start]
    assert scheduler_steps(scheduler, start) == (12 - t_start, PNDM_STARTS_12[t_start:])
    clock = StepClock(PNDM_STARTS_12[t_start:])
    first = [float(t) for t in scheduler.timesteps].index(start)
    steps = [clock.observe(float(t)).step for t in scheduler.timesteps[first:]]
    assert sorted(set(steps)) == list(range(12 - t_start))


def test_a_timestep_off_the_schedule_is_refused():
    scheduler = DDIMScheduler(num_train_timesteps=1000)
    scheduler.set_timesteps(10)
    with pytest.raises(ValueError, match="no timestep 3"):
        scheduler_steps(scheduler, 3.0)


def _pipeline_pass(unet, timesteps, context):
    """The UNet calls of one pipeline pass (batch 1, CFG off), and their outputs."""
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return [unet(x, torch.tensor(t), encoder_hidden_states=context).sample for t in timesteps]


def test_the_refiner_pass_of_a_pipeline_run_stays_uncached(monkeypatch):
    """SD.Next runs the base pass and the refiner pass in one batch; the refiner pass is left
    uncached (its plan is None). Base: 4 steps at interval 2 → full at 0 and 2, cached at 1 and
    3: "2 full / 2 cached". The refiner pass (timesteps rise again: a new pass) must add no
    record and give exactly the uncached UNet's outputs."""
    unet = build_diffusers_unet("sd15", width=32)
    scheduler = DDIMScheduler(num_train_timesteps=1000)
    scheduler.set_timesteps(4)
    timesteps = [float(t) for t in scheduler.timesteps]
    model = types.SimpleNamespace(unet=unet, scheduler=scheduler)
    monkeypatch.setattr(webui, "sd_model", lambda: model)
    context = torch.randn(1, 7, unet.config.cross_attention_dim)
    refiner_timesteps = timesteps[2:]
    reference = _pipeline_pass(unet, refiner_timesteps, context)

    args = ScriptArgs.from_args([{"enabled": True, "interval": 2, "min_steps": 0}])
    p = types.SimpleNamespace(deepcache_args=args, steps=4)
    run, adapter = GenerationRun(), SdNext()
    adapter.on_batch(run, p)
    try:
        _pipeline_pass(unet, timesteps, context)
        p.is_refiner_pass = True
        refined = _pipeline_pass(unet, refiner_timesteps, context)
    finally:
        adapter.close()
        run.close()
    assert run.counts_infotext() == "2 full / 2 cached"
    assert all(torch.equal(a, b) for a, b in zip(refined, reference, strict=True))
    assert not unet._forward_pre_hooks


# ----------------------------------------------------------------------------- transformers
def _received_timesteps(pipe, on_first_call):
    """Record the ``timestep`` of every transformer call; ``on_first_call(t)`` is asked at the
    first, when the scheduler is set up for the pass (as the adapter's watcher asks)."""
    received: list[float] = []

    def hook(module, args, kwargs):
        t = float(kwargs["timestep"].reshape(-1)[0])
        if not received:
            on_first_call(t)
        received.append(t)

    pipe.transformer.register_forward_pre_hook(hook, with_kwargs=True)
    return received


def _steps(received: list[float]) -> list[float]:
    """One entry per step: Chroma calls its transformer twice a step (prompt, then negative)."""
    return [t for i, t in enumerate(received) if i == 0 or t != received[i - 1]]


@pytest.mark.parametrize("family", sdnext_pipelines.FAMILIES)
@pytest.mark.parametrize("strength", [None, 0.5], ids=["txt2img", "img2img"])
def test_a_transformer_pass_is_planned_in_the_units_its_transformer_receives(family, strength):
    """Flux and Chroma pipelines hand their transformer the scheduler's timestep / 1000, SD3's
    the timestep itself: the executed steps and the grid must be exactly what the real pipeline
    passes (12 steps; img2img at strength 0.5 runs the last 6)."""
    pipe = sdnext_pipelines.pipeline(family, img2img=strength is not None)
    units = timestep_units(pipe.transformer)
    plans = []
    received = _received_timesteps(
        pipe, lambda t: plans.append(scheduler_steps(pipe.scheduler, t, units))
    )
    sdnext_pipelines.run(pipe, family, steps=12, strength=strength)
    steps = _steps(received)
    assert len(steps) == (12 if strength is None else 6)
    assert plans == [(len(steps), steps)]


def test_a_bfloat16_flux_pass_gets_the_grid_its_transformer_receives():
    """In bfloat16 the Flux pipeline casts the timestep before dividing: its transformer gets
    0.97265625 for the scheduler's 970.59 (not 0.97059), farther from the float grid than the
    step clock's slack; the grid must carry the same rounding."""
    pipe = sdnext_pipelines.pipeline("flux").to(torch.bfloat16)
    plans = []
    units = timestep_units(pipe.transformer)
    received = _received_timesteps(
        pipe, lambda t: plans.append(scheduler_steps(pipe.scheduler, t, units))
    )
    sdnext_pipelines.run(pipe, "flux", steps=12)
    assert received[1] == 0.97265625  # the pipeline's rounding, seen once by hand
    assert plans == [(12, received)]
    clock = StepClock(plans[0][1])
    assert [clock.observe(t).step for t in received] == list(range(12))


def test_sd3_timesteps_stay_in_the_schedulers_units():
    pipe = sdnext_pipelines.pipeline("sd3")
    assert timestep_units(pipe.transformer)(967.8447265625) == 967.8447265625
    flux = sdnext_pipelines.pipeline("flux")
    assert timestep_units(flux.transformer)(750.0) == 0.75


@pytest.mark.parametrize("family", sdnext_pipelines.FAMILIES)
def test_a_transformer_pipeline_gets_the_sdnext_adapter(family):
    assert type(adapter_for(sdnext_pipelines.pipeline(family))) is SdNext


class _OtherTransformer(torch.nn.Module):
    """A transformer of a family DeepCache does not cache (e.g. a new model's)."""

    def __init__(self):
        super().__init__()
        self.blocks = torch.nn.ModuleList([torch.nn.Linear(4, 4)])


def _on_batch_error(monkeypatch, model) -> str:
    monkeypatch.setattr(webui, "sd_model", lambda: model)
    adapter = adapter_for(model)
    assert type(adapter) is SdNext
    p = types.SimpleNamespace(deepcache_args=ScriptArgs.from_args([True]), steps=12)
    with pytest.raises(UnsupportedUNetError) as error:
        adapter.on_batch(GenerationRun(), p)
    return str(error.value)


def test_an_unknown_transformer_is_named_with_its_pipeline(monkeypatch):
    """The words must be true: an SD.Next pipeline whose transformer DeepCache does not know,
    not "not a model of AUTOMATIC1111, Forge or SD.Next"."""
    model = type("HiDreamImagePipeline", (), {})()
    model.transformer = _OtherTransformer()
    message = _on_batch_error(monkeypatch, model)
    assert message.startswith("HiDreamImagePipeline: _OtherTransformer ")
    assert "SD.Next" not in message
    assert not model.transformer._forward_pre_hooks


def test_a_pipeline_without_unet_or_transformer_says_so(monkeypatch):
    model = type("StableCascadeCombinedPipeline", (), {"components": {}})()
    message = _on_batch_error(monkeypatch, model)
    assert message == (
        "StableCascadeCombinedPipeline has neither a unet nor a transformer module to cache"
    )
