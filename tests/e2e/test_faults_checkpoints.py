"""A checkpoint switch between generations in each real host, SD 1.x <-> SDXL layout (issue 23):
the first generation after the switch is cached, counted for that model (``auto``: interval 3
on SD 1.x, 2 on SDXL) and gives the image of a host started on that checkpoint.

Switches: ``POST /sdapi/v1/options`` ``sd_model_checkpoint`` both ways, and ``override_settings``
for one request. Oracles: the host started on the SD 1.x checkpoint (its default, restarted
before any fault: :func:`fresh_results`) and restarted here on the SDXL one; hand-computed counts.
"""

from __future__ import annotations

import pytest

from tests.e2e.faults import (
    CHECKPOINTS,
    MODEL_FIELD,
    fresh_results,
    requests,
    select_checkpoint,
    started_on,
)
from tests.e2e.hostctl import HostServer
from tests.e2e.payloads import Result, max_abs_diff

pytestmark = pytest.mark.e2e

AUTO = "interval {} (auto), depth 0, start 0%, end 100%, uniform, min steps 8"
# uniform over 12 steps: interval 3 refreshes at 0, 3, 6, 9; interval 2 at 0, 2, ..., 10
COUNTS = {3: "4 full / 8 cached", 2: "6 full / 6 cached"}


def assert_on(host: HostServer, result: Result, xl: bool, reference: Result) -> None:
    """Ran on the model asked for, cached at its own interval, counted, the reference's image."""
    fields = result.fields()
    assert fields.get("Model") == MODEL_FIELD[host.name][int(xl)], result.infotexts[0]
    interval = 2 if xl else 3
    assert fields.get("DeepCache") == AUTO.format(interval), result.infotexts[0]
    assert fields.get("DeepCache steps") == COUNTS[interval], result.infotexts[0]
    assert result.sampler_runs == [12], result.log[-2000:]
    assert max_abs_diff(result.images[0], reference.images[0]) == 0


def test_a_checkpoint_switch_is_cached_counted_and_equals_a_host_started_on_it(
    host: HostServer,
) -> None:
    sd1, xl = CHECKPOINTS[host.name]
    sd1_reference = fresh_results(host)["auto"]  # a host started on the SD 1.x checkpoint
    auto = requests(host)["auto"]
    started_on(host, xl)
    passed = False
    try:
        xl_reference = host.txt2img(auto)
        assert_on(host, xl_reference, True, xl_reference)

        select_checkpoint(host, sd1)  # SDXL -> SD 1.x by the settings
        assert_on(host, host.txt2img(auto), False, sd1_reference)
        select_checkpoint(host, xl)  # and back
        assert_on(host, host.txt2img(auto), True, xl_reference)

        # one request on SD 1.x while SDXL stays selected, then SDXL again
        override = {**auto, "override_settings": {"sd_model_checkpoint": sd1}}
        assert_on(host, host.txt2img(override), False, sd1_reference)
        assert_on(host, host.txt2img(auto), True, xl_reference)

        select_checkpoint(host, sd1)  # the default again, for the tests after this one
        assert_on(host, host.txt2img(auto), False, sd1_reference)
        passed = True
    finally:
        if not passed:  # whatever it holds now, the next test gets a fresh start
            host.stop()
