"""The transformer fixture, its sampler's FLOP count and TeaCache, against independent oracles."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from lib_deepcache.bench import dit_fixture
from lib_deepcache.bench.dit_sampler import DitSampler
from lib_deepcache.bench.teacache import TeaCache, relative_l1

STEPS = 4


def test_pack_puts_each_4x4_patch_in_one_token():
    """Token (row r, column c) holds pixels [4r:4r+4, 4c:4c+4], channel-major, row-major inside."""
    images = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).reshape(2, 3, 32, 32)
    tokens = dit_fixture.pack(images)
    assert tokens.shape == (2, 64, 48)
    r, c = 2, 5
    expected = images[1, :, 4 * r : 4 * r + 4, 4 * c : 4 * c + 4].reshape(-1)
    torch.testing.assert_close(tokens[1, r * 8 + c], expected)
    torch.testing.assert_close(dit_fixture.unpack(tokens), images)


def test_flow_sigmas_are_fluxs_shifted_schedule():
    """64 tokens: mu = 0.5 + (64 - 256) * 0.65 / 3840 = 0.4675; for 2 steps the base sigmas
    are 1 and 0.5, shifted 1 and e^mu / (e^mu + 1) = 0.61479, then 0."""
    assert dit_fixture.flow_shift(64) == pytest.approx(0.4675)
    e = math.exp(0.4675)
    expected = torch.tensor([1.0, e / (e + 1.0), 0.0])
    torch.testing.assert_close(dit_fixture.flow_sigmas(2), expected)


@pytest.fixture(scope="module")
def dit():
    return DitSampler()


def test_a_run_counts_each_call_as_the_meta_count_of_one_call(dit):
    """On meta the attention kernel has a FLOP formula; on the CPU only through the sampler's."""
    run = dit.sample([0, 1], STEPS, "euler")
    meta = dit_fixture.build().to("meta")
    with FlopCounterMode(display=False) as counter:
        dit_fixture.velocity(
            meta, torch.empty(2, 3, 32, 32, device="meta"), torch.empty(2, device="meta")
        )
    assert run.calls == STEPS
    assert run.flops == STEPS * counter.get_total_flops()


def test_the_trained_fixture_makes_images_not_noise(dit):
    """Neighbouring pixels of a sample differ by far less than in noise, where the mean
    absolute difference of two independent values is 2 / sqrt(pi) = 1.13 standard deviations."""
    images = dit.sample([0, 1], 10, "euler").images
    gap = (images[..., 1:] - images[..., :-1]).abs().mean()
    assert gap < 0.3 * images.std()


def _reference_teacache(model, threshold, coefficients, call):
    """The rule written out over whole model calls: sum the rescaled change of the first block's
    modulated input; under the threshold add the last computed residual of the block stack to
    the embedded input instead of running the blocks."""
    state = {"prev": None, "sum": 0.0, "res": None, "decisions": []}
    blocks = list(model.transformer_blocks) + list(model.single_transformer_blocks)
    originals = [b.forward for b in blocks]

    def first(hidden_states, encoder_hidden_states, temb, **kw):
        modulated = blocks[0].norm1(hidden_states, emb=temb)[0]
        compute = state["prev"] is None or state["res"] is None
        if not compute:
            state["sum"] += sum(
                c * relative_l1(modulated, state["prev"]) ** (len(coefficients) - 1 - i)
                for i, c in enumerate(coefficients)
            )
            compute = state["sum"] >= threshold
        state["prev"] = modulated
        if not compute:
            state["decisions"].append("skip")
            return encoder_hidden_states + state["res"][0], hidden_states + state["res"][1]
        state["sum"] = 0.0
        state["decisions"].append("full")
        enc, hid = encoder_hidden_states, hidden_states
        for forward in originals:
            enc, hid = forward(hid, enc, temb, **kw)
        state["res"] = (enc - encoder_hidden_states, hid - hidden_states)
        return enc, hid

    blocks[0].forward = first
    for block in blocks[1:]:
        block.forward = lambda hidden_states, encoder_hidden_states, temb, **kw: (
            encoder_hidden_states,
            hidden_states,
        )
    try:
        return call(), state["decisions"]
    finally:
        for block in blocks:
            del block.forward


@pytest.mark.parametrize("threshold", [0.0, 0.3, 1e9])
def test_teacache_follows_its_rule(dit, threshold):
    coefficients = [2.0, 0.5, 0.0]
    expected, decisions = _reference_teacache(
        dit.model, threshold, coefficients, lambda: dit.sample([0, 1], STEPS, "euler").images
    )
    tea = TeaCache(dit.model, threshold, coefficients)
    run = dit.sample([0, 1], STEPS, "euler", lambda s, _: tea)
    assert (tea.full_calls, tea.skipped_calls) == (decisions.count("full"), decisions.count("skip"))
    torch.testing.assert_close(run.images, expected, rtol=0, atol=1e-5)
    assert all("forward" not in vars(b) for b in dit.model.transformer_blocks)


def test_teacache_thresholds_span_no_skip_to_skip_all(dit):
    counts = {}
    for threshold in (0.0, 1e9):
        tea = TeaCache(dit.model, threshold, [1.0, 0.0])
        run = dit.sample([0, 1], STEPS, "euler", lambda s, _, t=tea: t)
        counts[threshold] = (tea.full_calls, tea.skipped_calls, run.flops)
    uncached = dit.sample([0, 1], STEPS, "euler")
    assert counts[0.0][:2] == (STEPS, 0)
    assert counts[1e9][:2] == (1, STEPS - 1)
    assert counts[1e9][2] < uncached.flops / 3  # skipped calls run no block
