"""The pass watcher: a fresh session per pass of a pipeline run (SD.Next), whatever the plan
does."""

from __future__ import annotations

import torch

from lib_deepcache import DeepCacheParams
from lib_deepcache.bench.archs import build_diffusers_unet
from lib_deepcache.engine.generation import GenerationRun, PassPlan
from lib_deepcache.engine.watcher import PassWatcher


def _unet_calls(unet, timesteps):
    x = torch.randn(1, 4, 8, 8)
    context = torch.randn(1, 7, unet.config.cross_attention_dim)
    with torch.no_grad():
        for t in timesteps:
            unet(x, torch.tensor(float(t)), encoder_hidden_states=context)


def test_watcher_opens_a_session_per_pass_and_survives_a_failing_plan(caplog):
    unet = build_diffusers_unet("sd15", width=32)
    run = GenerationRun()
    plans = iter(
        [
            PassPlan("first pass", DeepCacheParams(True, 2, 0, min_steps=0), 4),
            ValueError("no schedule"),
            None,
            PassPlan("hires", DeepCacheParams(True, 3, 0, min_steps=0), 3),
        ]
    )

    def plan_for_pass(first_timestep):
        plan = next(plans)
        if isinstance(plan, Exception):
            raise plan
        return plan

    watcher = PassWatcher(run, unet, plan_for_pass)
    try:
        _unet_calls(unet, [999, 750, 500, 250])  # planned: 2 full / 2 cached
        _unet_calls(unet, [800, 400])  # planning fails: uncached, logged
        _unet_calls(unet, [900, 300])  # plan None: uncached
        _unet_calls(unet, [700, 500, 300])  # planned: 1 full / 2 cached
    finally:
        watcher.remove()
        run.close()
    assert run.counts_infotext() == "first pass 2 full / 2 cached; hires 1 full / 2 cached"
    assert "this pass runs uncached: no schedule" in caplog.text
    assert not unet._forward_pre_hooks
