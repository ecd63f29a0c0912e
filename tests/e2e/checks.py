"""Checks shared by the scenarios beside other UNet features (ControlNet, HyperTile, FreeU):
a clean host log per request and a mean image distance."""

from __future__ import annotations

import re

import numpy as np

from .payloads import Result

# Host lines that are not about DeepCache or the feature beside it: A1111 and Forge log the first
# one per request; A1111 logs the second when it loads a checkpoint (its text encoder, through
# huggingface_hub), followed by Python's "  warnings.warn(" source line; SD.Next's DEBUG line
# of memory statistics after each generation holds the third on a machine without a GPU.
HOST_OWN_WARNINGS = (
    'Sampler Scheduler autocorrection: "Euler" -> "Euler"',
    "FutureWarning: `resume_download` is deprecated",
    "'error': 'Found no NVIDIA driver on your system.",
)


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two uint8 images, in levels (0-255)."""
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


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
