"""DeepCache on Forge's own Flux, Chroma and SD3 (MMDiT) classes, through Forge's own patcher and
sampling code, at a small config; no server.

Forge's loader builds Flux and Chroma only at full size (its detection fixes width 3072 and
19 + 38 blocks), which a CPU cannot sample. So ``forge_dit_probe.py`` runs in the built Forge
host's venv: it builds ``IntegratedFluxTransformer2DModel``, ``IntegratedChromaTransformer2DModel``
and ``MMDiTX`` small with seeded weights (``forge_dit_models.py``), wraps each in Forge's
``UnetPatcher``/``KModel`` with its engine's predictor, and samples with Forge's
``sampling_function`` and its vendored k-diffusion samplers, plain and through the extension's
Forge adapter (registry, ``on_sampling``, the patcher clone's model-function wrapper). SD3 also
runs end to end in the real Forge server (``test_forge_sd3.py``).

Oracles: the plain pass (bit-identity), hand-counted steps of the uniform schedule, and an
independent loop over the model's blocks implementing the residual rule
(``forge_dit_reference.py``), itself first checked to reproduce the model's own output.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.build import build_host, tail
from tests.e2e.conftest import selected_hosts
from tests.e2e.forge_dit_probe import GUIDANCE, SAMPLERS, STEPS

pytestmark = pytest.mark.e2e

PROBE = Path(__file__).with_name("forge_dit_probe.py")
# family -> (Forge's class, blocks: double + single or joint, the two depths the probe caches at)
MODELS = {
    "flux": ("IntegratedFluxTransformer2DModel", 3 + 5, (0, 3)),
    "chroma": ("IntegratedChromaTransformer2DModel", 3 + 5, (0, 3)),
    "sd3": ("MMDiTX", 5, (0, 1)),
}
# Interval 3 over 10 steps, uniform: full at steps 0, 3, 6, 9. Heun evaluates its correction at
# the next step's sigma, and that call joins the next step: step 0 holds one call, step 1 two,
# and step 1's second call slot has nothing stored yet, so it runs whole and step 1 counts
# full: full at 0, 1, 3, 6, 9.
# DPM2 evaluates a midpoint between two steps' sigmas: Forge's timestep grid (the adapter reads
# it from the sampler) keeps it in its step, so every step but the last has two call slots.
COUNTS = {"Euler": (4, 6), "DPM++ 2M": (4, 6), "Heun": (5, 5), "DPM2": (4, 6)}
# the last step of Heun and DPM2 (to sigma 0) is one Euler call
CALLS = {"Euler": STEPS, "DPM++ 2M": STEPS, "Heun": 2 * STEPS - 1, "DPM2": 2 * STEPS - 1}
# float32: the engine adds the stored residual as one sum, the reference as the span's
# difference; both round differently in the last bits
TOLERANCE = 1e-5
CASES = [
    pytest.param(family, sampler, cfg, batch, id=f"{family}-{sampler}-cfg{cfg:g}-batch{batch}")
    for family in MODELS
    for sampler in SAMPLERS
    for cfg, batch in GUIDANCE
]


@pytest.fixture(scope="module")
def report(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The probe's facts, from one run in the built Forge host's venv (about a minute)."""
    selected = selected_hosts(request.config)
    if "forge" not in selected:
        pytest.skip(f"host forge not selected (--host {' --host '.join(selected)})")
    target = build_host("forge")
    out = tmp_path_factory.mktemp("forge-dit") / "report.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    log = out.with_suffix(".log")
    with open(log, "wb") as sink:
        proc = subprocess.run(
            [str(target / "venv/bin/python"), str(PROBE), str(target / "webui"), str(out)],
            env=env, stdout=sink, stderr=subprocess.STDOUT, timeout=1800, check=False,
        )  # fmt: skip
    assert proc.returncode == 0, tail(log)
    return json.loads(out.read_text())


def case_of(report: dict, family: str, sampler: str, cfg: float, batch: int) -> dict[str, Any]:
    (case,) = [
        c
        for c in report["cases"]
        if (c["family"], c["sampler"], c["cfg"], c["batch"]) == (family, sampler, cfg, batch)
    ]
    return case


@pytest.mark.parametrize("family", MODELS)
def test_forges_own_class_is_left_untouched(report: dict, family: str) -> None:
    """After all its passes: no forward set on an instance, no hook, the same weights."""
    model = report["models"][family]
    assert (model["type"], model["blocks"]) == MODELS[family][:2]
    assert model["instance_forwards"] == []
    assert model["hooks"] == 0
    assert model["weights_identical"]


@pytest.mark.parametrize(("family", "sampler", "cfg", "batch"), CASES)
def test_off_and_interval_1_give_the_plain_latent(report, family, sampler, cfg, batch) -> None:
    case = case_of(report, family, sampler, cfg, batch)
    assert case["progress_steps"] == STEPS
    off, every = case["runs"]["off"], case["runs"]["interval 1"]
    assert off["adapter"] == every["adapter"] == "Forge"
    assert off["diff_to_plain"] == 0.0
    assert (off["counts"], off["infotext"]) == (None, "")
    assert every["diff_to_plain"] == 0.0
    assert every["counts"] == [STEPS, 0]
    assert every["infotext"] == f"{STEPS} full / 0 cached"
    assert not off["wrapper_left_on_base"] and not every["wrapper_left_on_base"]


@pytest.mark.parametrize(("family", "sampler", "cfg", "batch"), CASES)
def test_cached_passes_count_steps_and_follow_the_residual_rule(
    report, family, sampler, cfg, batch
) -> None:
    """Interval 3 at two depths: the counts the schedule gives (steps, not model calls), a
    different latent, and every model call equal to the reference loop's."""
    case = case_of(report, family, sampler, cfg, batch)
    assert case["oracle_error"] == 0.0, "the reference loop does not reproduce the model"
    full, cached = COUNTS[sampler]
    for depth in MODELS[family][2]:
        run = case["runs"][f"depth {depth}"]
        assert run["calls"] == case["runs"]["plain"]["calls"] == CALLS[sampler]
        assert run["counts"] == [full, cached]
        assert run["infotext"] == f"{full} full / {cached} cached"
        assert run["diff_to_plain"] > 0.0, "DeepCache changed nothing"
        assert run["reference_error"] <= TOLERANCE * max(1.0, run["scale"]), run
        assert not run["wrapper_left_on_base"], "the host's own patcher kept DeepCache's wrapper"
