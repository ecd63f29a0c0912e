"""Fault matrix: each test names a fault and the promise DeepCache keeps under it.

docs/reliability.md lists them in a table. Host-level faults run on the WebUI stand-in
(tests/webui_host) with real ldm UNets and real k-diffusion samplers.
"""

from __future__ import annotations

import gc
import json
import math
import sys
import tracemalloc
from contextlib import closing, suppress
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lib_deepcache import DeepCacheParams, DeepCacheSession
from lib_deepcache.bench.archs import build_unet, sdpa_attention, unet_config
from lib_deepcache.engine.params import DeepCacheParamError
from lib_deepcache.engine.session import _ACTIVE
from lib_deepcache.hosts import api_guard
from lib_deepcache.hosts.script_args import ARG_NAMES, ScriptArgs
from tests.support import assert_same_fingerprint, reference_pass, unet_fingerprint

HOST = Path(__file__).resolve().parents[1] / "webui_host"
sys.path.insert(0, str(HOST))

from modules import errors, processing, script_callbacks, scripts, shared  # noqa: E402
from modules.infotext_utils import parse_generation_parameters  # noqa: E402
from modules.sd_models_standin import LatentDiffusion  # noqa: E402
from webui import ROOT, boot, defaults, load_module, runner  # noqa: E402

ON = [True, 3, 0, 0.0, 1.0, "uniform", True, 2, 0]

# ----------------------------------------------------------------------------- API arguments
BAD_VALUES = {
    "wrong type": [1],
    "NaN": math.nan,
    "inf": math.inf,
    "negative": -3,
    "huge": 10**12,
    "null": None,
    "string for a number": "fast",
}
OUT_OF_RANGE = {
    "interval": 1001,
    "depth": 12,
    "start": 1.5,
    "end": -0.1,
    "hires_interval": 1001,
    "hires_depth": 12,
    "schedule": "cosine",
    "enabled": 2,
    "hires_enabled": "maybe",
    "threshold": -0.1,
    "max_cached": 0,
    "forecast": 1.5,
    "min_steps": 1001,
}


# A huge or infinite adaptive threshold is valid: it means "refresh only after max_cached".
VALID = {("threshold", "inf"), ("threshold", "huge")}


def bad_cases():
    for field in ARG_NAMES:
        for kind, value in BAD_VALUES.items():
            if (field, kind) not in VALID:
                yield field, kind, value
        yield field, "out of range", OUT_OF_RANGE[field]


@pytest.mark.parametrize(("field", "kind", "value"), list(bad_cases()))
def test_every_bad_field_value_is_refused_naming_the_field(field, kind, value):
    """Fault: an API client sends a wrong value. Promise: HTTP 422 naming that field."""
    body = json.dumps(
        {"alwayson_scripts": {"DeepCache": {"args": [{"enabled": True, field: value}]}}}
    ).encode()
    error = api_guard.check_request(body)
    assert error is not None, (field, kind, value)
    assert error.field == field


def test_numeric_strings_and_json_floats_are_accepted_as_documented():
    args = ScriptArgs.from_args([{"enabled": "true", "interval": "4", "depth": 2.0, "end": "0.5"}])
    assert (args.first.interval, args.first.depth, args.first.end) == (4, 2, 0.5)


def test_missing_values_take_defaults_and_unknown_keys_are_refused():
    assert ScriptArgs.from_args([True]).first == DeepCacheParams(enabled=True)
    with pytest.raises(DeepCacheParamError, match="speed"):
        ScriptArgs.from_args([{"enabled": True, "speed": "max"}])
    # thirteen controls: ON's nine, threshold, max cached, forecast, min steps; a 14th is refused
    with pytest.raises(DeepCacheParamError, match="at most 13"):
        ScriptArgs.from_args([*ON, 0.2, 4, 0.5, 10, 1])


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=12,
)
arg_dicts = st.dictionaries(st.sampled_from([*ARG_NAMES, "hires", "extra"]), json_values)


@settings(max_examples=300, deadline=None)
@given(st.lists(json_values, max_size=12) | st.lists(arg_dicts, min_size=1, max_size=2))
def test_the_parser_never_raises_anything_but_its_own_error(args):
    with suppress(DeepCacheParamError):
        ScriptArgs.from_args(args)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_the_api_guard_never_crashes_on_any_json(payload):
    for body in (payload, {"alwayson_scripts": {"DeepCache": payload}}):
        result = api_guard.check_request(json.dumps(body).encode())
        assert result is None or isinstance(result, DeepCacheParamError)


# ----------------------------------------------------------------------------- host faults
@pytest.fixture(scope="module")
def host():
    boot()
    base = LatentDiffusion("sd15", width=32, seed=0, name="base")
    shared.sd_model = base
    yield {"base": base, "txt2img": runner(False)}
    shared.sd_model = None


@pytest.fixture(autouse=True)
def clean(request):
    if "host" not in request.fixturenames:
        yield
        return
    host = request.getfixturevalue("host")
    shared.sd_model = host["base"]
    shared.opts = shared.default_options()
    shared.state.interrupted = shared.state.skipped = False
    errors.reported.clear()
    yield
    shared.state.interrupted = shared.state.skipped = False


def generate(host, values, r=None, **kwargs):
    r = r or host["txt2img"]
    p = processing.Txt2Img(**{"steps": 9, **kwargs})
    p.scripts = r
    args = defaults(r)
    for script in r.alwayson_scripts:
        args[script.args_from : script.args_from + len(values)] = values
    p.script_args = tuple(args)
    with closing(p):
        return processing.process_images(p)


def interrupt_at(step_index, flag="interrupted"):
    def callback(params):
        if params.sampling_step >= step_index:
            setattr(shared.state, flag, True)

    script_callbacks.on_cfg_denoiser(callback)
    return callback


@pytest.mark.parametrize("flag", ["interrupted", "skipped"])
def test_interrupt_or_skip_restores_the_unet_and_the_next_generation_is_correct(host, flag):
    """Fault: the user presses Interrupt/Skip mid-sampling. Promise: the partial image is
    returned, the UNet is restored, the cache freed, the next generation unaffected."""
    unet = host["base"].model.diffusion_model
    before = unet_fingerprint(unet)
    reference = generate(host, ON)
    callback = interrupt_at(3, flag)
    try:
        partial = generate(host, ON)
    finally:
        script_callbacks.remove_callbacks_for_function(callback)
        setattr(shared.state, flag, False)
    assert torch.isfinite(partial.samples[0]).all()
    assert_same_fingerprint(before, unet_fingerprint(unet))
    assert len(_ACTIVE) == 0
    again = generate(host, ON)
    assert torch.equal(again.samples[0], reference.samples[0])
    assert errors.reported == []


def test_keyboard_interrupt_from_another_extension_restores_the_unet(host):
    """Fault: another extension raises KeyboardInterrupt inside sampling (the host's callback
    guard only catches Exception). Promise: the host's ``closing(p)`` unhooks at once."""
    unet = host["base"].model.diffusion_model
    before = unet_fingerprint(unet)

    def stop(params):
        if params.sampling_step >= 2:
            raise KeyboardInterrupt

    script_callbacks.on_cfg_denoiser(stop)
    try:
        with pytest.raises(KeyboardInterrupt):
            generate(host, ON)
    finally:
        script_callbacks.remove_callbacks_for_function(stop)
    assert_same_fingerprint(before, unet_fingerprint(unet))
    assert len(_ACTIVE) == 0


def test_another_extensions_failing_hook_does_not_disturb_deepcache(host):
    """Fault: a second always-on script raises in its per-pass hook. Promise: the host reports
    it; DeepCache's generation and counts are unaffected."""

    class Failing(scripts.Script):
        def title(self):
            return "Failing"

        def show(self, is_img2img):
            return scripts.AlwaysVisible

        def ui(self, is_img2img):
            return []

        def process_before_every_sampling(self, p, *args, **kwargs):
            raise RuntimeError("another extension broke")

    scripts.scripts_data.append(scripts.ScriptClassData(Failing, "failing.py", ".", None))
    try:
        r = runner(False)
        processed = generate(host, ON, r=r)
    finally:
        scripts.scripts_data.pop()
    assert any("process_before_every_sampling" in m for m in errors.reported)
    errors.reported.clear()
    assert parse_generation_parameters(processed.infotexts[0])["DeepCache steps"] == (
        "3 full / 6 cached"
    )


def test_two_copies_of_the_extension_never_double_patch(host):
    """Fault: the extension is installed twice. Promise: one copy hooks, the other stays off
    and says so; the result equals a single copy's."""
    single = generate(host, ON)
    sys.path.insert(0, str(ROOT))
    try:
        twin = load_module(ROOT / "scripts" / "deepcache.py", "deepcache_copy.py")
    finally:
        sys.path.remove(str(ROOT))
    scripts.scripts_data.append(
        scripts.ScriptClassData(twin.DeepCacheScript, "copy/deepcache.py", str(ROOT), twin)
    )
    try:
        r = runner(False)
        doubled = generate(host, ON, r=r)
    finally:
        scripts.scripts_data.pop()
        script_callbacks.remove_callbacks_for_function(twin._follow_model)
    fields = parse_generation_parameters(doubled.infotexts[0])
    assert fields["DeepCache error"] == "another DeepCache copy is already active"
    assert torch.equal(doubled.samples[0], single.samples[0])
    assert len(_ACTIVE) == 0


def test_two_hundred_generations_hold_nothing_afterwards(host):
    """Fault: a WebUI that runs for days. Promise: after each generation the engine holds no
    tensor and no hook; memory shows no growth trend over 200 mixed generations."""
    deepcache_module = next(
        d.module for d in scripts.scripts_data if d.path.endswith("deepcache.py")
    )
    unet = host["base"].model.diffusion_model
    before = unet_fingerprint(unet)
    variants = [
        (ON, 64),
        ([False], 64),
        ([True, 2, 1, 0.1, 0.9, "non-uniform"], 128),
        ([True, 4, 3], 64),
        ([True, 1], 64),
    ]
    samples: list[tuple[int, int]] = []
    tracemalloc.start()
    try:
        for i in range(200):
            values, size = variants[i % len(variants)]
            generate(host, values, steps=3, width=size, height=size, seed=i)
            assert deepcache_module.controller.run is None
            assert len(_ACTIVE) == 0
            if i % 25 == 24:
                gc.collect()
                tensors = sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))
                samples.append((tracemalloc.get_traced_memory()[0], tensors))
    finally:
        tracemalloc.stop()
    assert_same_fingerprint(before, unet_fingerprint(unet))
    first_memory, first_tensors = samples[1]  # after warm-up
    last_memory, last_tensors = samples[-1]
    assert last_tensors <= first_tensors
    assert last_memory - first_memory < 2_000_000, samples


# ----------------------------------------------------------------------------- batch shapes
# interval 3, uniform over all 7 steps: full at steps 0, 3 and 6 (worked by hand)
FULL_STEPS_N3 = (0, 3, 6)


def test_extra_calls_on_some_steps_never_use_a_stale_feature():
    """Fault: an extension (PAG-like) adds a batch-1 UNet call on even steps only. Promise: no
    crash, and every cached call uses a feature stored at or after the last full step."""
    unet = build_unet("sd15", width=32, seed=4)
    context_dim = unet_config("sd15", 32)["context_dim"]
    params = DeepCacheParams(enabled=True, interval=3, depth=1)
    g = torch.Generator().manual_seed(0)
    x2, c2 = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 77, context_dim, generator=g)
    x1, c1 = x2[:1].clone(), c2[:1].clone()
    timesteps = [999.0, 900.0, 800.0, 700.0, 600.0, 500.0, 400.0]
    calls = []
    with torch.no_grad(), DeepCacheSession(unet, params, len(timesteps)) as session:
        for step, t in enumerate(timesteps):
            calls.append((step, x2, c2, unet(x2, torch.full((2,), t), context=c2)))
            if step % 2 == 0:
                calls.append((step, x1, c1, unet(x1, torch.full((1,), t), context=c1)))
    stored: dict[tuple[int, int], tuple[int, torch.Tensor]] = {}
    last_full = 0
    slot, previous = 0, None
    with torch.no_grad():
        for step, x, c, out in calls:
            slot = slot + 1 if step == previous else 0
            previous = step
            t = torch.full((x.shape[0],), timesteps[step])
            full = step in FULL_STEPS_N3
            last_full = step if full else last_full
            entry = stored.get((slot, x.shape[0]))
            if full or entry is None or entry[0] < last_full:
                want, feature = reference_pass(unet, x, t, c, 1)
                stored[(slot, x.shape[0])] = (step, feature)
            else:
                want, _ = reference_pass(unet, x, t, c, 1, entry[1])
            torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    assert session.stats.miss_passes >= 1


def test_bfloat16_unet_on_cpu(monkeypatch):
    """Fault: a half-precision UNet (bf16 on CPU). Promise: caching works in that dtype."""
    from ldm.modules.diffusionmodules import openaimodel, util

    embed = openaimodel.timestep_embedding
    # Like the WebUI's half-precision hijacks: the timestep embedding in the UNet's dtype, and
    # GroupNorm in that dtype too (ldm upcasts its input, which CPU kernels refuse).
    monkeypatch.setattr(
        openaimodel, "timestep_embedding", lambda *a, **k: embed(*a, **k).to(torch.bfloat16)
    )
    monkeypatch.setattr(
        util.GroupNorm32,
        "forward",
        lambda self, x: torch.nn.functional.group_norm(
            x, self.num_groups, self.weight, self.bias, self.eps
        ),
    )
    unet = build_unet("sd15", width=32, seed=5, dtype=torch.bfloat16)
    context_dim = unet_config("sd15", 32)["context_dim"]
    x = torch.randn(2, 4, 16, 16, dtype=torch.bfloat16)
    context = torch.randn(2, 77, context_dim, dtype=torch.bfloat16)
    params = DeepCacheParams(enabled=True, interval=2, depth=0)
    with torch.no_grad(), sdpa_attention():
        with DeepCacheSession(unet, params, 2) as session:
            full = unet(x, torch.full((2,), 900.0), context=context)
            cached = unet(x, torch.full((2,), 800.0), context=context)
        _, feature = reference_pass(unet, x, torch.full((2,), 900.0), context, 0)
        want, _ = reference_pass(unet, x, torch.full((2,), 800.0), context, 0, feature)
    assert full.dtype == cached.dtype == torch.bfloat16
    torch.testing.assert_close(cached, want)
    assert session.stats.cached_passes == 1
