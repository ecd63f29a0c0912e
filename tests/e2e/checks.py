"""Checks shared by the scenarios beside other UNet features (ControlNet, HyperTile, FreeU):
a clean host log per request, and image distances kept in the test report."""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np

from .payloads import Result, mean_abs_diff

# Host lines that are not about DeepCache or the feature beside it: A1111 and Forge log the first
# one per request; A1111 logs the second when it loads a checkpoint (its text encoder, through
# huggingface_hub), followed by Python's "  warnings.warn(" source line; SD.Next's DEBUG line
# of memory statistics after each generation holds the third on a machine without a GPU.
HOST_OWN_WARNINGS = (
    'Sampler Scheduler autocorrection: "Euler" -> "Euler"',
    "FutureWarning: `resume_download` is deprecated",
    "'error': 'Found no NVIDIA driver on your system.",
)


def record_distances(
    record_property: Callable[[str, object], None], image: np.ndarray, **references: np.ndarray
) -> dict[str, float]:
    """The mean distance from ``image`` to each named reference, each also kept in the JUnit
    report (artifacts/e2e.xml in CI) as ``distance_to_<name>``, rounded to 0.01."""
    distances = {name: mean_abs_diff(image, ref) for name, ref in references.items()}
    for name, distance in distances.items():
        record_property(f"distance_to_{name}", round(distance, 2))
    return distances


def assert_clean_log(result: Result) -> None:
    """No warning, error or traceback in the host's log while the request ran."""
    bad = [
        line
        for line in result.log.splitlines()
        if re.search(r"warn|error|traceback|exception", line, re.IGNORECASE)
        and not any(own in line for own in HOST_OWN_WARNINGS)
        and line.strip() != "warnings.warn("
    ]
    assert not bad, "\n".join(bad)
