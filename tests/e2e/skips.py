"""The end-to-end skips this suite expects, pinned: a host that loses a sampler, a tab or an
option fails the run instead of skipping quietly, and a host that gains one fails it too until
this list and docs/hosts.md ("Expected skips") say so.

Keys are test ids as pytest writes them, relative to tests/e2e; values are a piece of the skip
reason. Skips of a host left out with ``--host`` are not counted.
"""

from __future__ import annotations

import pytest

_NO_NGMS = "SD.Next has no negative guidance minimum sigma / skip early CFG options"
_NO_CONTROLNET = "sdnext: its control pipeline is not covered here yet"
_XYZ = "SD.Next's XYZ Grid script takes other args"
_UI = "SD.Next: its UI test is the Control tab check in test_bugs.py"
_XYZ_ERRORS = "SD.Next's XYZ Grid catches every axis error itself"

EXPECTED_SKIPS: dict[str, str] = {
    # SD.Next offers no PLMS sampler (GET /sdapi/v1/samplers); its PNDM has its own test
    "test_basics.py::test_sampler_is_cached_and_counts_every_executed_step[sdnext-PLMS-txt2img]": (
        "sdnext has no sampler 'PLMS'"
    ),
    "test_basics.py::test_sampler_is_cached_and_counts_every_executed_step[sdnext-PLMS-img2img]": (
        "sdnext has no sampler 'PLMS'"
    ),
    # A1111's CFG denoiser options, which Forge keeps and SD.Next's diffusers pipelines lack
    "test_bugs.py::test_ngms_alternating_batch_is_really_cached[sdnext]": _NO_NGMS,
    "test_bugs.py::test_ngms_steps_that_all_missed_are_counted_full[sdnext]": _NO_NGMS,
    "test_bugs.py::test_skip_early_cfg_switches_the_batch_once[sdnext]": _NO_NGMS,
    "test_bugs.py::test_long_negative_prompt_splits_cond_and_uncond[sdnext]": _NO_NGMS,
    # SD.Next's XYZ script takes other args; our axes are added there all the same
    "test_bugs.py::test_xyz_axes_in_api_only_mode[sdnext]": _XYZ,
    "test_bugs.py::test_xyz_axes_in_ui_mode[sdnext]": _XYZ,
    # SD.Next's ControlNet runs in its own control pipeline: tests/e2e/test_sdnext_control.py
    "test_controlnet.py::test_control_is_applied_on_cached_steps_too[sdnext]": _NO_CONTROLNET,
    "test_controlnet.py::test_weight_zero_is_deepcache_alone_and_interval_one_is_control_alone"
    "[sdnext]": _NO_CONTROLNET,
    "test_controlnet.py::test_img2img_with_control[sdnext]": _NO_CONTROLNET,
    "test_controlnet.py::test_hires_fix_with_control[sdnext]": _NO_CONTROLNET,
    "test_controlnet.py::test_batch_of_two_with_control[sdnext]": _NO_CONTROLNET,
    # SD.Next's page is another one (its accordion is checked in its Control tab, test_bugs.py)
    "test_ui.py::test_accordion_ticks_and_generates_with_deepcache_in_the_infotext[sdnext]": _UI,
    "test_ui.py::test_png_info_send_to_txt2img_restores_the_deepcache_controls[sdnext]": _UI,
    # SD.Next's XYZ Grid logs a bad axis value and makes no image: there is no request to refuse
    **{
        f"test_faults_input.py::test_bad_values_on_the_xyz_plots_deepcache_axes_are_refused"
        f"[sdnext-{field}]": _XYZ_ERRORS
        for field in ("depth", "enabled", "schedule", "start")
    },
    # SD.Next's page offers these routes, but not to a test driving them offline (why: there)
    "test_faults_input.py::test_a_malformed_pasted_infotext_pastes_the_defaults_and_says_so_once"
    "[sdnext]": "SD.Next's paste events answer 500 to a direct gradio call",
    "test_install.py::test_install_update_and_uninstall_from_a_git_url[sdnext]": (
        "SD.Next's extension list never shows an extension installed from a URL offline"
    ),
}

NOT_SELECTED = "not selected (--host"


def item_key(item: pytest.Item) -> str:
    """The item's id relative to tests/e2e (``test_x.py::name[params]``)."""
    return item.nodeid.rsplit("/", 1)[-1]


def skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr)


def verdict(item: pytest.Item, report: pytest.TestReport) -> str | None:
    """Why this report breaks the pinned list (None: it does not)."""
    expected = EXPECTED_SKIPS.get(item_key(item))
    if report.skipped:
        reason = skip_reason(report)
        if NOT_SELECTED in reason:
            return None
        if expected is None:
            return (
                f"unexpected skip ({reason}): a host lost what this test needs, or the skip "
                "is new; if it is meant, add it to tests/e2e/skips.py and docs/hosts.md"
            )
        if expected not in reason:
            return f"skipped for another reason than the pinned one ({expected!r}): {reason}"
        return None
    if expected is not None and report.when == "call" and report.passed:
        return (
            f"pinned as skipped ({expected!r}) but it ran and passed: remove it from "
            "tests/e2e/skips.py and from docs/hosts.md"
        )
    return None


def pin(item: pytest.Item, report: pytest.TestReport) -> None:
    """Turn a report that breaks the pinned list into a failure of that test."""
    if item.get_closest_marker("e2e") is None:
        return
    message = verdict(item, report)
    if message is not None:
        report.outcome = "failed"
        report.longrepr = message
