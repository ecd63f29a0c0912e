"""Step skip (the FBCache / TeaCache kind), the study's reference method, against a decision
loop re-implemented here on the trained fixture with a hand-written Euler sampler."""

from __future__ import annotations

import pytest
import torch

from lib_deepcache.bench import fixture
from lib_deepcache.bench.fidelity import FixtureSampler
from lib_deepcache.bench.stepskip import StepSkip

STEPS = 8


def _euler(sampler: FixtureSampler, unet_call, noise: torch.Tensor) -> torch.Tensor:
    """Plain Euler over the fixture's sigmas, the UNet reached through ``unet_call``."""
    sigmas = sampler.denoiser.get_sigmas(STEPS)
    context = fixture.context(noise.shape[0])
    x = noise * sigmas[0]
    for i in range(STEPS):
        sigma = sigmas[i].expand(x.shape[0])
        c_in = 1 / (sigma**2 + 1) ** 0.5
        t = sampler.denoiser.sigma_to_t(sigma)
        eps = unet_call(x * c_in[:, None, None, None], t, context)
        x = x + eps * (sigmas[i + 1] - sigmas[i])
    return x


def _reference(sampler: FixtureSampler, noise: torch.Tensor, threshold: float):
    """The rule written out: accumulate the first block's relative L1 change between calls;
    under the threshold reuse the last full output, else run the UNet and restart the sum."""
    unet = sampler.unet
    state = {"previous": None, "sum": 0.0, "output": None, "decisions": []}

    def call(x, t, context):
        first = unet.input_blocks[0](x, None, context)
        if state["previous"] is not None:
            change = (first - state["previous"]).abs().mean() / state["previous"].abs().mean()
            state["sum"] += float(change)
        state["previous"] = first
        if state["output"] is not None and state["sum"] < threshold:
            state["decisions"].append("skip")
            return state["output"]
        state["sum"] = 0.0
        state["decisions"].append("full")
        state["output"] = unet(x, t, context=context)
        return state["output"]

    return _euler(sampler, call, noise), state["decisions"]


@pytest.fixture(scope="module")
def sampler() -> FixtureSampler:
    return FixtureSampler()


@pytest.mark.parametrize("threshold", [0.0, 0.3, 1e9])
def test_step_skip_follows_the_first_block_rule(sampler, threshold):
    noise = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected, decisions = _reference(sampler, noise, threshold)
        with StepSkip(sampler.unet, threshold) as skip:
            images = _euler(sampler, lambda x, t, c: sampler.unet(x, t, context=c), noise)
    assert (skip.full_calls, skip.skipped_calls) == (
        decisions.count("full"),
        decisions.count("skip"),
    )
    torch.testing.assert_close(images, expected, rtol=0, atol=1e-6)
    assert "forward" not in vars(sampler.unet)  # unhooked on exit


def test_the_thresholds_span_no_skip_to_skip_all(sampler):
    """Threshold 0 never skips; a huge one runs only the first call. Mid: some of each."""
    counts = {}
    noise = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    for threshold in (0.0, 0.3, 1e9):
        with torch.no_grad(), StepSkip(sampler.unet, threshold) as skip:
            _euler(sampler, lambda x, t, c: sampler.unet(x, t, context=c), noise)
        counts[threshold] = (skip.full_calls, skip.skipped_calls)
    assert counts[0.0] == (STEPS, 0)
    assert counts[1e9] == (1, STEPS - 1)
    assert counts[0.3][0] not in (1, STEPS)


def test_speedup_counts_skipped_calls_at_the_first_block_share():
    """3 full + 5 skipped calls at share 0.01: 8 / (3 + 0.05) = 2.6230."""
    skip = StepSkip(torch.nn.Identity(), 0.1)
    skip.full_calls, skip.skipped_calls = 3, 5
    assert skip.speedup(0.01) == pytest.approx(8 / 3.05)
