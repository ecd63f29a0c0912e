"""The e2e suite's log oracle on hand-written log slices (the hosts' progress bars as they
print them), so that what the real-host tests compare DeepCache's counts with is itself tested."""

from __future__ import annotations

from tests.e2e.oracles import sampler_runs

TQDM = "  0%|    | 0/12 [00:00<?, ?it/s]\r 50%|##  | 6/12 [00:01]\r100%| | 12/12 [00:02]\n"
SDNEXT = "Progress ?it/s   0% 0/12 00:00 ? Base\r"
SDNEXT_DONE = "Progress 46.03it/s 100% 12/12 00:00 00:00 Base\n"


def test_each_loop_counts_once_with_its_steps():
    hires = "  0%|          | 0/8 [00:00<?, ?it/s]\r100%| | 8/8 [00:01]\n"
    assert sampler_runs(TQDM + hires) == [12, 8]


def test_the_job_bar_and_model_loads_are_not_sampling_loops():
    loads = (
        "Progress ?it/s   0% 0/5 00:00 ? Loading pipeline components...\n"
        "Loading weights:   0%|          | 0/36 [00:00<?, ?it/s]\n"
        "Total progress:   0%|          | 0/20 [00:00<?, ?it/s]\n"
    )
    assert sampler_runs(loads + SDNEXT + SDNEXT_DONE + loads) == [12]


def test_a_bar_drawn_again_at_zero_is_the_same_loop():
    assert sampler_runs(SDNEXT + SDNEXT + SDNEXT_DONE) == [12]
    assert sampler_runs(SDNEXT + SDNEXT_DONE + SDNEXT + SDNEXT_DONE) == [12, 12]
