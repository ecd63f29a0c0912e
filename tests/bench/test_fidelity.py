"""The trained fixture and the fidelity measures the benchmark reports."""

from __future__ import annotations

import pytest
import torch

from lib_deepcache.bench import fixture
from lib_deepcache.bench.fidelity import FixtureSampler, compare, flop_speedup
from lib_deepcache.engine.params import DeepCacheParams

SEEDS = list(range(8))
STEPS = 20


@pytest.fixture(scope="module")
def sampler():
    return FixtureSampler()


@pytest.fixture(scope="module")
def reference(sampler):
    images, _ = sampler.sample(SEEDS, STEPS, "euler")
    return images


def psnr(sampler, reference, interval, depth, schedule="uniform"):
    params = DeepCacheParams(True, interval, depth, schedule=schedule)
    images, _ = sampler.sample(SEEDS, STEPS, "euler", params)
    return compare(reference, images).psnr


def total_variation(images: torch.Tensor) -> float:
    dx = (images[..., 1:] - images[..., :-1]).abs().mean()
    dy = (images[..., 1:, :] - images[..., :-1, :]).abs().mean()
    return float(dx + dy)


def test_the_fixture_is_small_and_its_samples_look_like_images_not_noise(reference):
    assert fixture.WEIGHTS.stat().st_size <= 5 * 2**20
    noise = torch.rand_like(reference) * 2 - 1
    assert total_variation(reference) < 0.3 * total_variation(noise)
    assert float(reference.std()) > 0.1, "samples must not collapse to flat colour"


def test_fidelity_falls_as_interval_grows_and_as_depth_shrinks(sampler, reference):
    assert psnr(sampler, reference, 2, 0) > psnr(sampler, reference, 5, 0)
    assert psnr(sampler, reference, 3, 2) > psnr(sampler, reference, 3, 0)


def test_flop_speedup_of_a_schedule(sampler):
    _, stats = sampler.sample(SEEDS[:2], 12, "euler", DeepCacheParams(True, 3, 0))
    # interval 3 over 12 steps: full at 0, 3, 6, 9: 4 full / 8 cached
    assert flop_speedup(stats, 0.1) == pytest.approx(12 / (4 + 8 * 0.1))
