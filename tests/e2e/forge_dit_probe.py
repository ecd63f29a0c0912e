"""Forge's transformers (Flux, Chroma, SD3's MMDiT) at a small config, sampled by Forge's own
code, plain and through sd-webui-deepcache's Forge adapter; the facts go to a JSON file that
``tests/e2e/test_forge_transformers.py`` checks.

    TARGET/venv/bin/python tests/e2e/forge_dit_probe.py TARGET/webui OUT.json

Forge's code on the path: the model classes and ``UnetPatcher`` (:mod:`.forge_dit_models`),
its prompt parser's per-step conditioning, ``sampling_prepare`` / ``sampling_function`` /
``sampling_cleanup`` (CFG, the patcher's ``model_function_wrapper``, ``KModel.apply_model``) and
the k-diffusion samplers vendored in Forge, driven as ``KDiffusionSampler.sample`` drives them,
with the "Simple" schedule Forge offers Flux. DeepCache goes in the way the extension's script
does it: the registry picks the adapter for the model, the adapter's ``on_sampling`` gets a
processing object and replaces ``forge_objects.unet`` with its patcher clone for the pass.

A recorder (another extension's model-function wrapper, under DeepCache's) keeps every model
call's inputs and output, and :mod:`.forge_dit_reference` recomputes each one with the residual
rule from the model's own blocks.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

STEPS = 10
SAMPLERS = {
    "Euler": "sample_euler", "DPM++ 2M": "sample_dpmpp_2m", "Heun": "sample_heun",
    "DPM2": "sample_dpm_2",
}  # fmt: skip
# (CFG scale, batch size): Flux-dev's distilled guidance alone (CFG 1: one call per step), and
# real CFG (cond and uncond rows in one call) on a batch of two prompts
GUIDANCE = ((1.0, 1), (4.0, 2))


def forge_on_path(webui: Path) -> None:
    """Import Forge as its launcher does (``backend.args`` parses ``sys.argv`` on import), and
    this checkout's ``lib_deepcache`` and tests, behind Forge's own packages. The probe's own
    folder leaves the path: its modules (``transformers.py`` among them) would shadow Forge's."""
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    sys.argv = [sys.argv[0], "--always-cpu"]
    for path in (webui / "repositories" / "huggingface_guess", webui / "packages_3rdparty", webui):
        sys.path.insert(0, str(path))
    sys.path.append(str(here.parents[1]))


class Recorder:
    """A model-function wrapper that keeps each call's inputs and output (another extension's,
    under DeepCache's in the chain)."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def __call__(self, apply_model: Any, args: dict[str, Any]) -> Any:
        c = args["c"]
        call = {
            "x": args["input"].clone(),
            "sigma": args["timestep"].clone(),
            "c": {k: c[k].clone() for k in ("c_crossattn", "y", "guidance") if k in c},
        }
        out = apply_model(args["input"], args["timestep"], **c)
        call["out"] = out.clone()
        self.calls.append(call)
        return out

    def __deepcopy__(self, memo: dict[int, Any]) -> Recorder:
        # a patcher's clone() deep-copies its options: the clone records into this same list
        return self


class Sampler:
    """What the adapter reads of Forge's ``KDiffusionSampler``: the sampling function's name,
    ``get_sigmas`` ("Simple": every n-th of the predictor's sigmas, from the top) and
    ``model_wrap_cfg.inner_model``, the ``ForgeScheduleLinker`` around the predictor."""

    def __init__(self, predictor: Any, funcname: str) -> None:
        from k_diffusion.external import ForgeScheduleLinker

        self.funcname = funcname
        self.model_wrap_cfg = SimpleNamespace(inner_model=ForgeScheduleLinker(predictor))
        self.predictor = predictor

    def get_sigmas(self, p: Any, steps: int) -> Any:
        import torch

        sigmas = self.predictor.sigmas
        stride = len(sigmas) / steps
        picked = [float(sigmas[-(1 + int(i * stride))]) for i in range(steps)]
        return torch.FloatTensor([*picked, 0.0])


class Denoiser:
    """The part of Forge's ``CFGDenoiser.forward`` that reaches the model: the step's conds from
    the prompt parser, then Forge's ``sampling_function`` with this object as its ``self``."""

    def __init__(self, sd_model: Any, cond: Any, uncond: Any, cfg: float) -> None:
        self.inner_model = SimpleNamespace(inner_model=sd_model)
        self.p = SimpleNamespace(seeds=[0])
        self.cond, self.uncond, self.cfg, self.step = cond, uncond, cfg, 0

    def __call__(self, x: Any, sigma: Any, **_: Any) -> Any:
        from backend.sampling.sampling_function import sampling_function
        from modules import prompt_parser

        composition, cond = prompt_parser.reconstruct_multicond_batch(self.cond, self.step)
        uncond = prompt_parser.reconstruct_cond_batch(self.uncond, self.step)
        params = SimpleNamespace(
            x=x, sigma=sigma, text_cond=cond, text_uncond=uncond, image_cond=None
        )
        denoised, _, _ = sampling_function(self, params, self.cfg, composition)
        self.step += 1
        return denoised


def prompts(family: Any, batch: int) -> tuple[Any, Any]:
    """Positive and negative conditionings of ``batch`` prompts, stored as Forge's prompt parser
    stores them (one schedule entry per prompt, for all steps)."""
    import torch
    from modules import prompt_parser as pp

    gen = torch.Generator().manual_seed(7)
    positive = [family.cond(gen) for _ in range(batch)]
    negative = [family.cond(gen) for _ in range(batch)]
    cond = pp.MulticondLearnedConditioning(
        (batch,),
        [[pp.ComposableScheduledPromptConditioning([pp.ScheduledPromptConditioning(STEPS, c)])]
         for c in positive],
    )  # fmt: skip
    return cond, [[pp.ScheduledPromptConditioning(STEPS, c)] for c in negative]


def sample(case: dict[str, Any], rig: dict[str, Any], settings: dict[str, Any] | None) -> dict:
    """One pass: plain (``settings`` None) or through the adapter; the latent and the counts."""
    import k_diffusion.sampling
    import torch
    from backend.diffusion_engine.base import ForgeObjects
    from backend.sampling.sampling_function import sampling_cleanup, sampling_prepare

    from lib_deepcache.engine.generation import GenerationRun
    from lib_deepcache.hosts.registry import adapter_for
    from lib_deepcache.hosts.script_args import ScriptArgs

    recorder = Recorder()
    base = rig["patcher"].clone()
    base.set_model_unet_function_wrapper(recorder)
    sampler = Sampler(rig["patcher"].model.predictor, SAMPLERS[case["sampler"]])
    sd_model = SimpleNamespace(forge_objects=ForgeObjects(base, None, None, None))
    p = SimpleNamespace(sd_model=sd_model, steps=STEPS, is_hr_pass=False, sampler=sampler)
    run, adapter = GenerationRun(), None
    if settings is not None:
        p.deepcache_args = ScriptArgs.from_args([settings])
        adapter = adapter_for(sd_model)
        adapter.on_sampling(run, p)
    unet = sd_model.forge_objects.unet
    sigmas = sampler.get_sigmas(p, STEPS)
    gen = torch.Generator().manual_seed(11)
    noise = torch.randn(case["batch"], *rig["latent"], generator=gen)
    x = unet.model.predictor.noise_scaling(sigmas[0], noise, torch.zeros_like(noise))
    sampling_prepare(unet, x)
    cond, uncond = rig["prompts"][case["batch"]]
    denoiser = Denoiser(sd_model, cond, uncond, case["cfg"])
    function = getattr(k_diffusion.sampling, sampler.funcname)
    latent = function(denoiser, x, sigmas, extra_args={}, disable=True)
    sampling_cleanup(unet)
    run.close()
    record = run.passes[0] if run.passes else None
    return {
        "latent": latent,
        "calls": recorder.calls,
        "sigmas": [float(s) for s in sigmas],
        "adapter": type(adapter).__name__ if adapter else None,
        "counts": [record.full_steps, record.cached_steps] if record else None,
        "infotext": run.counts_infotext() if run.passes else "",
        # the patcher the adapter was handed must come out as it went in: a pass works on a clone
        "wrapper_left_on_base": base.model_options.get("model_function_wrapper") is not recorder,
    }


def settings_of(family: Any) -> dict[str, dict[str, Any] | None]:
    """The passes compared: plain, DeepCache off, interval 1, and interval 3 at two depths."""
    shallow, deep = family.depths
    return {
        "plain": None,
        "off": {"enabled": False, "interval": 3, "depth": shallow},
        "interval 1": {"enabled": True, "interval": 1, "depth": shallow},
        f"depth {shallow}": {"enabled": True, "interval": 3, "depth": shallow},
        f"depth {deep}": {"enabled": True, "interval": 3, "depth": deep},
    }


def check_case(family: Any, rig: dict[str, Any], case: dict[str, Any]) -> dict[str, Any]:
    """Every setting of :func:`settings_of` on one (sampler, CFG, batch) case."""
    from tests.e2e.forge_dit_reference import replay

    model, predictor = rig["patcher"].model.diffusion_model, rig["patcher"].model.predictor
    plain = sample(case, rig, None)
    # the oracle first: its loop with every step full must give the model's own outputs
    oracle = replay(family.forward, model, predictor, plain["calls"], plain["sigmas"], 0, 1)
    report = dict(case, progress_steps=len(plain["sigmas"]) - 1, oracle_error=oracle[0], runs={})
    for name, settings in settings_of(family).items():
        result = plain if settings is None else sample(case, rig, settings)
        entry = {
            key: result[key] for key in ("adapter", "counts", "infotext", "wrapper_left_on_base")
        }
        entry["diff_to_plain"] = float((result["latent"] - plain["latent"]).abs().max())
        entry["calls"] = len(result["calls"])
        if settings is not None and settings["interval"] > 1 and settings["enabled"]:
            entry["reference_error"], entry["scale"] = replay(
                family.forward, model, predictor, result["calls"], result["sigmas"],
                settings["depth"], settings["interval"],
            )  # fmt: skip
        report["runs"][name] = entry
    return report


def untouched(model: Any, before: dict[str, Any]) -> dict[str, Any]:
    """What DeepCache may have left on the model: instance forwards, hooks, changed weights."""
    import torch

    modules = list(model.named_modules())
    return {
        "instance_forwards": [name for name, m in modules if "forward" in vars(m)],
        "hooks": sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for _, m in modules),
        "weights_identical": all(
            torch.equal(value, before[key]) for key, value in model.state_dict().items()
        ),
    }


def probe(family: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from tests.e2e.forge_dit_models import LATENT, patcher_for

    model = family.build()
    before = {key: value.clone() for key, value in model.state_dict().items()}
    rig = {
        "patcher": patcher_for(family, model),
        "latent": LATENT,
        "prompts": {batch: prompts(family, batch) for _, batch in GUIDANCE},
    }
    cases = [
        check_case(family, rig, {"family": family.name, "sampler": s, "cfg": cfg, "batch": b})
        for s in SAMPLERS
        for cfg, b in GUIDANCE
    ]
    return cases, dict(untouched(model, before), blocks=family.blocks, type=type(model).__name__)


def main() -> None:
    webui, out = Path(sys.argv[1]), Path(sys.argv[2])
    forge_on_path(webui)
    import torch

    from tests.e2e.forge_dit_models import FAMILIES

    report: dict[str, Any] = {"torch": torch.__version__, "cases": [], "models": {}}
    with torch.no_grad():
        for family in FAMILIES:
            cases, model = probe(family)
            report["cases"] += cases
            report["models"][family.name] = model
    out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    main()
